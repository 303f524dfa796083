"""The curve-and-fit plot of one transition (the paper's Figure 2), an MLflow artifact."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from opplan.fileio import atomic_savefig
from opplan.planning.fitting import evaluate


class CurveLike(Protocol):
    curve: Sequence[float]
    fit_params: Sequence[float]
    t_star: int | None


def plot_transition(out: CurveLike, function: str, path: Path, *, title: str = "") -> None:
    """The observed planning signal per epoch (with ±1 SE bars when ``out`` has ``curve_se``),
    the fitted curve and the kept epoch ``t*``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    epochs = np.arange(len(out.curve))
    se = getattr(out, "curve_se", None)
    if se is not None and len(se) == len(out.curve):
        ax.errorbar(epochs, out.curve, yerr=np.nan_to_num(np.asarray(se, dtype=float)), fmt="o", ms=4, capsize=2,
                    label="validation (observed ± 1 SE)")
    else:
        ax.plot(epochs, out.curve, "o", ms=4, label="validation (observed)")
    if out.fit_params:
        grid = np.linspace(0, max(len(out.curve) - 1, 1), 200)
        ax.plot(grid, evaluate(function, out.fit_params, grid), "-", label=f"{function} fit")
    if out.t_star is not None:
        ax.axvline(out.t_star, color="red", ls="--", lw=1, label=f"knee t*={out.t_star}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("planning signal (plan.metric)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
