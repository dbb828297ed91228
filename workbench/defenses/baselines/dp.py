"""Differentially private training (DP-SGD; [DP-SGD]) as a backdoor defence ([DP]), the
"DP" baseline of I-BAU and of T&R (App. B.2, C.5): bounding each example's influence on every update blunts the
few poisoned examples' pull towards the trigger (at a large cost in clean accuracy: [T&R] Tables 11-12).

Each step on a batch B of size |B| ([DP-SGD] Alg. 1):

    g_i = grad_theta CE(f_theta(x_i), y_i)                                  (per-example gradients)
    g_i <- g_i * min(1, C / ||g_i||_2)                                      (clip the whole-model norm to C)
    g  = (sum_i g_i + N(0, sigma^2 C^2 I)) / |B|                            (Gaussian mechanism)

and the optimiser of the training recipe takes its step along g. Per-example gradients are computed in one batched
call with `torch.func` (`functional_call` + `vmap` of `grad`), not a loop over examples.

Settings: C = 1 ([T&R] App. B.2 "we keep the gradient clipping threshold to 1"); sigma = 1.0 (our choice within T&R's
tuning range [0.5, 10]; T&R do not report the value they settled on).

Deviations:

- BatchNorm normalises with batch statistics, so one example's output (and gradient) depends on the others and
  per-example clipping would not bound its influence; `vmap` refuses it too. As Opacus does
  (`ModuleValidator.fix`), the DP model replaces every BatchNorm2d(c) with GroupNorm(gcd(32, c), c) (affine, weight 1,
  bias 0). The DP model therefore has a different module structure from the recipe's model: build it with
  `dp_model(recipe, config)` before loading saved DP weights.
- Batches are fixed-size shuffled batches (the workbench's trainer), not Poisson-sampled lots, and no privacy
  accounting is done: this is DP-SGD as a robust-training defence, not a certified (epsilon, delta) guarantee.
- The optimiser (SGD with momentum / Adam), schedule, weight decay and augmentation come from the recipe; weight
  decay and momentum act on the privatised gradient (post-processing).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from workbench.core.classifier import check_classifier
from workbench.core.data import ImageDataset
from workbench.core.runtime import make_generator, resolve_device
from workbench.core.training import TrainConfig, check_training_images, new_model, train_classifier
from workbench.core.validation import (
    WorkbenchError,
    check_fraction,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_seed,
)

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD's hyper-parameters.

    Args:
        noise_multiplier: sigma, noise std in units of the clipping norm (1.0; our choice in T&R's range [0.5, 10]).
        max_grad_norm: C, the per-example gradient norm bound (1, [T&R] App. B.2).
        max_groups: GroupNorm groups replacing each BatchNorm2d(c): gcd(max_groups, c) (32, as in Opacus).
        seed: seed of the Gaussian noise (initialisation, data order and augmentation come from the recipe's seed).
    """

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    max_groups: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        check_non_negative(self.noise_multiplier, "DPConfig.noise_multiplier", meaning_of_zero="0 = clipping only")
        check_positive(self.max_grad_norm, "DPConfig.max_grad_norm")
        check_positive_int(self.max_groups, "DPConfig.max_groups")
        check_seed(self.seed, "DPConfig.seed")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def replace_batchnorm(module: nn.Module, max_groups: int = 32) -> nn.Module:
    """Replace, in place, every BatchNorm2d(c) inside `module` by GroupNorm(gcd(max_groups, c), c) (Opacus's fix);
    returns `module`. BatchNorm1d / 3d are not expected in the workbench's models and raise."""
    check_positive_int(max_groups, "max_groups")
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            setattr(module, name, nn.GroupNorm(math.gcd(max_groups, c), c, eps=child.eps, affine=True))
        elif isinstance(child, _BATCH_NORMS):
            raise WorkbenchError(f"{type(child).__name__} at {name!r} has no per-example replacement here; only "
                                 "BatchNorm2d is swapped for GroupNorm")
        else:
            replace_batchnorm(child, max_groups)
    return module


def dp_model(recipe: TrainConfig, config: DPConfig = DPConfig()) -> nn.Module:
    """The untrained DP model of `recipe`: `new_model(recipe)` (seeded from `recipe.seed`) with its BatchNorm layers
    replaced by GroupNorm. Use it to rebuild a DP model before `load_state_dict` of saved DP weights."""
    return replace_batchnorm(new_model(recipe), config.max_groups)


