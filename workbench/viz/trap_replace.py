"""Figures of Trap and Replace: stem-feature PCA scatters (Sec. 4.3, Fig. 2) and reconstructions across lambda1
(App. C.2, Fig. 4).

Pure drawing: inputs are `FeatureScatter` results and image tensors, outputs are matplotlib or plotly figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import plotly.graph_objects as go
import torch
from matplotlib.figure import Figure
from plotly.subplots import make_subplots

from workbench.core.validation import WorkbenchError

if TYPE_CHECKING:  # types only: viz draws results and never runs a defence
    from workbench.defenses.trap_replace import FeatureScatter

#: group -> (colour, marker) as in Fig. 2: clean target, clean source, poisoned source
STYLE = {"clean target": ("tab:blue", "o"), "clean source": ("tab:green", "o"), "poisoned source": ("tab:red", "x")}


def _axis_labels(scatter: FeatureScatter) -> tuple[str, str]:
    return tuple(f"PC {k + 1} of stem features ({100 * share:.0f} % of variance)"
                 for k, share in enumerate(scatter.explained_variance))


def _caption(scatter: FeatureScatter) -> str:
    d = scatter.pca
    return f"poisoned-source centroid: {d.to_source:.2f} to source, {d.to_target:.2f} to target"


def _labels(labels: Sequence[str] | None) -> Sequence[str]:
    """The groups' display labels in Fig. 2's group order (default: the group names)."""
    if labels is not None and len(labels) != len(STYLE):
        raise WorkbenchError(f"labels: give one label per group of {tuple(STYLE)}, got {len(labels)}")
    return tuple(STYLE) if labels is None else labels


def feature_scatter_figure(scatter: FeatureScatter, title: str, labels: Sequence[str] | None = None,
                           ax: plt.Axes | None = None) -> Figure:
    """One panel of Fig. 2: the three groups on the first two principal components, centroids as large markers.
    `labels` names the groups in Fig. 2's order (e.g. ("clean airplane", "clean automobile", "poisoned
    automobile"), `ScatterComparison.group_labels`)."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(4.6, 4.2), layout="constrained")
    for (group, points), label in zip(scatter.groups(), _labels(labels), strict=True):
        colour, marker = STYLE[group]
        xy = points.numpy()
        ax.scatter(xy[:, 0], xy[:, 1], s=9, c=colour, marker=marker, alpha=0.5, label=label)
        outline = {"edgecolors": "black"} if marker != "x" else {}  # an "x" has no face to outline
        ax.scatter(*xy.mean(axis=0), s=160, c=colour, marker=marker, linewidths=1.2, **outline)
    x_label, y_label = _axis_labels(scatter)
    ax.set_xlabel(x_label, fontsize=8)
    ax.set_ylabel(y_label, fontsize=8)
    ax.set_title(f"{title}\n{_caption(scatter)}", fontsize=9)
    ax.legend(fontsize=7, markerscale=1.5)
    return fig


def feature_scatter_pair(without: FeatureScatter, with_reconstruction: FeatureScatter,
                         labels: Sequence[str] | None = None) -> Figure:
    """Fig. 2: stem features trained without (left) and with (right) the reconstruction head."""
    fig, axes = plt.subplots(1, 2, figsize=(9.4, 4.3), layout="constrained")
    feature_scatter_figure(without, "(a) without reconstruction head", labels, ax=axes[0])
    feature_scatter_figure(with_reconstruction, "(b) with reconstruction head", labels, ax=axes[1])
    return fig


