"""Figures of L-RED: weight annealing (Alg. 1), the detection statistic with its Gamma null (Sec. 3.2), estimated
patterns (App. A.6 Fig. 3) and collateral damage vs weights (App. A.5 Fig. 2).

Pure drawing: inputs are L-RED results and arrays, outputs are matplotlib or plotly figures. Patterns are shown as
the paper does, with a 127/255 offset so that negative perturbations are visible; since imperceptible patterns are a
few /255 in size, `gain` (default: the largest |v| maps to 0.5) magnifies them; `gain=1` is the paper's exact view.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import plotly.graph_objects as go
import torch
from matplotlib.figure import Figure
from plotly.subplots import make_subplots
from scipy import stats

if TYPE_CHECKING:  # types only: viz draws results and never runs a defence
    from workbench.defenses.lred import DetectionResult, EstimationResult

OFFSET = 127 / 255


def pattern_view(v: torch.Tensor, gain: float | None = None) -> tuple[np.ndarray, float]:
    """(H, W, 3) image 127/255 + gain * v clipped to [0, 1], and the gain used (None: max |v| -> 0.5)."""
    v = v.detach().cpu().float()
    if gain is None:
        peak = float(v.abs().max())
        gain = 0.5 / peak if peak > 0 else 1.0
    img = (OFFSET + gain * v).clamp(0, 1).permute(1, 2, 0).numpy()
    return (img.repeat(3, axis=2) if img.shape[2] == 1 else img), gain


def _names(class_names: Sequence[str] | None, k: int) -> list[str]:
    return list(class_names) if class_names is not None else [str(c) for c in range(k)]


def problem_labels(estimation: EstimationResult, names: Sequence[str]) -> tuple[list[str], bool]:
    """A label per estimation problem ("t" for one problem per putative target, "s->t" for RED-P's pairs) and
    whether the problems are one per target."""
    per_target = len(estimation.targets) == estimation.sources.shape[1]
    sources = estimation.sources.float().argmax(1)
    return [names[int(t)] if per_target else f"{names[int(s)]}->{names[int(t)]}"
            for t, s in zip(estimation.targets, sources, strict=True)], per_target


def annealing_state(estimation: EstimationResult, problem: int, iteration: int) -> dict[str, object]:
    """What the annealing views show for one problem after `iteration` steps (1-based; clipped to its run)."""
    last = max(1, int(estimation.iterations[problem]))
    iteration = min(max(1, iteration), last)
    row = iteration - 1
    return {"iteration": iteration, "last": last, "weights": estimation.trace_weights[row, problem].numpy(),
            "q": estimation.trace_q[:last, problem].numpy(),
            "temperature": estimation.trace_temperature[:last, problem].numpy(),
            "norm": float(estimation.trace_norm[row, problem]), "pattern": estimation.pattern_at(problem, iteration),
            "target": int(estimation.targets[problem]), "sources": estimation.sources[problem].numpy()}


def annealing_figure(estimation: EstimationResult, problem: int, iteration: int | None = None,
                     class_names: Sequence[str] | None = None, pi: float = 0.9) -> Figure:
    """One putative target's annealing at one iteration: the weights w_s over source classes, Q_t and T over the
    iterations so far, and the pattern v (latest snapshot)."""
    state = annealing_state(estimation, problem, iteration or int(estimation.iterations[problem]))
    names = _names(class_names, len(state["weights"]))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), layout="constrained", width_ratios=[1.3, 1.3, 0.8])
    colours = ["tab:blue" if s else "lightgrey" for s in state["sources"]]
    axes[0].bar(range(len(names)), np.nan_to_num(state["weights"]), color=colours)
    axes[0].set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    axes[0].set_ylim(0, 1)
    axes[0].set_ylabel("weight w_s")
    axes[0].set_xlabel("source class s")
    axes[0].set_title(f"weights at iteration {state['iteration']} (target {names[state['target']]})", fontsize=9)
    steps = np.arange(1, state["last"] + 1)
    axes[1].plot(steps, state["q"], label="Q_t (Eq. 3)")
    axes[1].plot(steps, state["temperature"], label="T = -log Q_t (Eq. 7)")
    axes[1].axhline(pi, color="grey", linestyle="--", linewidth=0.8, label=f"pi = {pi}")
    axes[1].axvline(state["iteration"], color="black", linewidth=0.8)
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("Q_t, T (unitless)")
    axes[1].legend(fontsize=7)
    image, gain = pattern_view(state["pattern"])
    axes[2].imshow(image, interpolation="nearest")
    axes[2].set_title(f"v (127/255 + {gain:.0f} v), ||v||_2 = {state['norm']:.3f}", fontsize=8)
    axes[2].set_xticks([])
    axes[2].set_yticks([])
    return fig


def annealing_plotly(estimation: EstimationResult, problem: int, iteration: int,
                     class_names: Sequence[str] | None = None, pi: float = 0.9) -> go.Figure:
    """Interactive version of `annealing_figure` (hover gives exact weights, Q_t and T)."""
    state = annealing_state(estimation, problem, iteration)
    names = _names(class_names, len(state["weights"]))
    image, gain = pattern_view(state["pattern"])
    fig = make_subplots(rows=1, cols=3, column_widths=[0.4, 0.4, 0.2],
                        subplot_titles=[f"w_s at iteration {state['iteration']}", "Q_t and T",
                                        f"v x {gain:.0f} + 127/255, ||v|| = {state['norm']:.3f}"])
    fig.add_trace(go.Bar(x=names, y=np.nan_to_num(state["weights"]), name="w_s",
                         marker_color=["#1f77b4" if s else "lightgrey" for s in state["sources"]]), row=1, col=1)
    steps = np.arange(1, state["last"] + 1)
    fig.add_trace(go.Scatter(x=steps, y=state["q"], name="Q_t"), row=1, col=2)
    fig.add_trace(go.Scatter(x=steps, y=state["temperature"], name="T = -log Q_t"), row=1, col=2)
    fig.add_hline(y=pi, line_dash="dash", line_color="grey", row=1, col=2)
    fig.add_vline(x=state["iteration"], line_color="black", row=1, col=2)
    fig.add_trace(go.Image(z=(image * 255).astype(np.uint8)), row=1, col=3)
    fig.update_yaxes(range=[0, 1], title_text="weight", row=1, col=1)
    fig.update_xaxes(title_text="source class", row=1, col=1)
    fig.update_xaxes(title_text="iteration", row=1, col=2)
    fig.update_xaxes(showticklabels=False, row=1, col=3)
    fig.update_yaxes(showticklabels=False, row=1, col=3)
    fig.update_layout(height=330, width=1000, title=f"L-RED annealing for putative target {names[state['target']]}")
    return fig


def detection_figure(result: DetectionResult, class_names: Sequence[str] | None = None,
                     true_target: int | None = None, true_sources: Sequence[int] = ()) -> Figure:
    """Sec. 3.2 for one classifier: r_t per putative target with the fitted Gamma null and the p-value, the
    estimated pattern of every putative target, and RED-A's source weights for the inferred target."""
    estimation = result.estimation
    k = estimation.sources.shape[1]
    names = _names(class_names, k)
    r = result.statistics.numpy()
    labels, per_target = problem_labels(estimation, names)
    columns = k if per_target else 0
    fig = plt.figure(figsize=(max(10, 1.1 * columns), 5.6), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.3, 1])
    ax_r, ax_null, ax_w = top.subplots(1, 3)
    best = int(np.argmax(r))
    ax_r.bar(range(len(r)), r, color=["tab:red" if i == best else "tab:blue" for i in range(len(r))])
    ax_r.set_xticks(range(len(r)), labels if len(r) <= 20 else [""] * len(r), rotation=45, ha="right", fontsize=7)
    ax_r.set_ylabel("r = 1 / ||v||_2 (1 / pixel units)")
    ax_r.set_xlabel("putative target" if per_target else "class pair (s -> t)")
    ax_r.set_title(f"{result.method}: p = {result.p_value:.3g} ({'attack' if result.detected else 'no attack'} "
                   f"at theta {result.config.theta})", fontsize=9)
    shape, loc, scale = result.gamma
    grid = np.linspace(0, max(r.max() * 1.15, 1e-9), 300)
    ax_null.plot(grid, stats.gamma.pdf(grid, shape, loc=loc, scale=scale), color="black", label="Gamma null G")
    ax_null.plot(np.delete(r, best), np.zeros(len(r) - 1), "|", color="tab:blue", markersize=14, label="r (fit)")
    ax_null.plot([r[best]], [0], "|", color="tab:red", markersize=20, label="r_max")
    ax_null.set_xlabel("r (1 / pixel units)")
    ax_null.set_ylabel("density")
    ax_null.legend(fontsize=7)
    ax_null.set_title(f"null fitted without r_max: shape {shape:.2f}, scale {scale:.3g}", fontsize=9)
    ax_w.bar(range(k), result.source_weights.numpy(), color="tab:blue")
    truth = f"; true target {names[true_target]}, sources {[names[s] for s in true_sources]}" if (
        true_target is not None) else ""
    ax_w.set_title(f"final w for inferred target {names[result.inferred_target]}{truth}", fontsize=8)
    ax_w.set_xticks(range(k), names, rotation=45, ha="right", fontsize=7)
    ax_w.set_ylim(0, 1)
    ax_w.set_xlabel("source class s")
    ax_w.set_ylabel("weight w_s")
    if per_target:
        axes = bottom.subplots(1, k)
        for t, ax in enumerate(np.atleast_1d(axes)):
            image, gain = pattern_view(estimation.patterns[t])
            ax.imshow(image, interpolation="nearest")
            ax.set_title(f"t = {names[t]}\n||v|| {estimation.norms[t]:.2f}, x{gain:.0f}", fontsize=7,
                         color="tab:red" if t == result.inferred_target else "black")
            ax.set_xticks([])
            ax.set_yticks([])
        bottom.suptitle("estimated pattern per putative target (127/255 + gain x v)", fontsize=9)
    return fig


