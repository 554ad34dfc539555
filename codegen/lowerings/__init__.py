"""Built-in lowerings, one module per Keras layer family; importing registers them."""

from kgen.codegen.lowerings import (  # noqa: F401
    activations,
    applications,
    attention,
    augmentation,
    convolutional,
    core,
    merging,
    normalization,
    ops,
    pooling,
    preprocessing,
    recurrent,
    resampling,
    reshaping,
    sequence,
    tf_ops,
)
