"""``kgen graph``: a picture of the traced graph, as ``keras.utils.plot_model`` draws one.

Each node is one call, labelled with its Keras name and class; edges follow the data.
Nodes are placed in rows by dependency depth (inputs on top) and drawn with matplotlib,
so no system package (Graphviz) is needed.  A nested model, and a custom layer kgen
traced into, is a rounded box with its own colour: its inside becomes a class of its own
in the generated file.  The format follows the file name: ``.svg``, ``.png`` or ``.pdf``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FORMATS", "draw_graph"]

FORMATS = (".svg", ".png", ".pdf")

_COLOURS = {
    "input": "#cfe8cf",
    "layer": "#dbe6f5",
    "op": "#f3ead2",
    "model": "#f2d3d3",  # nested model: a class of its own
    "traced": "#e6d6f0",  # traced custom layer: a class of its own
    "variable": "#eeeeee",
}


def _label(data: dict, limit: int = 28) -> str:
    name = "".join(ch if ch.isprintable() else "?" for ch in str(data["name"]))
    if len(name) > limit:
        name = name[: limit - 1] + "…"
    return f"{name}\n{data['class_name']}"


def draw_graph(graph, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Draw a traced graph (:func:`kgen.tracer.trace`) to ``path``; returns the path.

    The file is written under a temporary name and renamed into place.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    from kgen.tracer.graph import topological_nodes

    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(
            f"{path.name}: the picture's format comes from its suffix, one of " + ", ".join(FORMATS)
        )
    order = topological_nodes(graph)
    depth: dict[str, int] = {}
    for node in order:
        depth[node] = 1 + max((depth[p] for p in graph.predecessors(node)), default=-1)
    rows: dict[int, list[str]] = {}
    for node in order:  # each row in Keras's own order
        rows.setdefault(depth[node], []).append(node)
    positions = {}
    for row, members in rows.items():
        for i, node in enumerate(members):
            positions[node] = (i - (len(members) - 1) / 2, -float(row))
    width = max((len(m) for m in rows.values()), default=1)
    figure, axes = plt.subplots(figsize=(max(4.0, 2.2 * width), max(3.0, 0.75 * len(rows))))
    for u, v in graph.edges():
        (x0, y0), (x1, y1) = positions[u], positions[v]
        axes.annotate(
            "",
            xy=(x1, y1 + 0.22),
            xytext=(x0, y0 - 0.22),
            arrowprops={"arrowstyle": "-|>", "color": "#555555", "lw": 0.8},
        )
    for node in order:
        data = graph.nodes[node]
        x, y = positions[node]
        boxed = data["kind"] in ("model", "traced")
        axes.text(
            x,
            y,
            _label(data),
            ha="center",
            va="center",
            fontsize=7,
            family="monospace",
            bbox={
                "boxstyle": "round,pad=0.4" if boxed else "square,pad=0.3",
                "facecolor": _COLOURS.get(data["kind"], "#ffffff"),
                "edgecolor": "#7a3f9d" if boxed else "#444444",
                "linewidth": 1.6 if boxed else 0.6,
            },
        )
    axes.set_xlim(-width / 2, width / 2)
    axes.set_ylim(-len(rows) + 0.4, 0.6)
    axes.axis("off")
    if title:
        axes.set_title("".join(ch if ch.isprintable() else "?" for ch in title), fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        with matplotlib.rc_context({"svg.fonttype": "none"}):  # SVG text stays searchable
            figure.savefig(tmp, format=path.suffix[1:].lower(), bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(figure)
        tmp.unlink(missing_ok=True)
    return path
