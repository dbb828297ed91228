"""PatchCleanser ([PatchCleanser]): double masking, as BDMAE adapts it (App. C).

A set of k x k square masks is built so that any patch of up to `patch_size` pixels lies entirely under at
least one mask. First round: predict every one-masked image. If all agree, that is the answer. Otherwise,
for every first-round mask whose prediction disagrees with the majority, predict the image under that mask
and every second mask; if all those agree, return the disagreer's label (the original Alg. 1 lines 8-10).
Failing that, the vanilla method returns the first-round majority; BDMAE's variant returns the majority vote
of all predictions made (first and second round), which recovers more backdoored images at some cost in CA.
Masked pixels are set to 0.5 grey (our choice; the paper does not say).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from workbench.core.query import QueryModel
from workbench.core.validation import WorkbenchError, check_images, check_positive_int


def mask_set(size: int, patch_size: int, masks_per_side: int) -> torch.Tensor:
    """(k*k, size, size) bool masks (True = masked) of side m = patch_size + stride - 1 at stride
    ceil((size - patch_size + 1) / k): every patch of side <= patch_size is covered by one of them."""
    check_positive_int(size, "size")
    check_positive_int(patch_size, "patch_size")
    check_positive_int(masks_per_side, "masks_per_side")
    if patch_size > size:
        raise WorkbenchError(f"patch_size {patch_size} exceeds the image size {size}; no mask can cover such a patch")
    stride = math.ceil((size - patch_size + 1) / masks_per_side)
    side = min(size, patch_size + stride - 1)
    starts = sorted({min(i * stride, size - side) for i in range(masks_per_side)})
    out = torch.zeros(len(starts) ** 2, size, size, dtype=torch.bool)
    for a, r in enumerate(starts):
        for b, c in enumerate(starts):
            out[a * len(starts) + b, r:r + side, c:c + side] = True
    return out


def _majority(labels: torch.Tensor) -> int:
    """The most frequent label; a tie goes to the lowest class index (neither paper specifies ties)."""
    values, counts = torch.unique(labels, return_counts=True)
    return int(values[torch.argmax(counts)])


@dataclass(frozen=True)
class PatchCleanser:
    """Double-masking defence on label access.

    Args:
        classifier: label-access `QueryModel`.
        patch_size: largest trigger side (pixels) the mask set must cover.
        masks_per_side: k (the original paper's default 6: 36 masks).
        variant: "vanilla" or "majority" (BDMAE's variant).
    """

    classifier: QueryModel
    patch_size: int = 5
    masks_per_side: int = 6
    variant: str = "vanilla"

    def __post_init__(self) -> None:
        check_positive_int(self.patch_size, "patch_size")
        check_positive_int(self.masks_per_side, "masks_per_side")
        if self.variant not in ("vanilla", "majority"):
            raise WorkbenchError(f"PatchCleanser variant must be 'vanilla' or 'majority', got {self.variant!r}")

    def predict(self, x: torch.Tensor, *, seed: int = 0, first_index: int = 0) -> torch.Tensor:
        """Labels (N,) for images (N, C, H, W); deterministic (`seed` and `first_index` unused)."""
        check_images(x)
        n, _, h, w = x.shape
        if h != w:
            raise WorkbenchError(f"PatchCleanser here expects square images, got {h}x{w}")
        masks = mask_set(h, self.patch_size, self.masks_per_side).to(x.device)
        k = len(masks)
        first = self._masked_labels(x.unsqueeze(1), masks.view(1, k, 1, h, w)).view(n, k)
        out = torch.empty(n, dtype=torch.long)
        for i in range(n):
            row = first[i]
            majority = _majority(row)
            if bool((row == majority).all()):
                out[i] = majority
                continue
            disagreers = (row != majority).nonzero().flatten()
            both = masks[disagreers].unsqueeze(1) | masks.unsqueeze(0)  # (D, k, H, W)
            second = self._masked_labels(x[i:i + 1].unsqueeze(1), both.view(1, -1, 1, h, w)).view(len(disagreers), k)
            agreed = [int(row[d]) for d, labels in zip(disagreers.tolist(), second, strict=True)
                      if bool((labels == row[d]).all())]
            if agreed:
                out[i] = agreed[0]
            elif self.variant == "vanilla":
                out[i] = majority
            else:
                out[i] = _majority(torch.cat([row, second.flatten()]))
        return out

    def _masked_labels(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Labels of x (B, 1, C, H, W) under masks (B or 1, M, 1, H, W), flattened to (B*M,)."""
        masked = torch.where(masks, torch.full_like(x, 0.5), x)
        return self.classifier.labels(masked.reshape(-1, *masked.shape[2:])).cpu()
