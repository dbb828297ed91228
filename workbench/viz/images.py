"""Static figures of images, confusion matrices and training curves (matplotlib; no computation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

if TYPE_CHECKING:  # a type only: viz draws results and never trains
    from workbench.core.training import EpochRecord


def image_grid(rows: Sequence[torch.Tensor], row_titles: Sequence[str], captions: Sequence[Sequence[str]] | None = None,
               *, scale: float = 1.4) -> Figure:
    """One row of images per tensor in `rows` (each (N, C, H, W) in [0, 1]), with a title per row.

    Args:
        rows: image batches of equal length N.
        row_titles: a label per row (shown on the left).
        captions: optional caption per image (e.g. "true: cat / pred: airplane").
        scale: inches per image.
    """
    n = len(rows[0])
    fig, axes = plt.subplots(len(rows), n, figsize=(scale * n, scale * len(rows) + 0.4 * bool(captions)),
                             squeeze=False)
    for r, (batch, title) in enumerate(zip(rows, row_titles, strict=True)):
        for c in range(n):
            ax = axes[r, c]
            img = batch[c].detach().cpu().permute(1, 2, 0).numpy()
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if captions is not None:
                ax.set_title(captions[r][c], fontsize=7)
        axes[r, 0].set_ylabel(title, fontsize=9)
    fig.tight_layout()
    return fig


def confusion_heatmaps(matrices: Sequence[np.ndarray], titles: Sequence[str], class_names: Sequence[str],
                       *, highlight: int | None = None) -> Figure:
    """Row-normalised confusion matrices side by side (rows: true class, columns: predicted class).

    Args:
        matrices: (K, K) count matrices.
        titles: a title per matrix.
        class_names: K class names for the axes.
        highlight: a predicted class (e.g. the attack's target) whose column is outlined.
    """
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.8 * len(matrices) + 1, 4.6), squeeze=False,
                             layout="constrained")
    for ax, counts, title in zip(axes[0], matrices, titles, strict=True):
        rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        im = ax.imshow(rates, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ticks = np.arange(len(class_names))
        ax.set_xticks(ticks, class_names, rotation=90, fontsize=7)
        ax.set_yticks(ticks, class_names, fontsize=7)
        if highlight is not None:
            ax.add_patch(plt.Rectangle((highlight - 0.5, -0.5), 1, len(class_names), fill=False, ec="red", lw=2))
    fig.colorbar(im, ax=axes[0].tolist(), label="fraction of the true class's images")
    return fig


def training_curves(history: Sequence[EpochRecord]) -> Figure:
    """Per-epoch training loss and monitor CA / ASR (fractions) of a training run (`TrainingSummary.history`)."""
    epochs = [h.epoch for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_loss.plot(epochs, [h.loss for h in history], marker="o")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("mean training loss (cross-entropy)")
    for key, label in (("ca", "clean accuracy (CA)"), ("asr", "attack success rate (ASR)")):
        if getattr(history[0], key) is not None:
            ax_acc.plot(epochs, [getattr(h, key) for h in history], marker="o", label=label)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("fraction of monitor test images")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    return fig
