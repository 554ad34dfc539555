"""kgen.runtime: what generated modules import, next to jax, flax and numpy.

Light on purpose: it never imports Keras or TensorFlow.
"""

from kgen.runtime import nnx
from kgen.runtime.applications import LayerScale
from kgen.runtime.attention import AdditiveAttention, Attention, MultiHeadAttention
from kgen.runtime.categorical import discretize, encode_categorical
from kgen.runtime.conv import Conv, DepthwiseConv, pack
from kgen.runtime.einsum import EinsumDense
from kgen.runtime.image import auto_contrast
from kgen.runtime.layers import BatchNorm, PReLU, ReversibleEmbedding, SeparableConv
from kgen.runtime.local import LocallyConnected
from kgen.runtime.memory import keep_memory
from kgen.runtime.noise import AlphaDropout, GaussianDropout, GaussianNoise
from kgen.runtime.normalization import (
    GroupNorm,
    LayerNorm,
    Normalization,
    l2_normalize,
    normalize,
)
from kgen.runtime.ops import (
    batch_reshape,
    crop,
    hard_shrink,
    hard_sigmoid_tf_keras,
    leaky_relu,
    log_softmax,
    masked_softmax,
    relu,
    soft_shrink,
    softmax,
    sparsemax,
    tanh_shrink,
    zero_pad,
)
from kgen.runtime.pooling import adaptive_pool, avg_pool, max_pool
from kgen.runtime.precision import cast_floating, mixed
from kgen.runtime.preprocessing import decode_predictions, preprocess_input
from kgen.runtime.recurrent import GRU, LSTM, Bidirectional, SimpleRNN
from kgen.runtime.resampling import center_crop, resize, upsample
from kgen.runtime.variables import check_variables, init, load_variables, save_variables

__all__ = [
    "GRU",
    "LSTM",
    "AdditiveAttention",
    "AlphaDropout",
    "Attention",
    "BatchNorm",
    "Bidirectional",
    "Conv",
    "DepthwiseConv",
    "EinsumDense",
    "GaussianDropout",
    "GaussianNoise",
    "GroupNorm",
    "LayerNorm",
    "LayerScale",
    "LocallyConnected",
    "MultiHeadAttention",
    "Normalization",
    "PReLU",
    "ReversibleEmbedding",
    "SeparableConv",
    "SimpleRNN",
    "adaptive_pool",
    "auto_contrast",
    "avg_pool",
    "batch_reshape",
    "cast_floating",
    "center_crop",
    "check_variables",
    "crop",
    "decode_predictions",
    "discretize",
    "encode_categorical",
    "hard_shrink",
    "hard_sigmoid_tf_keras",
    "init",
    "keep_memory",
    "l2_normalize",
    "leaky_relu",
    "load_variables",
    "log_softmax",
    "masked_softmax",
    "max_pool",
    "mixed",
    "nnx",
    "normalize",
    "pack",
    "preprocess_input",
    "relu",
    "resize",
    "save_variables",
    "soft_shrink",
    "softmax",
    "sparsemax",
    "tanh_shrink",
    "upsample",
    "zero_pad",
]
