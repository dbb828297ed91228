"""Trap and Replace (T&R; [T&R]): bait the backdoor into a small classification head, then
replace that head using a small clean holdout.

Stage 1 (Sec. 3.2, Eq. 1; Alg. 1 lines 1-3): split a classifier into a stem f_s and a light head f_c at a
named module (`TrapNet`: a workbench stage or any module of any classifier), add a reconstruction head f_r on the
stem's features and train all three end to end on the (possibly poisoned) training set with

    L = CE(f_c(f_s(x)), y) + lambda1 MSE(f_r(f_s(x)), x) + lambda2 TV(f_r(f_s(x))).

Eq. 1 as printed weights the TV term by lambda1 lambda2; the public code weights it by lambda2 alone and uses the
mean squared error for the "l2 loss". We follow the code and name it here
(docs/implementation.md#trap-and-replace-training).
lambda1 = 10, lambda2 = 0.1 (App. B.2); TV = (sum of squared vertical and horizontal neighbour differences) /
tensor size. lambda1 = 0 is ordinary training (the "no reconstruction" ablation of Table 4, and "No defense").

Stage 2 (Eq. 2; Alg. 1 lines 4-6): discard f_r, re-initialise f_c, freeze f_s (BatchNorm statistics included)
and train f_c on the clean holdout with dropout 0.5, label smoothing 0.1 and CutMix (beta 1, as in the public
code), with the stage-1 optimiser settings and batch size 32 (App. B.2).

`get_or_trap` / `get_or_replace` cache both stages of the reproduction's models in the artefact store by their
configs and the exact data they saw; `train_trap` / `replace_head` run them on any classifier and data.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.core.artefacts import Artefact, ArtefactStore, config_key, get_or_compute, restore_state
from workbench.core.classifier import (
    FrozenStem,
    capture,
    check_model_images,
    head_modules,
    input_shape_of,
    num_classes_of,
    resolve_split,
)
from workbench.core.data import DataSplits, ImageDataset, stratified_subset
from workbench.core.models import StagedClassifier, set_dropout
from workbench.core.runtime import child_seed, make_generator, resolve_device
from workbench.core.training import (
    TrainConfig,
    TrainedModel,
    TrainingSummary,
    artefact_address,
    artefact_identity,
    check_training_images,
    get_or_train,
    new_model,
    prepare_training_data,
    test_metrics,
    train_classifier,
)
from workbench.core.validation import (
    WorkbenchError,
    check_class,
    check_fraction,
    check_images,
    check_labels,
    check_name,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_seed,
    check_tensor,
)

TRAP_KIND, REPLACE_KIND = "trap", "replaced"
#: the three sample groups of Fig. 2
GROUPS = ("clean target", "clean source", "poisoned source")


# --- configs --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrapConfig:
    """Stage 1: the training recipe (data, poison, model, optimiser) plus the reconstruction task of Eq. 1.

    Args:
        train: what is trained and how; `train.label_smoothing` applies to the CE term.
        rec_weight: lambda1, weight of the reconstruction MSE (10 in the paper; 0 = ordinary training).
        tv_weight: lambda2, weight of the total variation of the reconstruction (0.1 in the paper).
        split: the stage where the classification head starts (None = the model's default: for WRN-16-1 the
            last block + BN + pool + FC, the paper's "last two conv layers + FC"; Table 5 varies it).
    """

    train: TrainConfig
    rec_weight: float = 10.0
    tv_weight: float = 0.1
    split: str | None = None

    def __post_init__(self) -> None:
        for name in ("rec_weight", "tv_weight"):
            check_non_negative(getattr(self, name), f"TrapConfig.{name}")
        if self.split is not None:
            check_name("split point", self.split, new_model(self.train).split_points)

    @property
    def reconstructs(self) -> bool:
        """False for lambda1 = 0: stage 1 is then ordinary training and shares its artefact with it."""
        return self.rec_weight > 0

    def split_point(self) -> str:
        return self.split if self.split is not None else new_model(self.train).default_split

    def to_dict(self) -> dict[str, Any]:
        return {"train": self.train.to_dict(), "rec_weight": self.rec_weight, "tv_weight": self.tv_weight,
                "split": self.split_point()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrapConfig:
        return cls(TrainConfig.from_dict(data["train"]), data["rec_weight"], data["tv_weight"], data["split"])


@dataclass(frozen=True)
class ReplaceConfig:
    """Stage 2: retraining a fresh head on the clean holdout (Eq. 2, App. B.2).

    Args:
        epochs, batch_size, optimizer, lr, weight_decay, schedule: the stage-1 optimiser settings except a batch
            of 32 (App. B.2: Adam 1e-3, weight decay 5e-4, cosine).
        label_smoothing: 0.1 (Sec. 3.2).
        dropout: probability of the head's dropout layers (0.5, Sec. 3.2).
        cutmix_beta: CutMix's Beta(beta, beta) mixing prior (1 in the public code; 0 = no CutMix).
        augment: crop/flip augmentation of the holdout images.
        holdout_size: use a seeded class-stratified subset of this many holdout images (Table 9); None = all.
        seed: seed of the head's initialisation, the data order, augmentation and CutMix.
    """

    epochs: int = 100
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    label_smoothing: float = 0.1
    dropout: float = 0.5
    cutmix_beta: float = 1.0
    augment: str = "crop_flip"
    holdout_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int(self.holdout_size, "holdout_size", optional=True)
        check_fraction(self.dropout, "ReplaceConfig.dropout", allow_zero=True, allow_one=False)
        check_non_negative(self.cutmix_beta, "ReplaceConfig.cutmix_beta", meaning_of_zero="0 = no CutMix")
        check_seed(self.seed, "ReplaceConfig.seed")
        self.recipe(TrainConfig(dataset="cifar10", model="lenet5"))  # validates the optimiser fields

    def recipe(self, base: TrainConfig) -> TrainConfig:
        """The optimisation settings as a clean `TrainConfig` on `base`'s dataset and model."""
        return dataclasses.replace(base, poison=None, all_classes_poison=None, logit_anchor=0.0,
                                   epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer,
                                   lr=self.lr, weight_decay=self.weight_decay, schedule=self.schedule,
                                   label_smoothing=self.label_smoothing, augment=self.augment, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- stage 1 --------------------------------------------------------------------------------------------------------

def _reconstruction_head(features: tuple[int, int, int], image: tuple[int, int, int]) -> nn.Sequential:
    """f_r: stride-2 transposed convolutions (kernel 4, padding 1) from the stem's (C_h, H_h, W_h) features up to
    the (C, H, W) image, halving the channels at each step, ReLU between and a sigmoid at the end (the public code's
    head for the default WRN-16-1 split: 64 -> 32 -> 3 channels, 8 -> 16 -> 32 px). When H / H_h is not a power
    of two (LeNet on 28 px) the last map is resized bilinearly to H x W; with no downsampling a 3x3 conv maps the
    channels."""
    c_h, h_h, w_h = features
    channels, height, width = image
    if h_h > height or w_h > width:
        raise WorkbenchError(f"stem features {h_h}x{w_h} are larger than the {height}x{width} image")
    steps = max(0, math.ceil(math.log2(height / h_h) - 1e-9))
    layers: list[nn.Module] = []
    cin = c_h
    for step in range(steps):
        cout = channels if step == steps - 1 else max(channels, cin // 2)
        layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.ReLU()]
        cin = cout
    if steps == 0:
        layers += [nn.Conv2d(cin, channels, 3, padding=1), nn.ReLU()]
    layers[-1] = nn.Sigmoid()
    if (h_h << steps, w_h << steps) != (height, width):
        layers.append(nn.Upsample(size=(height, width), mode="bilinear", align_corners=False))
    return nn.Sequential(*layers)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """TV of a batch (N, C, H, W): (sum of squared vertical + horizontal neighbour differences) / x.numel()."""
    check_tensor(x, "x", ndim=4, nonempty=True)
    return _total_variation(x)


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    vertical = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).sum()
    horizontal = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).sum()
    return (vertical + horizontal) / x.numel()


