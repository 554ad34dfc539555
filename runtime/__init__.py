"""kgen.runtime: what generated modules import, next to jax, flax and numpy.

Light on purpose: it never imports Keras or TensorFlow.
"""

from kgen.runtime.layers import BatchNorm, PReLU, SeparableConv
from kgen.runtime.ops import (
    batch_reshape,
    crop,
    hard_shrink,
    hard_sigmoid_tf_keras,
    leaky_relu,
    relu,
    soft_shrink,
    softmax,
    sparsemax,
    tanh_shrink,
    zero_pad,
)
from kgen.runtime.variables import check_variables, load_variables, save_variables

__all__ = [
    "BatchNorm",
    "PReLU",
    "SeparableConv",
    "batch_reshape",
    "check_variables",
    "hard_shrink",
    "soft_shrink",
    "sparsemax",
    "tanh_shrink",
    "crop",
    "hard_sigmoid_tf_keras",
    "leaky_relu",
    "load_variables",
    "relu",
    "save_variables",
    "softmax",
    "zero_pad",
]
