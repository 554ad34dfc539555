"""Logical axis names on the kernels of Dense, EinsumDense, Embedding and attention
layers, for tensor parallelism (``kgen emit --logical-axes``).

After lowering, each such submodule's initialisers are wrapped in
``nn.with_logical_partitioning`` with the axis names Flax's own models use:

* ``"embed"``: the model's width, the feature size of its residual stream (the most
  common last dim of the inputs of its ``Add`` and ``LayerNormalization`` layers, else
  of its Dense layers);
* ``"mlp"``: any other feature size of a Dense or EinsumDense kernel (a feed-forward
  hidden layer, a classifier's classes);
* ``"heads"``, ``"kv"``: attention heads and their channels (query, key, value and
  output projections of ``MultiHeadAttention``);
* ``"vocab"``: the rows of an embedding table.

The variables are unchanged (a weights file loads as before); ``module.init`` returns
them boxed in ``nn.Partitioned``, so that ``nn.get_partition_spec(jax.eval_shape(
module.init, ...))`` gives every kernel's logical axes, and
``nn.logical_to_mesh_sharding(specs, mesh, rules)`` the shardings for a mesh
(``kgen/examples/tensor_parallel.py``).  Linen only.
"""

from __future__ import annotations

from collections import Counter

from kgen.codegen import ir
from kgen.codegen.lower import walk

__all__ = ["annotate", "has_attention", "model_width"]

_ATTENTION = {"rt.MultiHeadAttention"}


def _ctor(lnode) -> str | None:
    mod = lnode.lowered.module if lnode.lowered is not None else None
    return mod.fn.path if mod is not None and isinstance(mod.fn, ir.Sym) else None


def has_attention(lowered) -> bool:
    """Whether the model has attention layers: the default for ``--logical-axes``."""
    return any(_ctor(lnode) in _ATTENTION for lnode in walk(lowered))


def model_width(lowered) -> int | None:
    """The feature size of the residual stream (see the module doc)."""
    residual, dense = Counter(), Counter()
    for lnode in walk(lowered):
        shapes = lnode.node.input_shapes
        if not shapes or not shapes[0]:
            continue
        last = shapes[0][-1]
        if last is None:
            continue
        if lnode.node.class_name in ("Add", "LayerNormalization"):
            residual[int(last)] += 1
        elif _ctor(lnode) == "nn.Dense":
            dense[int(last)] += 1
    counts = residual or dense
    return counts.most_common(1)[0][0] if counts else None


def _init(initializer: str, axes: tuple) -> ir.Call:
    init = ir.Call(ir.Sym(f"nn.initializers.{initializer}"))
    return ir.Call(ir.Sym("nn.with_logical_partitioning"), (init, axes))


def annotate(lowered) -> None:
    """Give the kernels of ``lowered`` logical axis names (in place)."""
    width = model_width(lowered)

    def name(size) -> str:
        return "embed" if size == width else "mlp"

    for lnode in walk(lowered):
        ctor, low = _ctor(lnode), lnode.lowered
        if ctor is None:
            continue
        mod = low.module
        extra = {}
        if ctor == "nn.Dense":
            axes = (name(lnode.node.input_shapes[0][-1]), name(mod.args[0]))
            extra = {"kernel_init": _init("lecun_normal", axes)}
            if mod.kwargs.get("use_bias", True):
                extra["bias_init"] = _init("zeros_init", axes[1:])
        elif ctor == "nn.Embed":
            extra = {"embedding_init": _embed_init()}
        elif ctor == "rt.EinsumDense":
            _, kernel_shape, *rest = mod.args
            bias_shape = rest[0] if rest else mod.kwargs.get("bias_shape")
            extra = {"kernel_axes": tuple(name(d) for d in kernel_shape)}
            if bias_shape is not None:
                extra["bias_axes"] = tuple(name(d) for d in bias_shape)
        elif ctor in _ATTENTION:
            extra = {"logical_axes": True}
        if extra:
            low.module = ir.Module(mod.fn, mod.args, {**mod.kwargs, **extra})


def _embed_init() -> ir.Call:
    # nn.Embed's default: variance_scaling(1.0, "fan_in", "normal", out_axis=0)
    init = ir.Call(
        ir.Sym("nn.initializers.variance_scaling"), (1.0, "fan_in", "normal"), {"out_axis": 0}
    )
    return ir.Call(ir.Sym("nn.with_logical_partitioning"), (init, ("vocab", "embed")))
