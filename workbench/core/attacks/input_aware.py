"""Input-aware dynamic backdoor (IAB; [IAB]), the sample-specific attack of [BDMAE] Table 3.

Two small encoder-decoder generators make a trigger for each image: a mask generator m(x) (trained first, to make
sparse masks that differ between images) and a pattern generator g(x). The backdoored image is
B(x) = (1 - m(x)) x + m(x) g(x). The classifier and the pattern generator are trained together: in each batch a
fraction `p_attack` of images carries its own trigger and is relabelled to the target (backdoor mode), a fraction
`p_cross` carries the trigger of another image and keeps its label (cross-trigger mode, so a trigger only works on
the image it was made for), the rest are clean; diversity losses RMS(x - x') / RMS(g(x) - g(x')) keep triggers of
different images different (the original's L_div).

Hyper-parameters follow the original paper where it states them (p_attack = p_cross = 0.1, lambda_div = 1, mask
density 0.032, lambda_norm = 100); its 1000 training epochs are replaced by the workbench's recipe (a `TrainConfig`)
and the generators are smaller (width parameter): both named in the notebooks.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from workbench.core.artefacts import ArtefactStore, StaleArtefact, config_key, restore_state
from workbench.core.attacks.base import Attack
from workbench.core.classifier import input_shape_of, num_classes_of
from workbench.core.data import dataset_spec
from workbench.core.runtime import child_seed
from workbench.core.storage import load_checkpoint, save_checkpoint
from workbench.core.validation import (
    WorkbenchError,
    check_class,
    check_fraction,
    check_images,
    check_labels,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_tensor,
)


class TriggerGenerator(nn.Module):
    """Encoder-decoder (two down, two up stages) mapping an image to `out_channels` maps of the same size."""

    def __init__(self, channels: int, out_channels: int, width: int = 16) -> None:
        check_positive_int(channels, "channels")
        check_positive_int(out_channels, "out_channels")
        check_positive_int(width, "width")
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

        self.encoder = nn.Sequential(block(channels, width), nn.MaxPool2d(2), block(width, 2 * width),
                                     nn.MaxPool2d(2), block(2 * width, 2 * width))
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2), block(2 * width, width), nn.Upsample(scale_factor=2),
                                     block(width, width), nn.Conv2d(width, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _check_generator_input(generator: TriggerGenerator, x: torch.Tensor) -> None:
    """A non-empty image batch the generator takes: its channels, a side that is a multiple of 4 (two
    down-sampling stages), so the output has the images' size."""
    if not isinstance(generator, TriggerGenerator):
        raise WorkbenchError(f"generator must be a TriggerGenerator, got {type(generator).__name__}")
    check_images(x)
    channels = generator.encoder[0][0].in_channels
    if x.shape[1] != channels or x.shape[2] % 4 or x.shape[3] % 4 or not len(x):
        raise WorkbenchError(f"images must be a non-empty batch of {channels}-channel images (the generator's) "
                             f"whose height and width are multiples of 4, got shape {tuple(x.shape)}")


def _check_like(tensor: torch.Tensor, name: str, like: torch.Tensor, *, one_channel: bool = False) -> None:
    """`tensor` holds images in [0, 1] of the images `like`'s shape (or one channel if `one_channel`)."""
    check_images(tensor, name=name)
    channels = (1, like.shape[1]) if one_channel else (like.shape[1],)
    if len(tensor) != len(like) or tensor.shape[1] not in channels or tensor.shape[2:] != like.shape[2:]:
        raise WorkbenchError(f"{name} must match the images: shape {tuple(like.shape)}"
                             f"{' (or one channel)' if one_channel else ''}, got shape {tuple(tensor.shape)}")


def make_pattern(generator: TriggerGenerator, x: torch.Tensor) -> torch.Tensor:
    """g(x) in [0, 1]."""
    _check_generator_input(generator, x)
    return _make_pattern(generator, x)


