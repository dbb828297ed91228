"""Projected gradient descent ([PGD]) for label-consistent poisoning ([LC]).

The label-consistent (LC) attack makes target-class training images hard to classify from their content, with
an L-inf-bounded adversarial perturbation against a clean surrogate model, before adding the trigger; the labels
stay correct, so the model learns to rely on the trigger ([BDMAE] Table 3 "LC", T&R "LCBA").
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.core.classifier import check_model_images, num_classes_of
from workbench.core.validation import (
    check_fraction,
    check_labels,
    check_positive,
    check_positive_int,
)


def pgd_perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, steps: int,
                step_size: float | None = None, generator: torch.Generator | None = None,
                batch_size: int = 256) -> torch.Tensor:
    """Untargeted L-inf PGD with a random start: maximise the cross-entropy of the true labels.

    Args:
        model: the (surrogate) classifier; its parameters are not changed.
        x: images (N, C, H, W) in [0, 1]; y: their labels (N,).
        epsilon: radius of the L-inf ball (e.g. 16/255).
        steps: gradient steps; step_size: per-step size (default 2.5 epsilon / steps, as [PGD]).
        generator: seeds the random start.

    Returns:
        Perturbed images in [0, 1] with ||x' - x||_inf <= epsilon.
    """
    check_model_images(model, x)
    check_labels(y, len(x), num_classes_of(model, input_shape=tuple(x.shape[1:])))
    check_fraction(epsilon, "epsilon")
    check_positive_int(steps, "steps")
    check_positive_int(batch_size, "batch_size")
    step_size = 2.5 * epsilon / steps if step_size is None else check_positive(step_size, "step_size")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            noise = (torch.rand(xb.shape, generator=generator) * 2 - 1).to(device) * epsilon
            adv = (xb + noise).clamp(0, 1)
            for _ in range(steps):
                adv.requires_grad_(True)
                loss = F.cross_entropy(model(adv), yb)
                (grad,) = torch.autograd.grad(loss, adv)
                adv = adv.detach() + step_size * grad.sign()
                adv = torch.min(torch.max(adv, xb - epsilon), xb + epsilon).clamp(0, 1)
            out.append(adv.detach().to(x.device))
    finally:
        model.train(was_training)
    return torch.cat(out)