def detection_plotly(result: DetectionResult, class_names: Sequence[str] | None = None) -> go.Figure:
    """Interactive r_t bars with the fitted Gamma null (hover: exact statistics and ||v||)."""
    estimation = result.estimation
    names = _names(class_names, estimation.sources.shape[1])
    r = result.statistics.numpy()
    labels, per_target = problem_labels(estimation, names)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["r = 1 / ||v||_2", "Gamma null (fitted without r_max)"])
    fig.add_trace(go.Bar(x=labels, y=r, customdata=estimation.norms.numpy(), name="r",
                         hovertemplate="%{x}: r %{y:.3f}, ||v|| %{customdata:.4f}<extra></extra>"), row=1, col=1)
    shape, loc, scale = result.gamma
    grid = np.linspace(0, max(r.max() * 1.15, 1e-9), 300)
    fig.add_trace(go.Scatter(x=grid, y=stats.gamma.pdf(grid, shape, loc=loc, scale=scale), name="G"), row=1, col=2)
    fig.add_trace(go.Scatter(x=r, y=np.zeros_like(r), mode="markers", name="r", text=labels,
                             marker={"symbol": "line-ns-open", "size": 16}), row=1, col=2)
    fig.update_xaxes(title_text="putative target" if per_target else "class pair", row=1, col=1)
    fig.update_xaxes(title_text="r (1 / pixel units)", row=1, col=2)
    fig.update_layout(height=340, width=950, title=f"{result.method}: p = {result.p_value:.3g}, inferred target "
                                                   f"{names[result.inferred_target]}")
    return fig


