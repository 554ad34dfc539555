"""Built-in lowerings, one module per Keras layer family; importing registers them."""

from kgen.codegen.lowerings import (  # noqa: F401
    activations,
    applications,
    augmentation,
    convolutional,
    core,
    merging,
    normalization,
    ops,
    pooling,
    preprocessing,
    recurrent,
    attention,
    reshaping,
    resampling,
    sequence,
    tf_ops,
)