def per_sample_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, label_smoothing: float = 0.0
                         ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-example gradients of CE(model(x_i), y_i) for the trainable parameters, batched with `torch.func`.

    Args:
        model: a classifier without BatchNorm (see `replace_batchnorm`); its current train/eval mode is used.
        x: (B, C, H, W) images.
        y: (B,) labels.
        label_smoothing: of the cross-entropy.

    Returns:
        (name -> (B, *param.shape) gradients of each trainable parameter, (B,) per-example losses).
    """
    _check_batch(model, x, y, label_smoothing)
    return _per_sample_gradients(model, x, y, label_smoothing)


def _check_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, label_smoothing: float) -> None:
    """Images that fit the model, one label per image within its classes, a smoothing in [0, 1)."""
    check_classifier(model, x, y, name="x")
    check_fraction(label_smoothing, "label_smoothing", allow_zero=True, allow_one=False)


def _per_sample_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, label_smoothing: float
                          ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`per_sample_gradients` without the checks of its inputs (the training loop's batches are checked once)."""
    batch_norms = [name for name, m in model.named_modules() if isinstance(m, _BATCH_NORMS)]
    if batch_norms:
        raise WorkbenchError(f"per-example gradients need a model without BatchNorm (found {batch_norms[0]!r}): "
                             "BatchNorm mixes the examples of a batch; build the model with dp_model(recipe)")
    trainable = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    frozen = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def loss_of_one(params: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (params, frozen, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(logits, yi.unsqueeze(0), label_smoothing=label_smoothing)

    # randomness="different": dropout layers (p = 0 unless switched on) draw independently per example
    grads, losses = vmap(grad_and_value(loss_of_one), in_dims=(None, 0, 0), randomness="different")(trainable, x, y)
    return grads, losses


def clip_per_sample(grads: dict[str, torch.Tensor], max_norm: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Scale each example's gradient (all parameters together) to L2 norm at most `max_norm`.

    Args:
        grads: name -> (B, *shape) per-example gradients.
        max_norm: C.

    Returns:
        (the clipped gradients, (B,) norms before clipping).
    """
    check_positive(max_norm, "max_norm")
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads.values()]).sum(0).sqrt()
    scale = torch.clamp(max_norm / (norms + 1e-6), max=1.0)  # the 1e-6 of Opacus: no division by 0
    clipped = {k: g * scale.view(-1, *([1] * (g.ndim - 1))) for k, g in grads.items()}
    return clipped, norms


def private_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, max_grad_norm: float,
                     noise_multiplier: float, generator: torch.Generator, label_smoothing: float = 0.0
                     ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The DP-SGD gradient of one batch: (sum of clipped per-example gradients + N(0, sigma^2 C^2 I)) / B.

    Args:
        model: the classifier (no BatchNorm).
        x, y: the batch (B, C, H, W) and its labels (B,).
        max_grad_norm: C.
        noise_multiplier: sigma (0 = no noise).
        generator: a CPU generator for the noise (drawn on the CPU, then moved, so the noise repeats on any device).
        label_smoothing: of the cross-entropy.

    Returns:
        (name -> privatised gradient of each trainable parameter, (B,) per-example losses).
    """
    _check_batch(model, x, y, label_smoothing)
    check_positive(max_grad_norm, "max_grad_norm")
    check_non_negative(noise_multiplier, "noise_multiplier", meaning_of_zero="0 = clipping only")
    return _private_gradient(model, x, y, max_grad_norm, noise_multiplier, generator, label_smoothing)


def _private_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_grad_norm: float,
                      noise_multiplier: float, generator: torch.Generator, label_smoothing: float
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`private_gradient` without its checks: the training loop calls it on every batch."""
    grads, losses = _per_sample_gradients(model, x, y, label_smoothing)
    clipped, _ = clip_per_sample(grads, max_grad_norm)
    out = {}
    for name, g in clipped.items():
        total = g.sum(0)
        if noise_multiplier > 0:
            noise = torch.randn(total.shape, generator=generator, dtype=total.dtype)
            total = total + noise.to(total.device) * (noise_multiplier * max_grad_norm)
        out[name] = total / len(x)
    return out, losses


def train_dp(train: ImageDataset, recipe: TrainConfig, config: DPConfig = DPConfig(), *,
             model: nn.Module | None = None, monitor: tuple[torch.Tensor, torch.Tensor] | None = None,
             monitor_backdoor: tuple[torch.Tensor, int] | None = None, device: str = "auto",
             progress: bool = True, checkpoint: str | Path | None = None) -> nn.Module:
    """Train a classifier on `train` with DP-SGD.

    Args:
        train: the (possibly poisoned) training set.
        recipe: optimiser, schedule, weight decay, epochs, batch size, label smoothing, augmentation and seed (data
            order, augmentation; without `model` also the initialisation) of the training.
        config: clipping norm, noise multiplier, GroupNorm groups and the noise seed.
        model: the architecture to train, freshly initialised (any `nn.Module` on [0, 1] images with an
            `input_shape`); its BatchNorm layers are replaced in place (`replace_batchnorm`) and it is trained in
            place. None = `dp_model(recipe, config)`.
        monitor, monitor_backdoor: as in `train_classifier` (per-epoch CA / ASR, printed on the progress bar).
        device: where to train ("auto" = GPU if available).
        progress: show a tqdm bar.
        checkpoint: as in `train_classifier` (resumable epochs; the noise generator is saved with the rest).

    Returns:
        The trained GroupNorm classifier, in eval mode on `device` (rebuild it with `dp_model` to load saved weights).
    """
    model = dp_model(recipe, config) if model is None else replace_batchnorm(model, config.max_groups)
    check_training_images(train, model)
    noise_gen = make_generator(config.seed)
    names = [k for k, p in model.named_parameters() if p.requires_grad]

    def dp_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        grads, losses = _private_gradient(net, x, y, config.max_grad_norm, config.noise_multiplier, noise_gen,
                                          recipe.label_smoothing)
        params = dict(net.named_parameters())
        # a surrogate whose gradient is the private gradient and whose value is the batch's mean CE, so the trainer's
        # optimiser, schedule, weight decay and loss log apply unchanged
        linear = sum((params[k] * grads[k]).sum() for k in names)
        return linear - linear.detach() + losses.mean().detach()

    recipe = dataclasses.replace(recipe, logit_anchor=0.0)  # an attack-side setting; DP trains on plain CE
    train_classifier(model, train, recipe, monitor=monitor, monitor_backdoor=monitor_backdoor,
                     device=resolve_device(device), progress=progress, batch_loss=dp_loss, checkpoint=checkpoint,
                     streams=(noise_gen,))
    return model.eval()
