"""Figures of REStore: tau -> rho maps per class (Figs. 5-7), recovered triggers (Fig. 9), the recovered triggers' ASR
per class (Fig. 8), purification before / after (Fig. 11) and where a patch backdoor fires (no paper figure).

Pure drawing: inputs are REStore results and tensors, outputs are matplotlib or plotly figures. The caller stamps
perturbations on images (`RestoreSetup.perturb`); these functions only show them.
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

if TYPE_CHECKING:  # types only: viz draws results and never runs a defence
    from workbench.defenses.restore import Diagnosis, TriggerEstimate

TAU_LABEL = "score threshold tau (Eq. 4 score)"
RHO_LABEL = "log10 rho_tau (estimated probability)"


def _curves(diagnosis: Diagnosis) -> list[tuple[np.ndarray, np.ndarray]]:
    return [tuple(t.numpy() for t in diagnosis.splitting.curve(b)) for b in range(len(diagnosis.classes))]


def _title(diagnosis: Diagnosis) -> str:
    return f"IS {diagnosis.setup.name} ({diagnosis.output} scorer): suspect {diagnosis.suspect}, " \
           f"margin {diagnosis.margin:.2f} decades"


def tau_rho_figure(diagnosis: Diagnosis, class_names: Sequence[str], backdoored: int | None = None,
                   ax: plt.Axes | None = None) -> Figure:
    """The estimated tau -> rho map of every class (Figs. 5-7): the backdoored class (when known) in red, the
    comparison level used for the suspect as a dotted line."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5.5, 3.6), layout="constrained")
    for cls, (levels, log10_rho) in zip(diagnosis.classes, _curves(diagnosis), strict=True):
        marked = cls == backdoored
        ax.plot(levels, log10_rho, color="tab:red" if marked else None, linewidth=2.2 if marked else 1.0,
                label=f"{class_names[cls]}{' (backdoored)' if marked else ''}", zorder=3 if marked else 2)
    ax.axvline(diagnosis.comparison_level, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel(TAU_LABEL)
    ax.set_ylabel(RHO_LABEL)
    ax.set_title(_title(diagnosis), fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    return fig


def tau_rho_plotly(diagnosis: Diagnosis, class_names: Sequence[str], backdoored: int | None = None) -> go.Figure:
    """Interactive version of `tau_rho_figure` (hover: level, log10 rho and survivors)."""
    fig = go.Figure()
    for b, (cls, (levels, log10_rho)) in enumerate(zip(diagnosis.classes, _curves(diagnosis), strict=True)):
        marked = cls == backdoored
        counts = diagnosis.splitting.survivor_counts[: len(levels), b].numpy()
        fig.add_trace(go.Scatter(x=levels, y=log10_rho, mode="lines+markers", customdata=counts,
                                 name=f"{class_names[cls]}{' (backdoored)' if marked else ''}",
                                 line={"width": 4 if marked else 1.5, **({"color": "red"} if marked else {})},
                                 marker={"size": 4},
                                 hovertemplate="tau %{x:.3f}: log10 rho %{y:.2f} (%{customdata} survivors)"))
    fig.add_vline(x=diagnosis.comparison_level, line_dash="dot", line_color="grey")
    fig.update_layout(title=_title(diagnosis), xaxis_title=TAU_LABEL, yaxis_title=RHO_LABEL, height=420, width=720)
    return fig


def _image(x: torch.Tensor) -> np.ndarray:
    img = x.detach().cpu().float().clamp(0, 1).permute(1, 2, 0).numpy()
    return img.repeat(3, axis=2) if img.shape[2] == 1 else img


def trigger_panels(estimate: TriggerEstimate, clean: torch.Tensor, stamped: torch.Tensor
                   ) -> list[tuple[str, np.ndarray, dict]]:
    """(title, array, imshow options) of the four views of a recovered trigger: a clean image, the same image with a
    recovered perturbation, the mean effect (0.5 offset: grey = no change) and the SNR (channel maximum)."""
    mean = estimate.mean.detach().cpu()
    peak = float(mean.abs().max()) or 1.0
    return [("clean image", _image(clean), {}), ("with a recovered perturbation", _image(stamped), {}),
            (f"mean effect (x{0.5 / peak:.1f}, grey = 0)", _image(0.5 + 0.5 * mean / peak), {}),
            ("SNR |mean| / std", estimate.snr.detach().cpu().amax(dim=0).numpy(), {"cmap": "magma"})]


def trigger_figure(estimate: TriggerEstimate, clean: torch.Tensor, stamped: torch.Tensor, title: str) -> Figure:
    """Fig. 9: a recovered trigger on an image and alone (its mean effect and SNR over the realisations)."""
    panels = trigger_panels(estimate, clean, stamped)
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 2.6), layout="constrained")
    for ax, (name, array, options) in zip(axes, panels, strict=True):
        shown = ax.imshow(array, interpolation="nearest", **options)
        if "cmap" in options:
            fig.colorbar(shown, ax=ax, shrink=0.8)
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    return fig