def trap_objective(logits: torch.Tensor, reconstruction: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *,
                   rec_weight: float, tv_weight: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Eq. 1 per batch, in the public code's weighting: CE + lambda1 MSE(x_hat, x) + lambda2 TV(x_hat)."""
    check_images(x, name="x")
    if len(x) == 0:
        raise WorkbenchError("x is empty: the objective is a mean over at least one image")
    check_tensor(logits, "logits", shape=(len(x), None))  # one row per image of x
    check_tensor(reconstruction, "reconstruction", ndim=4)
    if reconstruction.shape != x.shape:
        raise WorkbenchError(f"reconstruction and x must have the same shape, got {tuple(reconstruction.shape)} and "
                             f"{tuple(x.shape)}")
    check_labels(y, len(x), logits.shape[1], name="y")
    check_non_negative(rec_weight, "rec_weight")
    check_non_negative(tv_weight, "tv_weight")
    check_fraction(label_smoothing, "label_smoothing", allow_zero=True, allow_one=False)
    return _trap_objective(logits, reconstruction, x, y, rec_weight=rec_weight, tv_weight=tv_weight,
                           label_smoothing=label_smoothing)


def _trap_objective(logits: torch.Tensor, reconstruction: torch.Tensor, x: torch.Tensor, y: torch.Tensor, *,
                    rec_weight: float, tv_weight: float, label_smoothing: float) -> torch.Tensor:
    ce = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    return ce + rec_weight * F.mse_loss(reconstruction, x) + tv_weight * _total_variation(reconstruction)


class TrapNet(nn.Module):
    """A classifier split into stem and head at `split`, with a reconstruction head on the stem (Fig. 1, stage 1).

    The classifier is any `nn.Module` on [0, 1] images: a workbench model (split points are its stage names) or a
    wrapped one (`workbench.wrap`; any module name, e.g. torchvision's "layer4"). The stem's features f_s(x) are the
    input of the split module, read during the classifier's own forward pass (`capture`), so the classifier runs
    exactly as it does alone. `forward` returns its logits (metrics and query wrappers see a plain classifier);
    `forward_both` also returns the reconstruction. `reconstruction` is None for a model trained without it.
    """

    def __init__(self, classifier: nn.Module, split: str, reconstruction: nn.Module | None) -> None:
        super().__init__()
        self.classifier = classifier
        self.split = split
        self.reconstruction = reconstruction
        head_modules(classifier, split)  # a clear error now for a split point the classifier does not have

    @classmethod
    def build(cls, classifier: nn.Module, split: str | None = None) -> TrapNet:
        """A TrapNet with a fresh reconstruction head sized from a probe of the stem (`split` defaults to a
        workbench model's `default_split`)."""
        split = resolve_split(classifier, split)
        shape = input_shape_of(classifier)
        device = next(classifier.parameters()).device
        was_training = classifier.training
        with torch.no_grad(), capture(classifier, split) as features:
            classifier.eval()(torch.zeros(1, *shape, device=device))
        classifier.train(was_training)
        if features[0].ndim != 4:
            raise WorkbenchError(f"the stem up to {split!r} gives {tuple(features[0].shape[1:])} features; a "
                                 "reconstruction head needs a spatial (C, H, W) map: split at an earlier stage")
        return cls(classifier, split, _reconstruction_head(tuple(features[0].shape[1:]), shape).to(device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reconstruction is None:
            raise WorkbenchError("this model was trained without a reconstruction head (rec_weight = 0)")
        with capture(self.classifier, self.split) as features:
            logits = self.classifier(x)
        return logits, self.reconstruction(features[0])


def train_trap(net: TrapNet, train: ImageDataset, recipe: TrainConfig, *, rec_weight: float = 10.0,
               tv_weight: float = 0.1, monitor: tuple[torch.Tensor, torch.Tensor] | None = None,
               monitor_backdoor: tuple[torch.Tensor, int] | None = None, device: str = "auto",
               progress: bool = True, poisoned: torch.Tensor | None = None,
               checkpoint: Path | None = None) -> list[dict[str, float]]:
    """Stage 1 in place (Eq. 1; Alg. 1 lines 1-3): train classifier and reconstruction head of `net` end to end on
    the (possibly poisoned) `train` set with CE + `rec_weight` MSE + `tv_weight` TV, with the optimiser, schedule,
    augmentation, label smoothing and seed of `recipe` (its model / dataset names only label the progress bar).

    `poisoned` ((N,) bool, the triggered images of `train`) is needed when the recipe's poison carries a latent
    injection (LBA, [T&R] App. C.1: the adaptive attacker adds its term to this training too).

    Returns the per-epoch training history (`train_classifier`'s; `checkpoint` as there: resumable epochs).
    """
    for name, value in (("rec_weight", rec_weight), ("tv_weight", tv_weight)):
        check_non_negative(value, name, meaning_of_zero="0 switches the term off")
    if net.reconstruction is None:
        raise WorkbenchError("net has no reconstruction head: build it with TrapNet.build(classifier, split)")

    def joint_loss(model: TrapNet, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        logits, reconstruction = model.forward_both(x)
        return _trap_objective(logits, reconstruction, x, y, rec_weight=rec_weight, tv_weight=tv_weight,
                               label_smoothing=recipe.label_smoothing)

    return train_classifier(net, train, recipe, monitor=monitor, monitor_backdoor=monitor_backdoor, device=device,
                            progress=progress, batch_loss=joint_loss, poisoned=poisoned, classifier=net.classifier,
                            checkpoint=checkpoint)


@dataclass
class TrappedModel:
    """The stage-1 model: `net.classifier` still carries the (possibly backdoored) trap head."""

    net: TrapNet
    config: TrapConfig
    key: str
    metrics: dict[str, Any]  # as stored; read them typed through `summary`
    path: str
    loaded: bool

    @property
    def model(self) -> StagedClassifier:
        return self.net.classifier

    @property
    def summary(self) -> TrainingSummary:
        return TrainingSummary.of(self.metrics)


def trap_address(config: TrapConfig, splits: DataSplits | None = None) -> tuple[str, str, dict[str, Any]]:
    """(artefact kind, key, identity) of a stage-1 model with a reconstruction head: its config and the exact
    training images (lambda1 = 0 models are ordinary `get_or_train` artefacts, see `artefact_address`)."""
    if not config.reconstructs:
        return artefact_address(config.train, splits)
    splits = splits or config.train.splits()
    identity = {"trap_config": config.to_dict(),
                "train_data_sha256": artefact_identity(config.train, splits)["train_data_sha256"]}
    return TRAP_KIND, config_key(identity), identity


def get_or_trap(config: TrapConfig, *, store: ArtefactStore | None = None, device: str = "auto",
                progress: bool = True, monitor_size: int = 1000) -> TrappedModel:
    """Load or run stage 1 (Eq. 1). With lambda1 = 0 this is `get_or_train(config.train)` (ordinary training).

    Metrics: the `get_or_train` ones (test CA / ASR of the trap head: Table 4's "no replacement" row) and, with a
    reconstruction head, the reconstruction MSE on clean test images (Table 8).
    """
    check_positive_int(monitor_size, "monitor_size")
    store = store or ArtefactStore()
    split = config.split_point()
    if not config.reconstructs:
        plain = get_or_train(config.train, store=store, device=device, progress=progress, monitor_size=monitor_size)
        return TrappedModel(TrapNet(plain.model, split, None), config, plain.key, plain.metrics, plain.path,
                            plain.loaded)
    dev = resolve_device(device)
    splits = config.train.splits()
    kind, key, identity = trap_address(config, splits)
    with torch.random.fork_rng(devices=[]):  # the reconstruction head's initialisation, from the seed
        torch.manual_seed(child_seed(config.train.seed, "head_initialisation"))
        net = TrapNet.build(new_model(config.train), split)

    def restore(found: Artefact) -> TrapNet:
        return restore_state(net, found.tensors, "the current stage-1 network")

    def train() -> tuple[TrapNet, dict[str, torch.Tensor], dict[str, Any]]:
        data = prepare_training_data(config.train, splits, store=store, device=device, progress=progress,
                                     monitor_size=monitor_size)
        start = time.time()
        history = train_trap(net, data.train, config.train, rec_weight=config.rec_weight,
                             tv_weight=config.tv_weight, monitor=data.monitor, monitor_backdoor=data.monitor_backdoor,
                             device=device, progress=progress, poisoned=data.poisoned_mask(),
                             checkpoint=store.checkpoint(kind, key))
        net.eval()
        metrics = {**data.describe(history, time.time() - start, dev), **test_metrics(net, config.train, splits),
                   "test_rec_mse": _reconstruction_error(net, splits.test.float_images())}
        return net, net.state_dict(), metrics

    net, artefact, loaded = get_or_compute(store, kind, key, identity, compute=train, restore=restore)
    return TrappedModel(net.to(dev).eval(), config, key, artefact.metrics, str(artefact.path), loaded=loaded)


@torch.no_grad()
def _reconstruction_error(net: TrapNet, images: torch.Tensor, batch_size: int = 500) -> float:
    """Mean squared error of f_r(f_s(x)) against x over `images` (N, C, H, W) in [0, 1] (Table 8's MSE)."""
    check_model_images(net.classifier, images)
    net.eval()
    device = next(net.parameters()).device
    total = sum(F.mse_loss(net.forward_both(batch.to(device))[1], batch.to(device), reduction="sum").item()
                for batch in images.split(batch_size))
    return total / images.numel()


# --- stage 2 --------------------------------------------------------------------------------------------------------

def cutmix(x: torch.Tensor, y: torch.Tensor, beta: float, gen: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """CutMix ([CutMix]): paste a random box of a shuffled batch into each image.

    lam ~ Beta(beta, beta); the box has area (1 - lam) of the image, centred uniformly and clipped at the border;
    lam is then set to the kept fraction. Returns (mixed images, labels of the pasted images, lam).
    """
    # any values: CutMix only moves pixels (the training loop gives it [0, 1] images)
    check_tensor(x, "x", ndim=4, nonempty=True)
    check_labels(y, len(x), name="y")
    check_positive(beta, "beta")
    return _cutmix(x, y, beta, gen)


def _cutmix(x: torch.Tensor, y: torch.Tensor, beta: float, gen: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor, float]:
    n, _, height, width = x.shape
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen)))
    lam = float(rng.beta(beta, beta))
    perm = torch.randperm(n, generator=gen).to(x.device)
    cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    mixed = x.clone()
    mixed[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
    return mixed, y[perm], 1 - (bottom - top) * (right - left) / (height * width)


def replace_head(classifier: nn.Module, holdout: ImageDataset, config: ReplaceConfig, base: TrainConfig,
                 split: str, *, monitor: tuple[torch.Tensor, torch.Tensor] | None = None, device: str = "auto",
                 progress: bool = True, checkpoint: Path | None = None) -> list[dict[str, float]]:
    """Stage 2 in place (Eq. 2; Alg. 1 lines 5-6): re-initialise the head of `classifier` from split point `split`
    on (`head_modules`: a workbench stage name, or any module name of a wrapped model such as torchvision's
    "layer4") from `config.seed`, switch on its dropout, and train it on the clean `holdout` with the stem frozen.
    `base` carries the optimiser's dataset / model labels (`config.recipe`).

    Returns the per-epoch training history (`checkpoint` as in `train_classifier`: resumable epochs).
    """
    head = head_modules(classifier, split)
    check_training_images(holdout, classifier, "holdout")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for layer in (sub for module in head for sub in module.modules()):
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()  # BatchNorm also resets its running statistics
    for module in head:
        set_dropout(module, config.dropout)
    recipe = config.recipe(base)

    def mixed_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if config.cutmix_beta == 0:
            return F.cross_entropy(model(x), y, label_smoothing=config.label_smoothing)
        mixed, pasted, lam = _cutmix(x, y, config.cutmix_beta, gen)
        logits = model(mixed)
        return (lam * F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                + (1 - lam) * F.cross_entropy(logits, pasted, label_smoothing=config.label_smoothing))

    frozen = FrozenStem(classifier, head)
    try:
        history = train_classifier(frozen, holdout, recipe, monitor=monitor, device=device, progress=progress,
                                   batch_loss=mixed_loss, checkpoint=checkpoint)
    finally:
        frozen.release()
    for module in head:
        set_dropout(module, 0.0)  # the replaced model is a plain classifier again (dropout acts only in training)
    classifier.eval()
    return history


def holdout_for(config: ReplaceConfig, base: TrainConfig) -> ImageDataset:
    """The clean holdout of `base`'s splits, or its seeded stratified subset of `config.holdout_size` images."""
    holdout = base.splits().holdout
    if config.holdout_size is None:
        return holdout
    if config.holdout_size > len(holdout):
        raise WorkbenchError(f"holdout_size {config.holdout_size} exceeds the {len(holdout)} holdout images; raise "
                             "the training config's holdout_fraction or ask for fewer")
    return holdout.subset(stratified_subset(holdout.labels, config.holdout_size, make_generator(config.seed)))


def replace_address(trap: TrapConfig, trap_key: str, config: ReplaceConfig) -> tuple[str, str, dict[str, Any]]:
    """(artefact kind, key, identity) of stage 2 with `config` on the stage-1 artefact `trap_key` trained with `trap`:
    the config, that artefact, the split point and the exact holdout images (`get_or_replace`'s key)."""
    return _replace_inputs(trap, trap_key, config)[2]


def _replace_inputs(trap: TrapConfig, trap_key: str,
                    config: ReplaceConfig) -> tuple[ReplaceConfig, ImageDataset, tuple[str, str, dict[str, Any]]]:
    if config.holdout_size == len(trap.train.splits().holdout):  # all of it is the default run: one artefact
        config = dataclasses.replace(config, holdout_size=None)
    holdout = holdout_for(config, trap.train)
    identity = {"replace_config": config.to_dict(), "trapped_key": trap_key, "split": trap.split_point(),
                "holdout_sha256": holdout.fingerprint()}
    return config, holdout, (REPLACE_KIND, config_key(identity), identity)


def get_or_replace(trapped: TrappedModel, config: ReplaceConfig, *, store: ArtefactStore | None = None,
                   device: str = "auto", progress: bool = True, monitor_size: int = 1000) -> TrainedModel:
    """Load or run stage 2 on a copy of `trapped`'s classifier (the trapped model itself is left as it is).

    The artefact is keyed by this config, the stage-1 artefact and the holdout images. Metrics: test CA / ASR of
    the replaced model, the holdout size and the training history.
    """
    check_positive_int(monitor_size, "monitor_size")
    store = store or ArtefactStore()
    base = trapped.config.train
    splits = base.splits()
    config, holdout, (_, key, identity) = _replace_inputs(trapped.config, trapped.key, config)
    dev = resolve_device(device)

    def restore(found: Artefact) -> nn.Module:
        return restore_state(new_model(base), found.tensors, f"the current {base.model} code")

    def retrain_head() -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
        classifier = copy.deepcopy(trapped.model)
        monitor_idx = torch.randperm(len(splits.test), generator=make_generator(config.seed))[:monitor_size]
        monitor = (splits.test.subset(monitor_idx).float_images(), splits.test.labels[monitor_idx])
        start = time.time()
        history = replace_head(classifier, holdout, config, base, trapped.net.split, monitor=monitor, device=device,
                               progress=progress, checkpoint=store.checkpoint(REPLACE_KIND, key))
        metrics = {"history": history, "train_seconds": time.time() - start, "holdout_images": len(holdout),
                   "device": str(dev), "torch": torch.__version__, **test_metrics(classifier, base, splits)}
        return classifier, classifier.state_dict(), metrics

    classifier, artefact, loaded = get_or_compute(store, REPLACE_KIND, key, identity, compute=retrain_head,
                                                  restore=restore)
    return TrainedModel(classifier.to(dev).eval(), base, key, artefact.metrics, str(artefact.path), loaded=loaded)


# --- Sec. 4.3, Fig. 2: is the stem backdoor-free? --------------------------------------------------------------------

@torch.no_grad()
def stem_features(classifier: nn.Module, images: torch.Tensor, split: str | None = None,
                  batch_size: int = 500) -> torch.Tensor:
    """The stem's output f_s(x) (the input of split module `split`; default a workbench model's `default_split`)
    for `images` (N, C, H, W) in [0, 1], flattened to (N, D); the classifier is put in eval mode."""
    check_model_images(classifier, images)
    check_positive_int(batch_size, "batch_size")
    split = resolve_split(classifier, split)
    classifier.eval()
    device = next(classifier.parameters()).device
    with capture(classifier, split) as features:
        for batch in images.split(batch_size):
            classifier(batch.to(device))
    return torch.cat([f.flatten(1).cpu() for f in features])


def principal_components(features: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCA of (N, D) features: (projections (N, k), mean (D,), components (k, D)), components by decreasing variance
    with the sign fixed so each component's largest-magnitude loading is positive (repeatable plots)."""
    check_tensor(features, "features", ndim=2)
    if len(features) < 2:
        raise WorkbenchError(f"PCA needs features of at least 2 samples (N >= 2, D), got shape {tuple(features.shape)}")
    check_positive_int(k, "k")
    mean = features.mean(dim=0)
    centred = features - mean
    _, _, vh = torch.linalg.svd(centred.double(), full_matrices=False)
    components = vh[:k]
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    components = (components * signs).to(features.dtype)
    return centred @ components.T, mean, components


@dataclass(frozen=True)
class CentroidDistances:
    """Distances from the poisoned-source centroid to the clean source and the clean target centroids."""

    to_source: float
    to_target: float

    @classmethod
    def of(cls, clean_target: torch.Tensor, clean_source: torch.Tensor,
           poisoned_source: torch.Tensor) -> CentroidDistances:
        poisoned = poisoned_source.mean(dim=0)
        return cls(float((poisoned - clean_source.mean(dim=0)).norm()),
                   float((poisoned - clean_target.mean(dim=0)).norm()))


@dataclass
class FeatureScatter:
    """Fig. 2: stem features of three groups projected on their first two principal components.

    Attributes:
        clean_target, clean_source, poisoned_source: the groups' points (N_g, 2) on the components.
        pca, features: the poisoned-source centroid's distances in the 2-D projection and the full feature space.
        explained_variance: the share of the features' variance each component carries.
    """

    clean_target: torch.Tensor
    clean_source: torch.Tensor
    poisoned_source: torch.Tensor
    pca: CentroidDistances
    features: CentroidDistances
    explained_variance: list[float]

    def groups(self) -> list[tuple[str, torch.Tensor]]:
        """(group name of `GROUPS`, its points) in Fig. 2's order."""
        return list(zip(GROUPS, (self.clean_target, self.clean_source, self.poisoned_source), strict=True))

    @property
    def poisoned_nearer_source(self) -> bool:
        """True when poisoned source samples sit nearer the clean source than the target centroid (both spaces)."""
        return all(d.to_source < d.to_target for d in (self.pca, self.features))

    @property
    def poisoned_nearer_target(self) -> bool:
        """True when poisoned source samples sit nearer the target than the clean source centroid (both spaces):
        the backdoor moved them into the target's features (Fig. 2, normal training)."""
        return all(d.to_target < d.to_source for d in (self.pca, self.features))


def scatter_of(clean_target: torch.Tensor, clean_source: torch.Tensor, poisoned_source: torch.Tensor
               ) -> FeatureScatter:
    """PCA of the stem features (N_g, D) of the three groups of Fig. 2, fitted on all three together, with the
    centroid distances of the poisoned group."""
    groups = (clean_target, clean_source, poisoned_source)
    for name, group in zip(("clean_target", "clean_source", "poisoned_source"), groups, strict=True):
        check_tensor(group, name, ndim=2, nonempty=True)
        if group.shape[1] != clean_target.shape[1]:
            raise WorkbenchError(f"{name} has {group.shape[1]} features per sample, clean_target "
                                 f"{clean_target.shape[1]}: the groups must come from the same stem")
    stacked = torch.cat(groups)
    projected, _, _ = principal_components(stacked, 2)
    explained = (projected.var(dim=0) / stacked.var(dim=0).sum()).tolist()
    points = projected.split([len(g) for g in groups])
    return FeatureScatter(*points, CentroidDistances.of(*points), CentroidDistances.of(*groups), explained)


def feature_scatter(classifier: nn.Module, clean_target: torch.Tensor, clean_source: torch.Tensor,
                    poisoned_source: torch.Tensor, split: str | None = None) -> FeatureScatter:
    """Fig. 2 for one source class: stem features of clean target-class, clean source-class and triggered
    source-class images (each (N_g, C, H, W) in [0, 1]), projected by `scatter_of`."""
    for name, images in (("clean_target", clean_target), ("clean_source", clean_source),
                         ("poisoned_source", poisoned_source)):
        check_model_images(classifier, images, name)
    return scatter_of(*(stem_features(classifier, images, split)
                        for images in (clean_target, clean_source, poisoned_source)))


def scatters_by_source(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       triggered: torch.Tensor, target: int, split: str | None = None) -> dict[int, FeatureScatter]:
    """`feature_scatter` for every source class at once (the stem runs once over all images): `images` (N, C, H, W)
    clean test images with `labels` (N,), `triggered` the same images with the trigger. Keys: source classes."""
    check_model_images(classifier, images)
    check_model_images(classifier, triggered, "triggered images")
    if triggered.shape != images.shape:
        raise WorkbenchError(f"triggered images {tuple(getattr(triggered, 'shape', ()))} must be the images "
                             f"{tuple(images.shape)} with the trigger")
    classes = num_classes_of(classifier, input_shape=tuple(images.shape[1:]))
    check_labels(labels, len(images), classes)
    check_class(target, classes, "target")
    clean, poisoned = stem_features(classifier, images, split), stem_features(classifier, triggered, split)
    target_features = clean[labels == target]
    return {int(source): scatter_of(target_features, clean[labels == source], poisoned[labels == source])
            for source in labels.unique() if source != target}


@dataclass(frozen=True)
class ScatterComparison:
    """[T&R] Fig. 2 for one attack and every source class: the stem-feature scatter of the model trained normally
    (`without`) and of stage 1 with the reconstruction head (`with_reconstruction`), keyed by source class."""

    attack: str
    target: int
    class_names: tuple[str, ...]
    without: dict[int, FeatureScatter]
    with_reconstruction: dict[int, FeatureScatter]

    @property
    def sources(self) -> list[int]:
        """The source classes, ascending."""
        return sorted(self.without)

    def group_labels(self, source: int) -> tuple[str, str, str]:
        """Display labels of the `GROUPS` of `source`'s panel, e.g. ("clean airplane", "clean automobile",
        "poisoned automobile")."""
        names = self.class_names
        return f"clean {names[self.target]}", f"clean {names[source]}", f"poisoned {names[source]}"