def feature_scatter_plotly(scatters: Mapping[str, FeatureScatter], labels: Sequence[str] | None = None
                           ) -> go.Figure:
    """Interactive Fig. 2: one panel per model (title -> scatter, e.g. "without reconstruction" and "with
    reconstruction"), side by side in one figure with one legend (hover shows the sample index within its group)."""
    titles = [f"{title}<br><sub>{_caption(scatter)}</sub>" for title, scatter in scatters.items()]
    fig = make_subplots(rows=1, cols=len(scatters), horizontal_spacing=0.12, subplot_titles=titles)
    for col, scatter in enumerate(scatters.values(), start=1):
        for (group, points), label in zip(scatter.groups(), _labels(labels), strict=True):
            colour, marker = STYLE[group]
            colour = colour.removeprefix("tab:")
            xy = points.numpy()
            fig.add_scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", name=label,
                            legendgroup=group, showlegend=col == 1,
                            marker={"color": colour, "symbol": "x" if marker == "x" else "circle", "size": 5,
                                    "opacity": 0.6},
                            customdata=np.arange(len(xy)), hovertemplate="sample %{customdata}<extra></extra>",
                            row=1, col=col)
            centre = xy.mean(axis=0)
            fig.add_scatter(x=[centre[0]], y=[centre[1]], mode="markers", legendgroup=group, showlegend=False,
                            hoverinfo="skip", marker={"color": colour, "size": 16, "line": {"width": 2}},
                            row=1, col=col)
        x_label, y_label = _axis_labels(scatter)
        fig.update_xaxes(title_text=x_label, row=1, col=col)
        fig.update_yaxes(title_text=y_label, row=1, col=col)
    fig.update_annotations(font_size=12)  # the panel titles
    fig.update_layout(width=520 * len(scatters), height=480, margin={"t": 80})
    return fig


def _hwc(image: torch.Tensor) -> np.ndarray:
    img = image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return img.repeat(3, axis=2) if img.shape[2] == 1 else img


def reconstruction_figure(originals: torch.Tensor, reconstructions: torch.Tensor, row_names: Sequence[str],
                          lambdas: Sequence[float]) -> Figure:
    """Fig. 4: one row per input (`row_names`, e.g. "clean", "l2-Invisible"): the original image (`originals`,
    (R, C, H, W)), then its reconstruction f_r(f_s(x)) by the model trained with each lambda1 (`reconstructions`,
    (R, L, C, H, W)), with the per-pixel MSE in the title."""
    rows, count = len(row_names), len(lambdas)
    if originals.shape[0] != rows or reconstructions.shape[:2] != (rows, count):
        raise WorkbenchError(f"reconstructions {tuple(reconstructions.shape)} must be (rows, lambdas, C, H, W) = "
                             f"({rows}, {count}, ...) for originals {tuple(originals.shape)}")
    fig, axes = plt.subplots(rows, 1 + count, figsize=(1.7 * (1 + count), 1.9 * rows), squeeze=False,
                             layout="constrained")
    for r, row in enumerate(row_names):
        axes[r, 0].imshow(_hwc(originals[r]), interpolation="nearest")
        axes[r, 0].set_title("original", fontsize=8)
        axes[r, 0].set_ylabel(row, fontsize=8)
        for c, lam in enumerate(lambdas, start=1):
            ax = axes[r, c]
            image = reconstructions[r, c - 1]
            mse = float(((image.cpu() - originals[r].cpu()) ** 2).mean())
            ax.imshow(_hwc(image), interpolation="nearest")
            ax.set_title(f"lambda1 = {lam:g}\nMSE {mse:.4f}", fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    return fig


def reconstruction_plotly(originals: Sequence[torch.Tensor], reconstructions: Sequence[torch.Tensor],
                          row_names: Sequence[str], title: str) -> go.Figure:
    """Original and reconstruction side by side for each row (interactive reconstruction viewer)."""
    fig = make_subplots(rows=len(row_names), cols=2, subplot_titles=[
        text for name in row_names for text in (f"{name}: original", f"{name}: reconstruction")])
    for r, (original, recon) in enumerate(zip(originals, reconstructions, strict=True), start=1):
        for c, image in enumerate((original, recon), start=1):
            fig.add_trace(go.Image(z=(255 * _hwc(image)).astype(np.uint8)), row=r, col=c)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(title=title, width=480, height=240 * len(row_names) + 60, margin={"t": 60})
    return fig