def recovered_asr_figure(asr: Sequence[float], class_names: Sequence[str], backdoored: int | None = None,
                         title: str = "", ax: plt.Axes | None = None) -> Figure:
    """Fig. 8: the ASR of the perturbations recovered for each class (applied to clean images of the other
    classes); the backdoored class (when known) in red."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5.5, 3), layout="constrained")
    colours = ["tab:red" if c == backdoored else "tab:blue" for c in range(len(asr))]
    ax.bar(range(len(asr)), 100 * np.asarray(asr), color=colours)
    ax.set_xticks(range(len(asr)), class_names[: len(asr)], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("recovered-trigger ASR (%)")
    ax.set_xlabel("class c the perturbations were searched for")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    return fig


def position_asr_figure(asr: torch.Tensor, planted: tuple[int, int], recovered: tuple[int, int] | None = None,
                        title: str = "", ax: plt.Axes | None = None) -> Figure:
    """Where a backdoor fires: the ASR of its patch with the patch's top-left pixel at each (row, col)
    (`workbench.core.metrics.patch_position_asr`), the planted position marked, and where a recovered trigger
    sits (top-left of its strongest patch-sized window, `strongest_window`) when given."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(4.2, 3.6), layout="constrained")
    shown = ax.imshow(100 * asr.detach().cpu().numpy(), cmap="viridis", vmin=0, vmax=100, interpolation="nearest")
    fig.colorbar(shown, ax=ax, shrink=0.8, label="ASR (%)")
    ax.scatter([planted[1]], [planted[0]], marker="s", s=60, facecolors="none", edgecolors="red",
               label="planted patch")
    if recovered is not None:
        ax.scatter([recovered[1]], [recovered[0]], marker="x", s=50, color="white", label="recovered trigger")
    ax.set_xlabel("patch column (px, top-left)")
    ax.set_ylabel("patch row (px, top-left)")
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(title, fontsize=9)
    return fig


def trigger_plotly(estimate: TriggerEstimate, clean: torch.Tensor, stamped: torch.Tensor, title: str) -> go.Figure:
    """Interactive version of `trigger_figure` (hover: pixel values; the SNR as a heat map)."""
    panels = trigger_panels(estimate, clean, stamped)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[name for name, _, _ in panels])
    for col, (_, array, options) in enumerate(panels, start=1):
        if "cmap" in options:
            fig.add_trace(go.Heatmap(z=array, colorscale="Magma", showscale=True, colorbar={"x": 1.02}), row=1,
                          col=col)
            fig.update_yaxes(autorange="reversed", row=1, col=col)
        else:
            fig.add_trace(go.Image(z=(255 * array).astype(np.uint8)), row=1, col=col)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, scaleanchor="x")
    fig.update_layout(title=title, height=300, width=950)
    return fig


def tau_rho_grid(panels: Sequence[tuple[str, Diagnosis, Sequence[str], int | None]]) -> Figure:
    """One `tau_rho_figure` per (title, diagnosis, class names, backdoored class or None), side by side."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), layout="constrained", squeeze=False)
    for ax, (title, diagnosis, class_names, backdoored) in zip(axes[0], panels, strict=True):
        tau_rho_figure(diagnosis, class_names, backdoored, ax=ax)
        ax.set_title(f"{title}: " + ax.get_title(), fontsize=7)
    return fig


def recovered_asr_grid(panels: Sequence[tuple[str, Sequence[float], Sequence[str], int | None]]) -> Figure:
    """One `recovered_asr_figure` per (title, ASR per class as fractions, class names, backdoored class or None)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), layout="constrained", squeeze=False)
    for ax, (title, asr, class_names, backdoored) in zip(axes[0], panels, strict=True):
        recovered_asr_figure(asr, class_names, backdoored, title, ax=ax)
    return fig
