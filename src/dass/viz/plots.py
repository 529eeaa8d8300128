"""Matplotlib drawings (Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..errors import DassError  # noqa: E402
from ..runtime.files import atomic_write  # noqa: E402
from ..space.genotype import Genotype  # noqa: E402


def _check_target(path: Path) -> Path:
    """Refuse, before drawing, a target that is a folder or lies under a file."""
    path = Path(path)
    if path.is_dir():
        raise DassError(f"cannot draw into {path}: it is a folder; give a file name such as {path / 'cells.png'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DassError(f"cannot write {path}: {parent} is a file, not a folder; choose another path")
            break
    return path


def _save(fig, path: Path) -> None:
    """Write ``fig`` as a PNG atomically; any failure to write is a :class:`DassError`, never a traceback."""
    try:
        path = _check_target(path)
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    except OSError as exc:
        reason = exc.strerror or " ".join(str(exc).split())
        raise DassError(f"cannot write {path}: {reason}; choose a writable path") from None
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise DassError(f"cannot write {path}: {' '.join(str(exc).split())}; choose another path") from None
    finally:
        plt.close(fig)


def plot_alpha_history(history: Sequence[dict], ops: Sequence[str], path: Path) -> None:
    """Per cell type, the softmax weight of each op averaged over the edges, one point per epoch."""
    cells = list(history[0]["alphas"]) if history else ["normal", "reduce"]   # NB-201: "normal" only
    fig, axes = plt.subplots(1, len(cells), figsize=(5.5 * len(cells), 3.8), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, cell in zip(axes, cells):
        if history:
            weights = np.array([h["alphas"][cell] for h in history])  # epochs x edges x ops
            mean = weights.mean(axis=1)
            x = np.arange(1, len(history) + 1)
            for k, op in enumerate(ops):
                ax.plot(x, mean[:, k], label=op, lw=1.6)
            boundaries = [i + 0.5 for i in range(1, len(history)) if history[i]["phase"] != history[i - 1]["phase"]]
            for b in boundaries:
                ax.axvline(b, color="grey", ls=":", lw=1)
        ax.set_title(f"{cell} cell: mean softmax(alpha) per op")
        ax.set_xlabel("epoch (dotted: phase change)")
    axes[0].set_ylabel("weight")
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save(fig, path)


def _draw_cell(ax, edges: Sequence[tuple[str, int]], concat: Sequence[int], title: str) -> None:
    """Inputs on the left, nodes on a line, output on the right; edges as arcs labelled at their middle."""
    nodes = len(edges) // 2
    pos = {0: (0.0, 1.6), 1: (0.0, -1.6)}
    for i in range(nodes):
        pos[i + 2] = (1.6 * (i + 1), 0.0)
    out = (1.6 * (nodes + 1), 0.0)
    names = {0: "c_{k-2}", 1: "c_{k-1}"}
    # data-to-display aspect, so rotated labels follow the drawn edges
    width, height = out[0] + 1.0, 4.0
    bbox = ax.get_window_extent()
    aspect = (bbox.height / height) / (bbox.width / width)
    for k, (op, j) in enumerate(edges):
        target = k // 2 + 2
        (x0, y0), (x1, y1) = pos[j], pos[target]
        # arcs between nodes on the line bend up (even edge) or down (odd edge) to stay apart
        rad = 0.0 if j < 2 else (-0.45 if k % 2 == 0 else 0.45)
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="->", color="#555", lw=1.1, shrinkA=12, shrinkB=12,
                                    connectionstyle=f"arc3,rad={rad}"))
        dx, dy = x1 - x0, y1 - y0
        # midpoint of matplotlib's arc3 Bezier: chord midpoint + rad/2 * (dy, -dx)
        mx, my = (x0 + x1) / 2 + rad / 2 * dy, (y0 + y1) / 2 - rad / 2 * dx
        angle = 0.0
        if j < 2:  # input edges: label along the edge, rotated with it, so labels of fanning edges don't collide
            mx, my = x0 + 0.55 * dx, y0 + 0.55 * dy
            angle = float(np.degrees(np.arctan2(dy * aspect, dx)))
        ax.text(mx, my, op, fontsize=7, ha="center", va="center", color="#1f4e79", rotation=angle,
                rotation_mode="anchor", bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.9))
    for j in concat:
        ax.annotate("", xy=out, xytext=pos[j],
                    arrowprops=dict(arrowstyle="->", color="#bbb", lw=0.9, shrinkA=12, shrinkB=14, ls="--",
                                    connectionstyle="arc3,rad=0.25"))
    for node, (x, y) in pos.items():
        color = "#cde4f7" if node < 2 else "#fbe3b9"
        ax.text(x, y, names.get(node, str(node - 2)), ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round,pad=0.35", fc=color, ec="#333"))
    ax.text(*out, "c_{k}", ha="center", va="center", fontsize=9, bbox=dict(boxstyle="round,pad=0.35", fc="#d5f5d5", ec="#333"))
    ax.set_xlim(-0.5, out[0] + 0.5)
    ax.set_ylim(-2.0, 2.0)
    ax.set_title(title)
    ax.axis("off")


def draw_genotype(genotype: Genotype, path: Path) -> None:
    """Both cells as graphs: inputs (blue), intermediate nodes (orange), output (green), written to ``path``
    as a PNG; a folder or an unwritable path raises :class:`DassError`."""
    _check_target(path)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    _draw_cell(axes[0], genotype.normal, genotype.normal_concat, "normal cell")
    _draw_cell(axes[1], genotype.reduce, genotype.reduce_concat, "reduction cell")
    _save(fig, path)
