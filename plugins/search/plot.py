"""The search's trade-off as a PNG: every candidate's proxy accuracy against its cost."""

from __future__ import annotations

import importlib.util
from typing import Any

from fxcomp import RecipeError


def check_plotting() -> None:
    """Raise :class:`fxcomp.RecipeError` when matplotlib, which the plot needs, is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise RecipeError("search.plot: plotting needs matplotlib: pip install 'fxcomp[plot]' (or drop the plot option)")


def plot_search(plan: dict[str, Any], path: str) -> None:
    """Scatter the feasible candidates (by generation), the Pareto front, the uniform and the chosen one."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    feasible = [c for c in plan["candidates"] if c["feasible"]]
    figure, axes = plt.subplots(figsize=(6, 4))
    points = axes.scatter([c["cost"] for c in feasible], [100 * c["accuracy"] for c in feasible],
                          c=[c["generation"] for c in feasible], cmap="viridis", s=18, label="candidates")
    figure.colorbar(points, ax=axes, label="generation")
    front = plan["pareto"]
    axes.plot([c["cost"] for c in front], [100 * c["accuracy"] for c in front], color="black", linewidth=1, label="Pareto front")
    for key, marker in (("uniform", "s"), ("chosen", "*")):
        if plan[key]["feasible"]:
            axes.scatter([plan[key]["cost"]], [100 * plan[key]["accuracy"]], marker=marker, s=120, label=key, edgecolors="black")
    axes.set_xlabel(f"{plan['metric']} (fraction of the original)")
    axes.set_ylabel("proxy accuracy %")
    axes.set_title(f"search at {plan['metric']} {plan['target']:g}: {plan['evaluated']} candidates")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