def collateral_damage_figure(misclassification: np.ndarray, weights: np.ndarray, target: int,
                             class_names: Sequence[str] | None = None,
                             clean_misclassification: np.ndarray | None = None) -> Figure:
    """App. A.5 Fig. 2: (a) the fraction of each non-target class's triggered test images classified to the
    target (collateral damage), beside the same fraction without the pattern (Def. A.1's baseline) when given,
    (b) RED-A's final weights for the true target, both averaged over classifiers."""
    names = _names(class_names, len(weights))
    others = [c for c in range(len(names)) if c != target]
    positions = np.arange(len(others))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), layout="constrained")
    if clean_misclassification is None:
        axes[0].bar(positions, np.asarray(misclassification)[others])
    else:
        axes[0].bar(positions - 0.2, np.asarray(misclassification)[others], width=0.4, label="with the pattern")
        axes[0].bar(positions + 0.2, np.asarray(clean_misclassification)[others], width=0.4, color="0.6",
                    label="clean")
        axes[0].legend(fontsize=7)
    axes[1].bar(positions, np.asarray(weights)[others])
    for ax, label in ((axes[0], "fraction classified to the target"), (axes[1], "RED-A weight w_s")):
        ax.set_xticks(positions, [names[c] for c in others], rotation=45, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel(label)
        ax.set_xlabel("class s (non-target)")
    axes[0].set_title("(a) collateral damage", fontsize=9)
    axes[1].set_title(f"(b) weights at the end of estimation for target {names[target]}", fontsize=9)
    return fig
