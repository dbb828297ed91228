"""Accuracy metrics of backdoor defences, under the names the papers use.

- CA (clean accuracy; REStore: CDA, clean data accuracy): accuracy on clean test images.
- BA (BDMAE: accuracy on backdoored images w.r.t. their true labels; REStore: SDA, sanitized data accuracy,
  when measured after purification): accuracy on triggered non-target images.
- ASR (attack success rate): fraction of triggered non-target images classified as the target.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from workbench.core.attacks.functional import stamp_patch_at
from workbench.core.query import QueryModel
from workbench.core.validation import WorkbenchError, check_class, check_images, check_labels, check_positive_int


def predict_labels(classifier: QueryModel | nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Top-1 labels from a `QueryModel` (counted queries) or a plain module (wrapped, label access)."""
    wrapper = classifier if isinstance(classifier, QueryModel) else QueryModel(classifier, "label")
    return wrapper.labels(x)


def _rate(hits: torch.Tensor) -> float:
    if hits.numel() == 0:
        raise WorkbenchError("cannot compute a rate over zero images")
    return hits.float().mean().item()


def _wrapped(classifier: QueryModel | nn.Module, x: torch.Tensor) -> QueryModel:
    """`classifier` with label access, after checking `x` is an image batch (so a wrong rank is blamed on it)."""
    check_images(x)
    if isinstance(classifier, QueryModel):
        return classifier
    # the model's own input shape when it declares one (QueryModel checks the images against it), else the images'
    return QueryModel(classifier, "label", input_shape=getattr(classifier, "input_shape", None) or tuple(x.shape[1:]))


def _accuracy(classifier: QueryModel | nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    wrapper = _wrapped(classifier, x)
    check_labels(y, len(x), wrapper.num_classes_for(x))
    return _rate(wrapper.labels(x) == y.to(x.device))


def clean_accuracy(classifier: QueryModel | nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """CA / CDA: accuracy on clean images x (N, C, H, W) with labels y (N,)."""
    return _accuracy(classifier, x, y)


def backdoor_accuracy(classifier: QueryModel | nn.Module, x_triggered: torch.Tensor, y_true: torch.Tensor) -> float:
    """BA / SDA: accuracy on triggered (or purified) non-target images w.r.t. their true labels."""
    return _accuracy(classifier, x_triggered, y_true)


def attack_success_rate(classifier: QueryModel | nn.Module, x_triggered: torch.Tensor, target: int) -> float:
    """ASR: fraction of triggered non-target images classified as `target`."""
    wrapper = _wrapped(classifier, x_triggered)
    check_class(target, wrapper.num_classes_for(x_triggered), "target")
    return _rate(wrapper.labels(x_triggered) == target)



def confusion_matrix(predicted: torch.Tensor, true: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts: entry [t, p] = number of images of true class t predicted as p."""
    check_positive_int(num_classes, "num_classes")
    for labels, name in ((true, "true"), (predicted, "predicted")):
        check_labels(labels, len(labels) if isinstance(labels, torch.Tensor) else 0, num_classes, name)
    if len(predicted) != len(true):
        raise WorkbenchError(f"predicted and true must hold one label per image each, got {len(predicted)} "
                             f"predicted and {len(true)} true labels")
    flat = true.to(torch.long).cpu() * num_classes + predicted.to(torch.long).cpu()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def patch_position_asr(classifier: QueryModel | nn.Module, x: torch.Tensor, patch: torch.Tensor,
                       target: int) -> torch.Tensor:
    """ASR of a patch stamped at every position: where a backdoor fires, not only where it was planted.

    A BadNets model may fire for its patch at places it never saw in training (a network that pools globally
    detects the patch wherever it is). Defences that undo a trigger at one place, such as REStore's purification,
    then fail when they recover a working copy at another place; this map tells the two cases apart.

    Args:
        classifier: the model (labels only are used).
        x: (N, C, H, W) clean images in [0, 1] whose true class is not `target`.
        patch: (C or 1, h, w) pixel values in [0, 1] that replace the image under them.
        target: the attack's target class.

    Returns:
        (H - h + 1, W - w + 1) ASR of the patch with its top-left pixel at each (row, col).
    """
    wrapper = _wrapped(classifier, x)
    check_class(target, wrapper.num_classes_for(x), "target")
    if not isinstance(patch, torch.Tensor) or patch.ndim != 3 or patch.shape[0] not in (1, x.shape[1]):
        raise WorkbenchError(f"patch must have shape (C or 1, h, w) for images {tuple(x.shape)}, got "
                             f"{tuple(getattr(patch, 'shape', ()))}")
    check_images(patch.unsqueeze(0), name="patch")
    height, width = x.shape[-2] - patch.shape[-2] + 1, x.shape[-1] - patch.shape[-1] + 1
    if height < 1 or width < 1:
        raise WorkbenchError(f"a {tuple(patch.shape[-2:])} patch does not fit {tuple(x.shape[-2:])} images")
    copies = x.repeat(width, 1, 1, 1)  # every image once per column, column-major
    lefts = torch.arange(width).repeat_interleave(len(x))
    rows = []
    for row in range(height):  # one batch per row of positions
        stamped = stamp_patch_at(copies, patch, torch.full_like(lefts, row), lefts)
        hits = wrapper.labels(stamped).view(width, len(x)) == target
        rows.append(hits.float().mean(dim=1).cpu())
    return torch.stack(rows)
