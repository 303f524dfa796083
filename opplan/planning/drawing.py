"""The transition graph as a figure (paper Figure 1; with a chosen path, Figures 4/5).

Kept apart from :mod:`opplan.planning.graph` (which it imports, never the reverse), and
matplotlib is imported only when drawing. Always the non-interactive Agg backend; written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from opplan.fileio import atomic_savefig
from opplan.planning.graph import S0, Node, State, TransitionGraph

RADIUS = 0.24  # node radius in grid units
BLOCK_GAP = 1.4  # vertical gap between the sampling strategies' grids
SAMPLING_NAMES = {"cs": "consecutive (cs)", "us": "uniform (us)"}


def _layout(graph: TransitionGraph) -> dict[Node, tuple[float, float]]:
    """Grid positions: x = clip-length index + 1, y = -(rate index) per grid; S0 on the left."""
    rows = len(graph.lrs)
    pos: dict[Node, tuple[float, float]] = {}
    for b, sampling in enumerate(graph.sampling):
        top = -b * (rows - 1 + BLOCK_GAP)
        for i, length in enumerate(graph.clip_lengths):
            for j, lr in enumerate(graph.lrs):
                pos[State(sampling, length, lr)] = (i + 1.0, top - j)
    ys = [y for _, y in pos.values()]
    # between two grids; above-left of a single one, so its arrows clear the top row
    pos[S0] = (-0.6, (max(ys) + min(ys)) / 2 if len(graph.sampling) > 1 else 0.7)
    return pos


def _endpoints(p: tuple[float, float], q: tuple[float, float]) -> tuple[tuple[float, float], tuple[float, float]]:
    """The segment p -> q shortened by the node radius at both ends."""
    dx, dy = q[0] - p[0], q[1] - p[1]
    norm = max((dx * dx + dy * dy) ** 0.5, 1e-9)
    ux, uy = dx / norm * RADIUS, dy / norm * RADIUS
    return (p[0] + ux, p[1] + uy), (q[0] - ux, q[1] - uy)


def _chosen_edges(chosen: Sequence[Node | str] | None) -> tuple[set[str], set[tuple[str, str]]]:
    if not chosen:
        return set(), set()
    names = [c if isinstance(c, str) else c.name for c in chosen]
    if names[0] != "S0":
        names = ["S0", *names]
    return set(names), set(zip(names, names[1:]))


def _legend_handles(on_path: set[str], labels: Mapping[tuple[str, str], str], pruned: bool) -> list:
    """A legend entry for every colour and mark the figure uses."""
    from matplotlib.lines import Line2D

    def ring(label: str, **style) -> Line2D:
        return Line2D([], [], linestyle="none", marker="o", markersize=10, label=label,
                      **{"markerfacecolor": "#dbe9f6", "markeredgecolor": "0.2", **style})

    handles = [Line2D([], [], color="0.35", linewidth=1.0,
                      label="edge (trained: kept epoch t* / score V)" if labels else "edge (a transition)"),
               ring("final state (thick rim)", markeredgewidth=2.5)]
    if on_path:
        handles[1:1] = [Line2D([], [], color="tab:red", linewidth=2.2, label="chosen path"),
                        ring("state on the chosen path", markerfacecolor="#fde0dc", markeredgecolor="tab:red")]
    if pruned:
        handles.append(ring("pruned from the graph", markerfacecolor="none", markeredgecolor="0.7"))
    return handles


def draw_graph(graph: TransitionGraph, path: str | Path, *, chosen: Sequence[Node | str] | None = None,
               labels: Mapping[tuple[str, str], str] | None = None) -> Path:
    """Draw ``graph`` as a PNG like the paper's Figure 1 (and Figures 4/5 with ``chosen``/``labels``).

    One grid per sampling strategy (x: clip length, y: learning rate, highest on top),
    ``S0`` on the left, an arrow per edge; final states drawn with a thick rim, grid
    positions pruned from the graph as dotted rings. ``chosen`` (a path, ``S0`` first or
    not, nodes or names) is drawn in red; ``labels`` maps ``(src_name, dst_name)`` to a
    text written on that edge (epochs, scores). A legend names every colour and mark.
    """
    path = Path(path)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, FancyArrowPatch

    pos = _layout(graph)
    on_path, path_edges = _chosen_edges(chosen)
    labels = labels or {}
    kept = set(graph.nodes)
    finals = set(graph.final_states)
    rows = len(graph.lrs)
    height = len(graph.sampling) * (rows - 1 + BLOCK_GAP) + 0.6
    fig = Figure(figsize=(1.6 * (len(graph.clip_lengths) + 2.2), 1.3 * height + 0.6))
    ax = fig.add_subplot()

    for (a, b) in graph.edges:
        key = (a.name, b.name)
        red = key in path_edges
        (ia, ja), (ib, jb) = ((0, 0) if a == S0 else graph.index(a)), graph.index(b)
        skips = a != S0 and max(abs(ib - ia), abs(jb - ja)) > 1 and (ia == ib or ja == jb)
        rad = 0.35 if skips else 0.0
        if a == S0:  # bow over the grid's top row, more for the longer start clips
            rad = -(0.15 + 0.12 * ib)
        p, q = _endpoints(pos[a], pos[b])
        ax.add_patch(FancyArrowPatch(p, q, arrowstyle="-|>", mutation_scale=11, shrinkA=0, shrinkB=0,
                                     connectionstyle=f"arc3,rad={rad}", color="tab:red" if red else "0.35",
                                     linewidth=2.2 if red else 1.0, zorder=3 if red else 2))
        if key in labels:
            # the midpoint of matplotlib's arc3 Bezier curve
            mx = (p[0] + q[0]) / 2 + rad * (q[1] - p[1]) / 2
            my = (p[1] + q[1]) / 2 - rad * (q[0] - p[0]) / 2
            ax.text(mx, my, labels[key], fontsize=6.5, ha="center", va="center", zorder=5,
                    color="tab:red" if red else "0.1",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})

    for node, (x, y) in pos.items():
        red = node.name in on_path
        if node not in kept:
            ax.add_patch(Circle((x, y), RADIUS, fill=False, linestyle=":", edgecolor="0.7", zorder=1))
            continue
        ax.add_patch(Circle((x, y), RADIUS, facecolor="#fde0dc" if red else "#dbe9f6", zorder=4,
                            edgecolor="tab:red" if red else "0.2", linewidth=3.0 if node in finals else 1.0))
        ax.text(x, y, "S0" if node == S0 else f"{node.clip_length}\n{node.lr:g}", ha="center", va="center",
                fontsize=7, zorder=6)

    for b, sampling in enumerate(graph.sampling):
        top = -b * (rows - 1 + BLOCK_GAP)
        ax.text(len(graph.clip_lengths) + 0.45, top + 0.5, SAMPLING_NAMES.get(sampling, sampling), fontsize=8,
                fontweight="bold", va="center")
        for j, lr in enumerate(graph.lrs):
            ax.text(len(graph.clip_lengths) + 0.45, top - j, f"lr {lr:g}", fontsize=7, va="center", color="0.3")
    ax.set_xticks(range(1, len(graph.clip_lengths) + 1), [str(x) for x in graph.clip_lengths])
    ax.set_xlabel("clip length (frames)")
    ax.set_yticks([])
    ax.set_xlim(-1.0, len(graph.clip_lengths) + 1.5)
    ax.set_ylim(min(y for _, y in pos.values()) - 0.6, max(y for _, y in pos.values()) + 0.6)
    ax.set_aspect("equal")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"{graph.kind} transition graph ({len(graph.edges)} edges)", fontsize=10)
    ax.legend(handles=_legend_handles(on_path, labels, any(node not in kept for node in pos)), loc="lower left",
              fontsize=7, frameon=False)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=130)
    return path
