"""Adversarial Neuron Pruning (ANP; [ANP]): learn a mask over the neurons (BatchNorm channels)
that keeps the clean holdout accuracy even under adversarial neuron perturbations, then prune the neurons whose mask
is small: backdoor neurons are the ones that make the model collapse to the target under such perturbations.

Neuron k of a BatchNorm2d layer, y_k = gamma_k * x_hat_k + beta_k, is masked and perturbed multiplicatively as in
the public code's `NoisyBatchNorm2d`:

    y_k = (m_k + delta_k) * gamma_k * x_hat_k + (1 + xi_k) * beta_k,    m_k in [0, 1],  delta_k, xi_k in [-eps, eps]

(the mask scales the weight only; without perturbation delta = xi = 0). The mask is optimised (ANP's objective and
Algorithm 1) on mini-batches of the clean holdout:

    min_m  alpha * L_nat(m) + (1 - alpha) * max_{delta, xi} L(m, delta, xi),

the inner max approximated per batch by a uniform random start in [-eps, eps] and `steps` signed-gradient ascent
steps of size eps / steps (FGSM-like; anp_steps = 1), clipped back to [-eps, eps] (the paper's budget; the public code
does not clip, so its single step can reach 2 eps: `clip_perturbation=False` reproduces that). The mask takes an SGD
step (lr 0.2, momentum 0.9) and is clipped to [0, 1]. The BatchNorm layers run in training mode (batch statistics) as
in the public code, on a scratch copy: the returned model is pruned from an untouched copy of the input.

Pruning (ANP's pruning by threshold): every neuron with mask value < `threshold` (0.2) gets its BatchNorm
weight set to 0 and, by default, its bias too (`zero_bias`, as this workbench's brief asks: the channel then outputs 0;
the public code zeroes the weight only, so the channel outputs the constant beta_k: `zero_bias=False`).

The masks and perturbations live in forward hooks on the model's own BatchNorm2d layers: given the layer's output y,
the hook returns (m + delta) * (y - beta) + (1 + xi) * beta, which equals the formula above, so the model class never
changes and the result is a plain `StagedClassifier` (state_dict loadable into `new_model(config)`).

Defaults: eps 0.4, alpha 0.2, mask lr 0.2 (constant), momentum 0.9, batch 128, 2000 iterations (the ANP paper's
experimental setup and public `optimize_mask_cifar.py`; [T&R] App. B.2 tuned alpha over {0.1, 0.2, 0.4, 0.5, 0.6} and
used 0.2 on CIFAR-10, 0.1 on GTSRB); pruning threshold 0.2 (this workbench's brief, in line with ANP's pruning by
threshold; the public `prune_neuron_cifar.py` sweeps thresholds 0 to 0.9 and prunes mask <= threshold, we prune
mask < threshold).
Batches are drawn uniformly with replacement (the public code's `RandomSampler(replacement=True)`) with random crop +
flip (the public code's `transform_train` on its clean validation split).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from workbench.core.data import ImageDataset
from workbench.core.models import StagedClassifier
from workbench.core.runtime import child_seed, make_generator, resolve_device
from workbench.core.training import augment_batch
from workbench.core.validation import (
    WorkbenchError,
    check_fraction,
    check_name,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_seed,
)
from workbench.defenses.baselines.finetune import check_defence_inputs


@dataclass(frozen=True)
class ANPConfig:
    """Mask optimisation and pruning (defaults: ANP paper / public code on CIFAR-10, alpha as [T&R] App. B.2).

    Args:
        eps: perturbation budget of delta and xi (0.4). 0 = no perturbation (the mask then sees L_nat only).
        steps: signed-gradient ascent steps per batch for the perturbation (1), each of size eps / steps.
        alpha: weight of the natural loss; 1 - alpha weighs the perturbed loss (0.2: ANP, T&R CIFAR-10; 0.1 GTSRB).
        mask_lr, mask_momentum: SGD on the masks (0.2, 0.9; constant lr).
        iterations, batch_size: mask updates and their batch size (2000, 128), batches drawn with replacement.
        threshold: prune neurons whose mask value is below this (0.2).
        augment: "crop_flip", "crop" or "none" augmentation of the holdout batches.
        clip_perturbation: keep delta and xi in [-eps, eps] after the ascent step (paper; False = public code).
        zero_bias: pruning also zeroes the BatchNorm bias (True; the public code keeps it: False).
        seed: seed of the batches, augmentation and random starts.
    """

    eps: float = 0.4
    steps: int = 1
    alpha: float = 0.2
    mask_lr: float = 0.2
    mask_momentum: float = 0.9
    iterations: int = 2000
    batch_size: int = 128
    threshold: float = 0.2
    augment: str = "crop_flip"
    clip_perturbation: bool = True
    zero_bias: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_non_negative(self.eps, "ANPConfig.eps")
        check_positive_int(self.steps, "ANPConfig.steps")
        check_fraction(self.alpha, "ANPConfig.alpha", allow_zero=True)
        check_positive(self.mask_lr, "ANPConfig.mask_lr")
        check_fraction(self.mask_momentum, "ANPConfig.mask_momentum", allow_zero=True, allow_one=False)
        check_positive_int(self.iterations, "ANPConfig.iterations")
        check_positive_int(self.batch_size, "ANPConfig.batch_size")
        check_fraction(self.threshold, "ANPConfig.threshold", allow_zero=True)
        check_name("augmentation", self.augment, ("crop_flip", "crop", "none"))
        for name in ("clip_perturbation", "zero_bias"):
            if not isinstance(getattr(self, name), bool):
                raise WorkbenchError(f"ANPConfig.{name} must be True or False, got {getattr(self, name)!r}")
        check_seed(self.seed, "ANPConfig.seed")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ANPConfig:
        return cls(**data)


def neuron_layers(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """The BatchNorm2d layers with affine parameters, by module name: ANP's neurons are their channels."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.BatchNorm2d) and module.weight is not None and module.bias is not None}


