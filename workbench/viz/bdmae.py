"""Figures of BDMAE's internals: trigger score maps ([BDMAE] Fig. 3), refinement steps (Fig. 4) and the ablation
curves of Fig. 5.

Pure drawing: inputs are images and a `BDMAEResult` (or measured tables), outputs are matplotlib or plotly figures.
Score maps are shown clipped to [0, 1] as in the paper ("all the scores are clipped to a range of [0, 1], yellow
for high").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from matplotlib.figure import Figure
from plotly.subplots import make_subplots

if TYPE_CHECKING:  # a type only: viz draws results and never runs a defence
    from workbench.defenses.bdmae import BDMAEResult


def _grid(values: torch.Tensor) -> np.ndarray:
    side = round(values.numel() ** 0.5)
    return values.detach().cpu().float().view(side, side).numpy()


def _image(x: torch.Tensor) -> np.ndarray:
    img = x.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return img.repeat(3, axis=2) if img.shape[2] == 1 else img


def score_panels(x: torch.Tensor, result: BDMAEResult, index: int) -> list[tuple[str, np.ndarray, str]]:
    """The panels of Fig. 3 for image `index`: (title, array, kind) with kind "image" or "score"."""
    r, i = result, index
    panels = [("test image", _image(x[i]), "image"),
              ("S_i initial", _grid(r.score_image_initial[i]), "score"),
              ("S_l initial", _grid(r.score_label_initial[i]), "score"),
              ("S_i refined", _grid(r.score_image[i]), "score"),
              ("S_l refined", _grid(r.score_label[i]), "score"),
              ("S combined", _grid(r.score[i]), "score"),
              ("restored tokens (lowest threshold)", _grid(r.restoration_masks[i, -1].float()), "score"),
              ("purified image", _image(r.purified[i]), "image")]
    return panels


def score_maps_figure(x: torch.Tensor, result: BDMAEResult, indices: Sequence[int],
                      class_names: Sequence[str] | None = None) -> Figure:
    """Fig. 3: one row per image: image, initial and refined scores, combined S, restored tokens, purified."""
    names = class_names or [str(k) for k in range(int(max(result.labels.max(), result.original_labels.max())) + 1)]
    columns = len(score_panels(x, result, indices[0]))
    fig, axes = plt.subplots(len(indices), columns, figsize=(1.9 * columns, 2.0 * len(indices) + 0.6),
                             squeeze=False, layout="constrained")
    for row, i in enumerate(indices):
        for col, (title, array, kind) in enumerate(score_panels(x, result, i)):
            ax = axes[row, col]
            if kind == "image":
                ax.imshow(array, interpolation="nearest")
            else:
                im = ax.imshow(np.clip(array, 0, 1), vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
        axes[row, 0].set_xlabel(f"pred {names[int(result.original_labels[i])]}", fontsize=8)
        axes[row, -1].set_xlabel(f"pred {names[int(result.labels[i])]}", fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="trigger score (clipped to [0, 1])")
    return fig


def refinement_figure(x: torch.Tensor, result: BDMAEResult, index: int, kind: str = "image",
                      steps: Sequence[int] | None = None) -> Figure:
    """Fig. 4: for one image and one score ("image" = S_i, "label" = S_l), each refinement step's mask m_r
    (with the refine region m_rf) and the score after the step; the title says whether the label changed."""
    trace = result.refinement.of(kind)
    steps = list(range(trace.steps)) if steps is None else list(steps)
    fig, axes = plt.subplots(2, len(steps) + 1, figsize=(1.8 * (len(steps) + 1), 4.0), squeeze=False,
                             layout="constrained")
    axes[0, 0].imshow(_image(x[index]), interpolation="nearest")
    axes[0, 0].set_title("test image", fontsize=8)
    initial = result.score_image_initial if kind == "image" else result.score_label_initial
    axes[1, 0].imshow(np.clip(_grid(initial[index]), 0, 1), vmin=0, vmax=1, cmap="viridis")
    axes[1, 0].set_title("initial score", fontsize=8)
    original = int(result.original_labels[index])
    for col, step in enumerate(steps, start=1):
        region = _grid(trace.regions[index, step].float())
        mask = _grid(trace.masks[index, step].float())
        axes[0, col].imshow(region * 0.4 + mask * 0.6, vmin=0, vmax=1, cmap="magma", interpolation="nearest")
        label = int(trace.labels[index, step])
        outcome = "skipped" if label < 0 else ("label changed" if label != original else "label kept")
        axes[0, col].set_title(f"m_r, step {step + 1}\n{outcome}", fontsize=7)
        axes[1, col].imshow(np.clip(_grid(trace.scores[index, step]), 0, 1), vmin=0, vmax=1, cmap="viridis")
        axes[1, col].set_title(f"score after {step + 1}", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Refinement of S_{'i' if kind == 'image' else 'l'}: top row m_r (bright) within m_rf (dim); "
                 "bottom row the score (clipped to [0, 1])", fontsize=9)
    return fig


def score_maps_plotly(x: torch.Tensor, result: BDMAEResult, index: int,
                      class_names: Sequence[str] | None = None) -> go.Figure:
    """Interactive version of one row of Fig. 3 (hover shows exact, unclipped score values)."""
    panels = score_panels(x, result, index)
    cols = (len(panels) + 1) // 2  # two rows, so that the panels stay legible at a notebook's width
    fig = make_subplots(rows=2, cols=cols, subplot_titles=[t for t, _, _ in panels], horizontal_spacing=0.03,
                        vertical_spacing=0.1)
    for k, (_, array, kind) in enumerate(panels):
        row, col = divmod(k, cols)
        if kind == "image":
            fig.add_trace(go.Image(z=(array * 255).astype(np.uint8)), row=row + 1, col=col + 1)
        else:
            fig.add_trace(go.Heatmap(z=array[::-1], zmin=0, zmax=1, colorscale="Viridis",
                                     showscale=k == 1, colorbar={"title": "score"}), row=row + 1, col=col + 1)
    names = class_names or None
    original, final = int(result.original_labels[index]), int(result.labels[index])
    fig.update_layout(height=520, width=190 * cols, margin={"l": 10, "r": 10, "t": 70, "b": 10},
                      title=f"prediction before: {names[original] if names else original}; after BDMAE: "
                            f"{names[final] if names else final}")
    fig.update_annotations(font_size=11)  # the subplot titles
    fig.update_xaxes(showticklabels=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, constrain="domain")
    for k in range(1, len(panels) + 1):  # square token cells and pixels
        fig.update_yaxes(scaleanchor=f"x{k if k > 1 else ''}", row=(k - 1) // cols + 1, col=(k - 1) % cols + 1)
    return fig


def refinement_step_plotly(result: BDMAEResult, index: int, kind: str, step: int) -> go.Figure:
    """Interactive view of one refinement step: m_r within m_rf, and the score after the update."""
    trace = result.refinement.of(kind)
    region = _grid(trace.regions[index, step].float())
    mask = _grid(trace.masks[index, step].float())
    label = int(trace.labels[index, step])
    outcome = "skipped" if label < 0 else ("label changed" if label != int(result.original_labels[index])
                                           else "label kept")
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"m_r (bright) in m_rf (dim): {outcome}",
                                                        "score after the step"])
    fig.add_trace(go.Heatmap(z=(region * 0.4 + mask * 0.6)[::-1], zmin=0, zmax=1, colorscale="Magma",
                             showscale=False), row=1, col=1)
    fig.add_trace(go.Heatmap(z=_grid(trace.scores[index, step])[::-1], zmin=0, zmax=1, colorscale="Viridis",
                             colorbar={"title": "score"}), row=1, col=2)
    fig.update_layout(height=330, width=680, title=f"refinement of S_{'i' if kind == 'image' else 'l'}, "
                                                    f"step {step + 1}")
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return fig


def fig5_figure(curves: pd.DataFrame, fixed: pd.DataFrame) -> Figure:
    """[BDMAE] Fig. 5: CA and BA against N_o (Base-i, Base-l) and N_r (full method), and against one fixed threshold
    on S before / after refinement.

    Args:
        curves: columns panel ("N_o (base_i)", "N_o (base_l)", "N_r (full)"), value, CA, BA (%).
        fixed: columns stage ("before refinement", "after refinement"), threshold, CA, BA (%).
    """
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4), layout="constrained")
    for ax, panel in zip(axes[:3], ("N_o (base_i)", "N_o (base_l)", "N_r (full)"), strict=True):
        part = curves[curves["panel"] == panel]
        ax.plot(part["value"], part["CA"], "o-", label="CA (clean images)")
        ax.plot(part["value"], part["BA"], "s-", label="BA (triggered images)")
        ax.set_xlabel(panel.split()[0])
        ax.set_title(panel)
    for stage, style in (("before refinement", "--"), ("after refinement", "-")):
        part = fixed[fixed["stage"] == stage]
        axes[3].plot(part["threshold"], part["CA"], style, color="tab:blue", label=f"CA, {stage}")
        axes[3].plot(part["threshold"], part["BA"], style, color="tab:red", label=f"BA, {stage}")
    axes[3].set_xlabel("fixed threshold on S")
    for ax in axes:
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
    axes[0].legend(fontsize=7)
    axes[3].legend(fontsize=7)
    return fig
