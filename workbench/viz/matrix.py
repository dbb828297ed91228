"""Figures of the defence matrix (`workbench.repro.matrix`): a heat map per kind of defence, and one cell's result."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from workbench.viz.images import image_grid

_VERDICT_COLOURS = ListedColormap(["#d9534f", "#5cb85c"])  # wrong, right


def _grid(table: pd.DataFrame, value: str) -> pd.DataFrame:
    """models x defences of `value` (NaN where a cell is missing or not applicable)."""
    return table.pivot_table(index="model", columns="defence", values=value, aggfunc="first", sort=False)


def _annotate(ax: plt.Axes, texts: pd.DataFrame, dark: np.ndarray | None = None) -> None:
    """Write each cell's text, in white where the cell is `dark`."""
    for i, row in enumerate(texts.itertuples(index=False)):
        for j, text in enumerate(row):
            white = dark is not None and bool(dark[i, j])
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if white else "black")


def _axes(ax: plt.Axes, grid: pd.DataFrame, title: str) -> None:
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=8)
    ax.set_xlabel("defence")
    ax.set_ylabel("model")
    ax.set_title(title, fontsize=10)


def matrix_figure(detections: pd.DataFrame, purifications: pd.DataFrame, repairs: pd.DataFrame,
                  title: str = "") -> Figure:
    """Three heat maps, models x defences: detections (green: right verdict and target; red: wrong; grey: not
    applicable), and the attack success rate after each purifier and repair (darker: higher ASR), each cell
    annotated with ASR / CA in %."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 2.6 + 0.5 * max(1, detections["model"].nunique())),
                             gridspec_kw={"width_ratios": [max(1, detections["defence"].nunique()),
                                                           max(1, purifications["defence"].nunique()),
                                                           max(1, repairs["defence"].nunique())]})
    correct = _grid(detections.assign(correct=detections["correct"].astype(float)), "correct")
    axes[0].imshow(correct.to_numpy(dtype=float), cmap=_VERDICT_COLOURS, vmin=0, vmax=1, aspect="auto")
    verdicts = detections.assign(text=[
        "n/a" if pd.isna(d) else (f"T{int(t)}" if d else "clean") for d, t in zip(detections["detected"],
                                                                                  detections["target"], strict=True)])
    _annotate(axes[0], _grid(verdicts, "text").reindex_like(correct).fillna("n/a"))
    _axes(axes[0], correct, "detections (verdict; green = right)")
    for ax, table, name in ((axes[1], purifications, "purifiers"), (axes[2], repairs, "repairs")):
        asr = _grid(table, "ASR")
        image = ax.imshow(asr.to_numpy(dtype=float), cmap="magma_r", vmin=0, vmax=100, aspect="auto")
        texts = table.assign(text=[("n/a" if pd.isna(a) else f"{a:.0f}/{c:.0f}") for a, c in
                                   zip(table["ASR"], table["CA"], strict=True)])
        _annotate(ax, _grid(texts, "text").reindex_like(asr).fillna("n/a"), asr.to_numpy(dtype=float) > 50)
        _axes(ax, asr, f"{name}: ASR / CA (%)")
        fig.colorbar(image, ax=ax, label="attack success rate (%)", fraction=0.04)
    fig.suptitle(title or "Defence matrix: every defence on the same models")
    fig.tight_layout()
    return fig


def detection_cell_figure(class_scores: Sequence[float], target: int, detected: bool, title: str,
                          class_names: Sequence[str] | None = None) -> Figure:
    """A detector's per-class scores (the statistic it ranks), the suspected `target` in red, the verdict in the
    title."""
    scores = np.asarray(class_scores, dtype=float)
    names = list(class_names) if class_names else [str(k) for k in range(len(scores))]
    fig, ax = plt.subplots(figsize=(max(5, 0.3 * len(scores)), 3))
    colours = ["#d9534f" if k == target else "#7f7f7f" for k in range(len(scores))]
    ax.bar(range(len(scores)), np.where(np.isfinite(scores), scores, np.nan), color=colours)
    ax.set_xticks(range(len(scores)), names, rotation=60, fontsize=7)
    ax.set_xlabel("putative target class")
    ax.set_ylabel("detection statistic")
    verdict = f"backdoor, target {names[target]}" if detected else "no backdoor detected"
    ax.set_title(f"{title}: {verdict}", fontsize=10)
    fig.tight_layout()
    return fig


def purification_cell_figure(triggered: torch.Tensor, purified: torch.Tensor, labels: torch.Tensor,
                             title: str) -> Figure:
    """Triggered test images (top) and what the purifier made of them (bottom), with the output labels."""
    captions = [f"label {int(label)}" for label in labels]
    fig = image_grid([triggered, purified], ["triggered", "purified"], [[""] * len(captions), captions])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