class NeuronPerturbation:
    """Masks m and perturbations (delta, xi) of every BatchNorm2d channel of `model`, applied by forward hooks.

    Each hook turns the layer's output y (N, C, H, W) into (m + delta) * (y - beta) + (1 + xi) * beta per channel
    (delta = xi = 0 unless `perturbed`). With m = 1 and no perturbation the model is unchanged. Call `remove()` (or
    use it as a context manager) to take the hooks off.

    Attributes:
        masks, delta, xi: dict layer name -> (C,) tensors on the layers' device; the masks require grad.
        perturbed: whether the hooks add delta and xi.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = neuron_layers(model)
        if not self.layers:
            raise WorkbenchError("ANP prunes BatchNorm2d channels and this model has none (e.g. lenet5); use a model "
                                 "with BatchNorm: resnet_small, resnet18 or wrn16_1")
        self.masks: dict[str, torch.Tensor] = {}
        self.delta: dict[str, torch.Tensor] = {}
        self.xi: dict[str, torch.Tensor] = {}
        for name, layer in self.layers.items():
            ones = torch.ones_like(layer.weight, requires_grad=False)
            self.masks[name] = ones.clone().requires_grad_(True)
            self.delta[name] = torch.zeros_like(ones)
            self.xi[name] = torch.zeros_like(ones)
        self.perturbed = False
        self._handles = [layer.register_forward_hook(partial(self._hook, name)) for name, layer in self.layers.items()]

    def _hook(self, name: str, layer: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...],
              output: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (output.ndim - 2)
        beta = layer.bias.view(shape)
        if not self.perturbed:
            return self.masks[name].view(shape) * (output - beta) + beta
        scale, shift = self.masks[name] + self.delta[name], 1 + self.xi[name]
        return scale.view(shape) * (output - beta) + shift.view(shape) * beta

    def perturbations(self) -> list[torch.Tensor]:
        return [*self.delta.values(), *self.xi.values()]

    def random_start(self, eps: float, gen: torch.Generator) -> None:
        """delta, xi ~ U(-eps, eps) independently per channel ([ANP] Alg. 1's random initialisation)."""
        for tensor in self.perturbations():
            draw = torch.rand(tensor.shape, generator=gen).to(tensor.device)
            tensor.copy_((2 * draw - 1) * eps)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> NeuronPerturbation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def anp_masks(model: StagedClassifier, holdout: ImageDataset, config: ANPConfig = ANPConfig(), *,
              device: str = "auto", progress: bool = True) -> dict[str, torch.Tensor]:
    """Optimise ANP's neuron masks on the clean `holdout` (the model is not modified).

    Returns:
        dict BatchNorm2d module name (as in `model.named_modules()`) -> (C,) mask values in [0, 1], on the CPU.
    """
    check_defence_inputs(model, holdout)
    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(child_seed(config.seed, "global_rng"))  # dropout draws (if switched on) repeat too
        return _optimise_masks(model, holdout, config, dev, progress)


def _optimise_masks(model: StagedClassifier, holdout: ImageDataset, config: ANPConfig, dev: torch.device,
                    progress: bool) -> dict[str, torch.Tensor]:
    scratch = copy.deepcopy(model).to(dev).requires_grad_(False).train()  # batch statistics, as the public code
    gen = make_generator(config.seed)
    with NeuronPerturbation(scratch) as neurons:
        masks = list(neurons.masks.values())
        optimiser = torch.optim.SGD(masks, lr=config.mask_lr, momentum=config.mask_momentum)
        step = config.eps / config.steps
        for _ in tqdm(range(config.iterations), desc="ANP masks", disable=not progress, leave=False):
            idx = torch.randint(len(holdout), (config.batch_size,), generator=gen)
            x = augment_batch(holdout.images[idx].to(dev).float().div_(255), config.augment, gen)
            y = holdout.labels[idx].to(dev)
            loss_rob = torch.zeros((), device=dev)
            if config.eps > 0:
                # inner max: random start, then signed ascent steps on the perturbed loss (masks held fixed)
                neurons.random_start(config.eps, gen)
                neurons.perturbed = True
                for _ in range(config.steps):
                    noise = [t.requires_grad_(True) for t in neurons.perturbations()]
                    grads = torch.autograd.grad(F.cross_entropy(scratch(x), y), noise)
                    with torch.no_grad():
                        for tensor, grad in zip(noise, grads, strict=True):
                            tensor.requires_grad_(False).add_(step * grad.sign())
                            if config.clip_perturbation:
                                tensor.clamp_(-config.eps, config.eps)
                loss_rob = F.cross_entropy(scratch(x), y)  # perturbation fixed: gradients flow to the masks only
            neurons.perturbed = False
            loss_nat = F.cross_entropy(scratch(x), y)
            loss = config.alpha * loss_nat + (1 - config.alpha) * loss_rob
            optimiser.zero_grad(set_to_none=True)
            loss.backward(inputs=masks)
            optimiser.step()
            with torch.no_grad():
                for mask in masks:
                    mask.clamp_(0.0, 1.0)
        return {name: mask.detach().cpu().clone() for name, mask in neurons.masks.items()}


def _pruned_neurons(masks: dict[str, torch.Tensor], threshold: float) -> dict[str, torch.Tensor]:
    """Channel indices (1-D long tensors) whose mask value is strictly below `threshold`, per layer."""
    return {name: (values < threshold).nonzero().flatten() for name, values in masks.items()}


def prune_neurons(model: StagedClassifier, masks: dict[str, torch.Tensor], threshold: float = 0.2, *,
                  zero_bias: bool = True) -> StagedClassifier:
    """A copy of `model` with every BatchNorm2d channel whose mask value is < `threshold` pruned: its weight (and,
    with `zero_bias`, its bias) set to 0. Running statistics and all other parameters are kept. Eval mode."""
    check_fraction(threshold, "threshold", allow_zero=True)
    pruned = copy.deepcopy(model)
    layers = neuron_layers(pruned)
    for name, values in masks.items():
        if name not in layers:
            raise WorkbenchError(f"mask for {name!r}, which is not a BatchNorm2d layer of this model; the masks must "
                                 f"come from anp_masks on the same architecture (layers: {', '.join(layers)})")
        if values.shape != layers[name].weight.shape:
            raise WorkbenchError(f"mask for {name!r} has shape {tuple(values.shape)} but the layer has "
                                 f"{layers[name].num_features} channels")
        if not bool(torch.isfinite(values).all()):  # a NaN mask value would silently keep its channel
            raise WorkbenchError(f"mask for {name!r} contains NaN or infinite values; the masks must come from "
                                 "anp_masks")
    with torch.no_grad():
        for name, idx in _pruned_neurons(masks, threshold).items():
            layers[name].weight[idx.to(layers[name].weight.device)] = 0.0
            if zero_bias:
                layers[name].bias[idx.to(layers[name].bias.device)] = 0.0
    return pruned.eval()


@dataclass
class ANPResult:
    """The pruned model with the learned masks and the pruned channels.

    Attributes:
        model: the pruned copy of the input model (eval mode).
        masks: BatchNorm2d module name -> (C,) mask values in [0, 1].
        pruned: module name -> indices of the pruned channels (mask < config.threshold).
        config: the settings used.
    """

    model: StagedClassifier
    masks: dict[str, torch.Tensor]
    pruned: dict[str, torch.Tensor]
    config: ANPConfig = field(default_factory=ANPConfig)

    @property
    def neuron_count(self) -> int:
        return sum(int(v.numel()) for v in self.masks.values())

    @property
    def pruned_count(self) -> int:
        return sum(int(v.numel()) for v in self.pruned.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: config, neuron counts and the pruned channels per layer."""
        return {"config": self.config.to_dict(), "neurons": self.neuron_count, "pruned": self.pruned_count,
                "pruned_fraction": self.pruned_count / max(1, self.neuron_count),
                "pruned_channels": {k: v.tolist() for k, v in self.pruned.items() if v.numel()}}


def anp_with_masks(model: StagedClassifier, holdout: ImageDataset, config: ANPConfig = ANPConfig(), *,
                   device: str = "auto", progress: bool = True) -> ANPResult:
    """ANP (mask optimisation, then pruning by threshold), returning the pruned model with its masks."""
    masks = anp_masks(model, holdout, config, device=device, progress=progress)
    pruned = prune_neurons(model, masks, config.threshold, zero_bias=config.zero_bias)
    return ANPResult(pruned.to(resolve_device(device)), masks, _pruned_neurons(masks, config.threshold), config)


def anp(model: StagedClassifier, holdout: ImageDataset, config: ANPConfig = ANPConfig(), *, device: str = "auto",
        progress: bool = True) -> StagedClassifier:
    """Adversarial Neuron Pruning of a copy of `model` on the clean `holdout`.

    Args:
        model: the (backdoored) classifier with BatchNorm2d layers; it is not modified.
        holdout: clean labelled images (uint8 (N, C, H, W) of the model's input shape).
        config: mask optimisation and pruning settings.
        device: where to optimise ("auto" = GPU if available).
        progress: show a tqdm bar.

    Returns:
        The pruned copy, in eval mode, on `device` (`anp_with_masks` also returns the masks).
    """
    return anp_with_masks(model, holdout, config, device=device, progress=progress).model