def _make_pattern(generator: TriggerGenerator, x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(generator(x)) / 2 + 0.5


def make_mask(generator: TriggerGenerator, x: torch.Tensor) -> torch.Tensor:
    """m(x) in [0, 1], pushed towards 0/1 by the original's soft threshold tanh(20 (m - 0.5)) / 2 + 0.5."""
    _check_generator_input(generator, x)
    return _make_mask(generator, x)


def _make_mask(generator: TriggerGenerator, x: torch.Tensor) -> torch.Tensor:
    soft = torch.tanh(generator(x)) / 2 + 0.5
    return torch.tanh((soft - 0.5) * 20) / 2 + 0.5


def stamp(x: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """B(x) = (1 - m) x + m g.

    Args:
        x: images (N, C, H, W) in [0, 1]; pattern: g(x), of the same shape; mask: m(x), (N, 1 or C, H, W).
    """
    check_images(x)
    _check_like(pattern, "pattern", x)
    _check_like(mask, "mask", x, one_channel=True)
    return _stamp(x, pattern, mask)


def _stamp(x: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x * (1 - mask) + pattern * mask


def diversity_loss(x: torch.Tensor, x_other: torch.Tensor, out: torch.Tensor, out_other: torch.Tensor) -> torch.Tensor:
    """The original's L_div = mean over images of RMS(x - x') / RMS(G(x) - G(x')) (root-mean-square distances,
    as the original code computes them: the ratio is then independent of the number of channels).

    Args:
        x, x_other: two non-empty image batches of one shape; out, out_other: the generator's outputs for them
            (patterns or masks, one per image; any finite values).
    """
    check_images(x)
    if not len(x):
        raise WorkbenchError("images are empty: the loss is a mean over images")
    _check_like(x_other, "x_other", x)
    for name, given in (("out", out), ("out_other", out_other)):  # any finite outputs: the loss is a ratio
        check_tensor(given, f"{name} (one output per image)", shape=(len(x), None, None, None))
    if out.shape != out_other.shape:
        raise WorkbenchError(f"out and out_other must have one shape, got {tuple(out.shape)} and "
                             f"{tuple(out_other.shape)}")
    return _diversity_loss(x, x_other, out, out_other)


def _diversity_loss(x: torch.Tensor, x_other: torch.Tensor, out: torch.Tensor, out_other: torch.Tensor
                    ) -> torch.Tensor:
    inputs = (x - x_other).pow(2).flatten(1).mean(dim=1).sqrt()
    outputs = (out - out_other).pow(2).flatten(1).mean(dim=1).sqrt()
    return (inputs / (outputs + 1e-7)).mean()


def sparsity_loss(mask: torch.Tensor, density: float) -> torch.Tensor:
    """The original's mask-norm loss: mean(relu(m(x) - density)), element-wise, so every mask value above the
    density costs (not just a mean above it).

    Args:
        mask: a non-empty batch of masks in [0, 1] (any shape (N, C, H, W)); density: the level, in (0, 1].
    """
    check_images(mask, name="mask")
    if not mask.numel():
        raise WorkbenchError(f"mask is empty (shape {tuple(mask.shape)}): the loss is a mean over its values")
    check_fraction(density, "density")
    return _sparsity_loss(mask, density)


def _sparsity_loss(mask: torch.Tensor, density: float) -> torch.Tensor:
    return F.relu(mask - density).mean()


@dataclass(frozen=True)
class InputAwareConfig:
    """How to train an IAB-backdoored classifier.

    Args:
        train: the classifier's recipe (dataset, model, optimiser, epochs...); its `poison` must be None.
        target: the target class.
        p_attack, p_cross: fractions of each batch in backdoor and cross-trigger mode (original: 0.1, 0.1).
        lambda_div: weight of the diversity losses (original: 1).
        mask_density: the original's sparsity level: every mask value above it is penalised,
            lambda_norm mean(relu(m(x) - mask_density)) (original: 0.032, lambda_norm 100).
        mask_epochs: epochs of the mask generator's pre-training (original: 25; fewer at the workbench's scales).
        recipe_version: bumped when the training code changes what a config trains (2: element-wise sparsity
            penalty and RMS diversity, as the original code).
        generator_width: base width of both generators.
        generator_lr: Adam learning rate of the generators.
    """

    train: Any  # a TrainConfig (typed loosely: core.training imports this package)
    target: int = 0
    p_attack: float = 0.1
    p_cross: float = 0.1
    lambda_div: float = 1.0
    mask_density: float = 0.032
    lambda_norm: float = 100.0
    mask_epochs: int = 2
    generator_width: int = 16
    generator_lr: float = 1e-3
    recipe_version: int = 2

    def __post_init__(self) -> None:
        if self.train.poison is not None:
            raise WorkbenchError("IAB poisons on the fly: give a TrainConfig without `poison`")
        check_class(self.target, dataset_spec(self.train.dataset).num_classes, "target")
        check_fraction(self.p_attack, "p_attack")
        check_fraction(self.p_cross, "p_cross")
        check_fraction(self.mask_density, "mask_density")
        check_positive_int(self.mask_epochs, "mask_epochs")
        check_positive_int(self.generator_width, "generator_width")
        check_non_negative(self.lambda_div, "lambda_div", meaning_of_zero="0 turns the diversity loss off")
        check_non_negative(self.lambda_norm, "lambda_norm", meaning_of_zero="0 turns the sparsity loss off")
        check_positive(self.generator_lr, "generator_lr")
        check_positive_int(self.recipe_version, "recipe_version")
        if self.p_attack + self.p_cross >= 1:
            raise WorkbenchError("p_attack + p_cross must leave some clean images in each batch")

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["train"] = self.train.to_dict()
        return data

    @property
    def key(self) -> str:
        return config_key(self.to_dict())


@dataclasses.dataclass(frozen=True)
class InputAware(Attack):
    """The trigger of a trained IAB attack: B(x) with the generators stored under `artefact_key`.

    Build it with `workbench.core.training.get_or_train_input_aware`; applying it loads the generators from the
    artefact store (once).
    """

    family = "input_aware"
    artefact_key: str = ""
    channels: int = 3
    generator_width: int = 16

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        pattern_gen, mask_gen = _generators(self.artefact_key, self.channels, self.generator_width)
        with torch.no_grad():
            xd = x.to(next(pattern_gen.parameters()).device)
            return stamp(xd, make_pattern(pattern_gen, xd), make_mask(mask_gen, xd)).to(x.device)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """m(x), (N, 1, H, W): where each image's trigger is."""
        _, mask_gen = _generators(self.artefact_key, self.channels, self.generator_width)
        with torch.no_grad():
            return make_mask(mask_gen, x)


@functools.lru_cache(maxsize=8)
def _generators(key: str, channels: int, width: int) -> tuple[TriggerGenerator, TriggerGenerator]:
    found = ArtefactStore().load_by_key("iab", key)
    if found is None:
        raise WorkbenchError(f"IAB generators {key} are not trained here: run the notebook or "
                             "workbench.core.training.get_or_train_input_aware(config) for this attack first")
    pattern_gen, mask_gen = TriggerGenerator(channels, channels, width), TriggerGenerator(channels, 1, width)
    try:
        restore_state(pattern_gen, {k[8:]: v for k, v in found.tensors.items() if k.startswith("pattern.")},
                      "this IAB pattern generator")
        restore_state(mask_gen, {k[5:]: v for k, v in found.tensors.items() if k.startswith("mask.")},
                      "this IAB mask generator")
    except StaleArtefact as exc:
        raise WorkbenchError(f"IAB generators {key}: {exc}; retrain them with get_or_train_input_aware") from exc
    return pattern_gen.eval(), mask_gen.eval()


def train_generators_and_classifier(config: InputAwareConfig, classifier: nn.Module, train_images: torch.Tensor,
                                    train_labels: torch.Tensor, *, augment: Any, optimizer: torch.optim.Optimizer,
                                    lr_at: Any, device: torch.device, progress: bool = True,
                                    checkpoint: Path | None = None) -> tuple[TriggerGenerator, TriggerGenerator, list]:
    """The two training stages of IAB (see the module docstring). Returns (pattern gen, mask gen, history).

    Args:
        classifier: the model to backdoor (trained in place).
        train_images, train_labels: the clean training set (uint8 images).
        augment: callable(x float batch, generator) -> augmented batch.
        optimizer: the classifier's optimiser; lr_at: callable(progress in [0, 1]) -> learning rate.
        checkpoint: a file the loop saves its whole state to after every epoch of either stage (the three networks,
            the three optimisers, the random streams, the history) and resumes from when it exists, ending with the
            weights an uninterrupted run ends with.
    """
    if not isinstance(config, InputAwareConfig):
        raise WorkbenchError(f"config must be an InputAwareConfig, got {type(config).__name__}")
    channels, height, width = input_shape_of(classifier)
    if (not isinstance(train_images, torch.Tensor) or train_images.dtype != torch.uint8
            or tuple(train_images.shape[1:]) != (channels, height, width) or train_images.ndim != 4
            or not len(train_images)):
        raise WorkbenchError(f"train_images must be a non-empty uint8 tensor (N, {channels}, {height}, {width}) "
                             f"(a dataset's .images, the classifier's input shape), got "
                             f"{getattr(train_images, 'dtype', type(train_images).__name__)} of shape "
                             f"{tuple(getattr(train_images, 'shape', ()))}")
    classes = num_classes_of(classifier)
    check_labels(train_labels, len(train_images), classes, name="train_labels")
    check_class(config.target, classes, "config.target")
    recipe = config.train
    gen = torch.Generator().manual_seed(child_seed(recipe.seed, "iab_data_order"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(child_seed(recipe.seed, "iab_generators"))
        pattern_gen = TriggerGenerator(channels, channels, config.generator_width).to(device)
        mask_gen = TriggerGenerator(channels, 1, config.generator_width).to(device)
    n, batch = len(train_images), recipe.batch_size
    steps = max(1, n // batch)

    def batches() -> Any:
        order = torch.randperm(n, generator=gen)
        for b in range(steps):
            idx = order[b * batch:(b + 1) * batch]
            x = augment(train_images[idx].to(device).float() / 255, gen)
            other = augment(train_images[order[(b * batch + batch // 2 + torch.arange(len(idx))) % n]].to(device)
                            .float() / 255, gen)
            yield x, train_labels[idx].to(device), other

    mask_opt = torch.optim.Adam(mask_gen.parameters(), lr=config.generator_lr * 10, betas=(0.5, 0.9))
    pattern_opt = torch.optim.Adam(pattern_gen.parameters(), lr=config.generator_lr, betas=(0.5, 0.9))
    networks = {"classifier": classifier, "pattern_gen": pattern_gen, "mask_gen": mask_gen}
    optimisers = {"optimizer": optimizer, "pattern_opt": pattern_opt, "mask_opt": mask_opt}
    history, step, total, masks_done, joint_done = [], 0, steps * recipe.epochs, 0, 0
    if checkpoint is not None and checkpoint.is_file():
        state = load_checkpoint(checkpoint, config.to_dict(), gen, device)
        for name, part in {**networks, **optimisers}.items():
            part.load_state_dict(state[name])
        masks_done, joint_done, step, history = state["mask_epochs"], state["epochs"], state["step"], state["history"]

    def save() -> None:
        if checkpoint is not None:
            state = {name: part.state_dict() for name, part in {**networks, **optimisers}.items()}
            save_checkpoint(checkpoint, config.to_dict(), {**state, "mask_epochs": masks_done, "epochs": joint_done,
                                                           "step": step, "history": history}, gen, device)

    bar = tqdm(total=steps * (config.mask_epochs + recipe.epochs), initial=steps * (masks_done + joint_done),
               desc="IAB: mask generator, then joint training", disable=not progress, leave=False)
    for _ in range(masks_done, config.mask_epochs):  # stage 1: sparse, input-dependent masks
        for x, _, other in batches():
            m, m_other = _make_mask(mask_gen, x), _make_mask(mask_gen, other)
            loss = (config.lambda_norm * _sparsity_loss(m, config.mask_density)
                    + config.lambda_div * _diversity_loss(x, other, m, m_other))
            mask_opt.zero_grad(set_to_none=True)
            loss.backward()
            mask_opt.step()
            bar.update()
        masks_done += 1
        save()
    mask_gen.eval()
    for p in mask_gen.parameters():
        p.requires_grad_(False)

    classifier.train()
    for epoch in range(joint_done, recipe.epochs):  # stage 2: classifier and pattern generator together
        start, loss_sum = time.time(), 0.0
        for x, y, other in batches():
            n_bd, n_cross = int(config.p_attack * len(x)), int(config.p_cross * len(x))
            with torch.no_grad():
                masks, masks_other = _make_mask(mask_gen, x), _make_mask(mask_gen, other)
            patterns, patterns_other = _make_pattern(pattern_gen, x), _make_pattern(pattern_gen, other)
            inputs = torch.cat([_stamp(x[:n_bd], patterns[:n_bd], masks[:n_bd]),
                                _stamp(x[n_bd:n_bd + n_cross], patterns_other[n_bd:n_bd + n_cross],
                                      masks_other[n_bd:n_bd + n_cross]),
                                x[n_bd + n_cross:]])
            targets = torch.cat([torch.full_like(y[:n_bd], config.target), y[n_bd:]])
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step / total)
            ce = F.cross_entropy(classifier(inputs), targets, label_smoothing=recipe.label_smoothing)
            loss = ce + config.lambda_div * _diversity_loss(x, other, patterns, patterns_other)
            optimizer.zero_grad(set_to_none=True)
            pattern_opt.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            pattern_opt.step()
            loss_sum += ce.item()
            step += 1
            bar.update()
        history.append({"epoch": epoch + 1, "loss": loss_sum / steps, "seconds": time.time() - start})
        joint_done += 1
        save()
    bar.close()
    return pattern_gen.eval(), mask_gen, history
