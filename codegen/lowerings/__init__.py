"""Built-in lowerings, one module per Keras layer family; importing registers them."""

from kgen.codegen.lowerings import (  # noqa: F401
    activations,
    applications,
    convolutional,
    core,
    merging,
    normalization,
    ops,
    pooling,
    recurrent,
    attention,
    reshaping,
    resampling,
    sequence,
    tf_ops,
)
