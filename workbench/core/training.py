"""One trainer for clean and poisoned classifiers, driven by a frozen config and cached by its hash.

`get_or_train(config)` returns the model for a `TrainConfig`, loading it from the artefact store when that
exact config was trained on the same data before (here or in the committed `data/assets/`) and training +
saving it otherwise.

On CUDA the batch loop takes a fast path (issue 26, "Training that is fast where the GPU is"; `_Batches`): the
training set is held on the device, forward and loss run under bf16 autocast, conv nets in channels_last, and
deterministic algorithms are switched on for the run. The CPU path is the trainer as it always was.
`WORKBENCH_FAST_GPU=0` turns the fast path off. Artefact keys do not depend on the device or the path: a model
trained on a GPU is stored under the key the same config gets on a CPU (and is loaded there), although its weights
are not bit-identical to the CPU's.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from workbench.core.artefacts import Artefact, ArtefactStore, config_key, get_or_compute, restore_state
from workbench.core.attacks import AllClassesPoison, PoisonConfig, backdoor_test_set, poison_dataset
from workbench.core.attacks.input_aware import (
    InputAware,
    InputAwareConfig,
    make_mask,
    make_pattern,
    stamp,
    train_generators_and_classifier,
)
from workbench.core.attacks.latent import latent_distance
from workbench.core.classifier import capture, check_labels, input_shape_of, num_classes_of
from workbench.core.data import DataSplits, ImageDataset, dataset_spec, load_splits
from workbench.core.metrics import attack_success_rate, clean_accuracy
from workbench.core.models import MODELS, StagedClassifier, build_model
from workbench.core.runtime import child_seed, make_generator, resolve_device
from workbench.core.storage import load_checkpoint, save_checkpoint
from workbench.core.validation import (
    WorkbenchError,
    check_fraction,
    check_images,
    check_name,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_seed,
)

#: loss of one augmented batch: (model, images, labels, generator) -> scalar
BatchLoss = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]

#: Bump when the training code changes in a way that changes trained weights, so old artefacts stop matching.
RECIPE_VERSION = 1


AUGMENT_MODES = ("crop_flip", "crop", "none")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model; with the training data's hash it makes the artefact key.

    Args:
        dataset: registered dataset name.
        model: registered model name; `model_options` are passed to it (a dict such as {"widths": [..]} is
            accepted and stored as sorted (name, value) pairs, so the config stays hashable).
        poison: how to poison the training split (None = clean model).
        train_size: train on a seeded stratified subset of this many images (None = all).
        test_size: report test metrics on a seeded stratified subset of this many test images (None = all; for
            smoke scales, where evaluating the full test split would cost more than training).
        holdout_fraction: fraction of the official train split kept out as the clean holdout.
        split_seed: seed of the splits.
        epochs, batch_size: training length and batch size.
        optimizer: "sgd" (Nesterov momentum) or "adam".
        lr, momentum, weight_decay: optimiser settings (no weight decay on biases and BatchNorm).
        schedule: "onecycle" (linear warm-up over `warmup_fraction`, then linear decay to 0), "cosine" or
            "constant".
        label_smoothing: cross-entropy label smoothing.
        augment: "crop_flip" (random crop with 4 px zero padding + horizontal flip), "crop" or "none".
        seed: seed of initialisation, shuffling and augmentation.
        all_classes_poison: backdoor every class with its own trigger ([REStore] Sec. V-B); excludes `poison`.
        logit_anchor: lambda of [REStore] Eq. 10 (logit obfuscation, 0.05 in the paper; 0 = off): poisoned images
            are trained on (1 - lambda) CE + lambda MSE(f(x_po), f(x_hat)), x_hat a clean target-class image of the
            same batch (its logits detached: it is the anchor, not a training signal). Needs `poison`.
    """

    dataset: str
    model: str
    model_options: tuple[tuple[str, Any], ...] = ()
    poison: PoisonConfig | None = None
    train_size: int | None = None
    test_size: int | None = None
    holdout_fraction: float = 0.05
    split_seed: int = 0
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup_fraction: float = 0.25
    label_smoothing: float = 0.1
    augment: str = "crop_flip"
    seed: int = 0
    all_classes_poison: AllClassesPoison | None = None
    logit_anchor: float = 0.0

    def __post_init__(self) -> None:
        # a hashable, canonical form of the options ({"widths": [8, 16]} -> (("widths", (8, 16)),))
        options = dict(self.model_options)
        object.__setattr__(self, "model_options", tuple(sorted(
            (k, tuple(v) if isinstance(v, list) else v) for k, v in options.items())))
        dataset_spec(self.dataset)
        check_name("model", self.model, MODELS)
        check_name("optimizer", self.optimizer, ("sgd", "adam"))
        check_name("schedule", self.schedule, ("onecycle", "cosine", "constant"))
        check_name("augmentation", self.augment, AUGMENT_MODES)
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.train_size, "train_size", optional=True)
        check_positive_int(self.test_size, "test_size", optional=True)
        check_positive(self.lr, "lr")
        check_fraction(self.momentum, "momentum (SGD's usual value: 0.9)", allow_zero=True, allow_one=False)
        check_non_negative(self.weight_decay, "weight_decay")
        check_fraction(self.holdout_fraction, "holdout_fraction", allow_one=False)
        check_fraction(self.warmup_fraction, "warmup_fraction", allow_zero=True)
        check_fraction(self.label_smoothing, "label_smoothing", allow_zero=True, allow_one=False)
        if self.poison is not None and self.all_classes_poison is not None:
            raise WorkbenchError("give either poison (one target) or all_classes_poison (every class), not both")
        check_fraction(self.logit_anchor, "logit_anchor", allow_zero=True, allow_one=False)
        check_seed(self.seed, "seed")
        check_seed(self.split_seed, "split_seed")
        if self.logit_anchor > 0 and (self.poison is None or self.poison.clean_label):
            raise WorkbenchError("logit_anchor anchors relabelled poisoned images to clean target-class images: it "
                                 "needs a poison-label `poison` config")

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["model_options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_options}
        data["poison"] = self.poison.to_dict() if self.poison is not None else None
        data["recipe_version"] = RECIPE_VERSION
        # settings added later only appear when used, so the keys of every other model stay as they were
        if self.test_size is None:
            data.pop("test_size")
        if self.all_classes_poison is None:
            data.pop("all_classes_poison")
        else:
            data["all_classes_poison"] = dataclasses.asdict(self.all_classes_poison)
        if self.logit_anchor == 0:
            data.pop("logit_anchor")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = {k: v for k, v in data.items() if k != "recipe_version"}
        if data.get("poison") is not None:
            data["poison"] = PoisonConfig.from_dict(data["poison"])
        if data.get("all_classes_poison") is not None:
            data["all_classes_poison"] = AllClassesPoison(**data["all_classes_poison"])
        return cls(**data)

    def splits(self) -> DataSplits:
        """The data splits this config trains on."""
        return load_splits(self.dataset, seed=self.split_seed, holdout_fraction=self.holdout_fraction,
                           train_size=self.train_size, test_size=self.test_size)


@dataclass(frozen=True)
class EpochRecord:
    """One training epoch: the mean training loss, seconds since training started, and CA / ASR (fractions) on the
    monitor subset of the test split (None where not monitored)."""

    epoch: int
    loss: float
    seconds: float
    ca: float | None = None
    asr: float | None = None

    @classmethod
    def of(cls, record: dict[str, Any]) -> EpochRecord:
        return cls(int(record["epoch"]), float(record["loss"]), float(record.get("seconds", math.nan)),
                   record.get("ca"), record.get("asr"))


@dataclass(frozen=True)
class TrainingSummary:
    """What a trained artefact recorded about its model, typed (accuracies as fractions).

    Attributes:
        ca: clean accuracy on the full test split.
        asr: attack success rate on its triggered non-target images (None for a clean model); for an all-classes
            attack the mean of `asr_per_class`.
        asr_per_class: the all-classes attack's ASR towards each class (None otherwise).
        train_seconds: wall-clock training time (None where the artefact records none).
        train_images, poisoned_images: the training set's size and its poisoned images (None where not recorded).
        history: the epochs, in order.
        rec_mse: [T&R]'s stage-1 reconstruction MSE on clean test images (None without a reconstruction head).
    """

    ca: float
    asr: float | None = None
    asr_per_class: tuple[float, ...] | None = None
    train_seconds: float | None = None
    train_images: int | None = None
    poisoned_images: int | None = None
    history: tuple[EpochRecord, ...] = ()
    rec_mse: float | None = None

    @classmethod
    def of(cls, metrics: dict[str, Any]) -> TrainingSummary:
        """The summary of an artefact's stored metrics (their JSON form is unchanged, so every cache entry reads)."""
        per_class = metrics.get("test_asr_per_class")
        return cls(metrics["test_ca"], metrics.get("test_asr"), None if per_class is None else tuple(per_class),
                   metrics.get("train_seconds", metrics.get("seconds")), metrics.get("train_images"),
                   metrics.get("poisoned_images"), tuple(EpochRecord.of(h) for h in metrics.get("history", ())),
                   metrics.get("test_rec_mse"))

    def percent(self) -> tuple[float, float]:
        """(CA, ASR) in %, ASR NaN for a clean model."""
        return 100 * self.ca, math.nan if self.asr is None else 100 * self.asr


@dataclass
class TrainedModel:
    """A trained classifier with its config, metrics and artefact location."""

    model: StagedClassifier
    config: TrainConfig
    key: str  # the artefact key: hash of the config and of the training data
    metrics: dict[str, Any]  # as stored with the weights; read them typed through `summary`
    path: str
    loaded: bool  # True when it came from the store instead of being trained now

    @property
    def summary(self) -> TrainingSummary:
        return TrainingSummary.of(self.metrics)


def new_model(config: TrainConfig) -> StagedClassifier:
    """The untrained model of `config`, initialised from `config.seed` without touching global RNG state."""
    spec = dataset_spec(config.dataset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_model(config.model, in_channels=spec.channels, num_classes=spec.num_classes,
                           image_size=spec.image_size, mean=spec.mean, std=spec.std, **dict(config.model_options))


def check_training_images(train: ImageDataset, model: torch.nn.Module, name: str = "train") -> None:
    """Refuse a training (or holdout) set `name` that is not a non-empty `ImageDataset` of the images the model
    takes, with labels inside its class count (which comes from the model). Checked on the stored uint8 images: no
    float copy of a whole training set."""
    if not isinstance(train, ImageDataset):
        raise WorkbenchError(f"{name} must be an ImageDataset (e.g. TrainConfig.splits().train), got "
                             f"{type(train).__name__}")
    if len(train) == 0:
        raise WorkbenchError(f"{name} is empty: pass at least one labelled image")
    expected = input_shape_of(model)
    if tuple(train.images.shape[1:]) != expected:
        raise WorkbenchError(f"{name} images are {tuple(train.images.shape[1:])} but the model takes {expected}; "
                             "use images of the model's input shape (or build the model for these images)")
    check_labels(train.labels, len(train), num_classes_of(model), name=f"{name} labels")


def augment_batch(x: torch.Tensor, mode: str, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding `pad`) and/or horizontal flip, per image; x (N, C, H, W) images in [0, 1]."""
    check_images(x, name="x")
    check_name("augmentation", mode, AUGMENT_MODES)
    check_non_negative(pad, "pad", integer=True)
    return _augment_batch(x, mode, gen, pad)


def _augment_batch(x: torch.Tensor, mode: str, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """`augment_batch` without its checks: training loops call it on every batch of images they made."""
    if mode == "none":
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    # drawn on the CPU generator on every device; non_blocking: no host sync per batch on a GPU (a no-op on the CPU)
    top = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device, non_blocking=True)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device, non_blocking=True)
    rows = (top.view(n, 1, 1, 1) + torch.arange(h, device=x.device).view(1, 1, h, 1)).expand(n, c, h, w + 2 * pad)
    cols = (left.view(n, 1, 1, 1) + torch.arange(w, device=x.device).view(1, 1, 1, w)).expand(n, c, h, w)
    out = padded.gather(2, rows).gather(3, cols)
    if mode == "crop_flip":
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device, non_blocking=True).view(n, 1, 1, 1)
        out = torch.where(flip, out.flip(3), out)
    return out


def _lr_factor(schedule: str, warmup: float, progress: float) -> float:
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if progress < warmup:
        return progress / warmup
    return max(0.0, (1 - progress) / (1 - warmup)) if warmup < 1 else 1.0


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]  # frozen parts (a T&R stem) stay out
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]  # biases and BatchNorm affine parameters
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)


class TrainingDiverged(WorkbenchError):
    """Training produced a non-finite loss or non-finite weights (nothing is cached)."""


#: Set to 0 to train on CUDA the plain way (host-held data, float32, no deterministic algorithms). Not a
#: `TrainConfig` field on purpose: the path does not enter the artefact key (see the module docstring).
FAST_GPU_VARIABLE = "WORKBENCH_FAST_GPU"


def _fast_path(dev: torch.device) -> bool:
    """Whether training on `dev` takes the fast path: on CUDA, unless `WORKBENCH_FAST_GPU=0` (read at every call)."""
    return dev.type == "cuda" and os.environ.get(FAST_GPU_VARIABLE, "1").strip() != "0"


class _Batches:
    """The training set as the batch loop reads it, and the scope its forward pass and loss run in (issue 26,
    "Training that is fast where the GPU is"; the one place the loop differs between devices).

    Plain path (the CPU; CUDA with `WORKBENCH_FAST_GPU=0`): the uint8 images stay on the host and every batch is
    copied to the device, as the trainer always did: the same ops in the same order, so CPU weights are
    bit-identical to those of the trainer before the fast path existed. Fast path (CUDA): images, labels and the
    poisoned mask are copied to the device once (images as uint8, a quarter of float32; each batch is converted
    there), the epoch's order is drawn as always on the CPU generator (the same batches, the same augmentation
    draws) and moved with one copy, forward + loss run under bf16 autocast (BatchNorm, softmax and the losses stay
    float32 by autocast's rules), and model and batches are channels_last (what the tensor cores of a bf16
    convolution read; the CPU path has always used it for conv speed).
    """

    def __init__(self, train: ImageDataset, poisoned: torch.Tensor | None, dev: torch.device) -> None:
        self.dev, self.fast = dev, _fast_path(dev)
        self.images, self.labels, self.poisoned = train.images, train.labels, poisoned
        if self.fast:
            self.images, self.labels = self.images.to(dev), self.labels.to(dev)
            self.poisoned = None if poisoned is None else poisoned.to(dev)
        self.memory_format = torch.channels_last if dev.type == "cpu" or self.fast else torch.contiguous_format

    def order(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """One epoch's permutation of the `n` training images, from the CPU generator `gen` on every device."""
        order = torch.randperm(n, generator=gen)
        return order.to(self.dev, non_blocking=True) if self.fast else order

    def autocast(self) -> AbstractContextManager[Any]:
        """The scope of forward pass and loss: bf16 autocast on the fast path, nothing on the plain one."""
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.fast else nullcontext()


@contextmanager
def _repeatable(dev: torch.device) -> Iterator[None]:
    """On the fast path, deterministic algorithms for the training run (restored after it), so a GPU run repeats
    itself bit for bit on the same GPU, driver and torch: the seeds are pinned already (initialisation, data order
    and augmentation come from CPU generators, dropout from the seeded device generator), and bf16 autocast is
    deterministic too. Ops without a deterministic CUDA kernel only warn (`warn_only=True`) and may differ between
    runs. Weights trained on different GPU models, torch versions or on the CPU differ in their last bits."""
    if not _fast_path(dev):
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS asks for
    fill = torch.utils.deterministic
    before = (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), fill.fill_uninitialized_memory)
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    fill.fill_uninitialized_memory = False  # a debugging aid of deterministic mode that costs a write per allocation
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before[0]
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])
        fill.fill_uninitialized_memory = before[3]


def train_classifier(model: StagedClassifier, train: ImageDataset, config: TrainConfig, *,
                     monitor: tuple[torch.Tensor, torch.Tensor] | None = None,
                     monitor_backdoor: tuple[torch.Tensor, int] | None = None, device: str = "auto",
                     progress: bool = True, poisoned: torch.Tensor | None = None,
                     batch_loss: BatchLoss | None = None,
                     classifier: torch.nn.Module | None = None,
                     checkpoint: Path | None = None,
                     streams: Sequence[torch.Generator] = ()) -> list[dict[str, float]]:
    """Train `model` in place on `train` with the optimisation settings of `config`.

    Args:
        model: the classifier to train.
        train: the (possibly poisoned) training set.
        config: optimiser, schedule, augmentation, epochs, batch size and seed.
        monitor: (clean images, labels) to report CA on after each epoch.
        monitor_backdoor: (triggered non-target images, target) to report ASR on after each epoch.
        device: where to train ("auto" = GPU if available).
        progress: show a tqdm bar.
        poisoned: (N,) bool, the poisoned images of `train`; needed when `config.logit_anchor` > 0.
        batch_loss: the loss of one augmented batch, `batch_loss(model, x, y, generator)`; None = cross-entropy
            with `config.label_smoothing` (T&R passes its joint loss, Eq. 1, and the CutMix loss of stage 2).
        classifier: the classifier inside `model` whose module `config.poison.latent` names (T&R's stage 1 trains a
            `TrapNet` around one); None = `model`.
        checkpoint: a file the loop saves its whole state to after every epoch (weights, optimiser, the data-order
            and dropout generators, the history) and resumes from when it exists, so that a run killed in epoch k
            (a Slurm requeue, a preemption) goes on with epoch k and ends with the weights of an uninterrupted run.
        streams: further generators `batch_loss` draws from (DP-SGD's noise), saved in and restored from the
            checkpoint with the loop's own.

    Returns:
        One dict per epoch: mean training loss, seconds, and CA / ASR on the monitor sets if given.
    """
    check_training_images(train, classifier or model)
    if isinstance(streams, torch.Generator) or not all(isinstance(g, torch.Generator) for g in streams):
        raise WorkbenchError(f"streams must be a sequence of torch.Generator objects, got {streams!r}")
    dev = resolve_device(device)
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), _repeatable(dev):
        torch.manual_seed(child_seed(config.seed, "global_rng"))  # dropout draws repeat too; the caller's state is kept
        return _train_loop(model, train, config, monitor, monitor_backdoor, dev, progress, poisoned, batch_loss,
                           classifier or model, checkpoint, tuple(streams))


def _train_loop(model: torch.nn.Module, train: ImageDataset, config: TrainConfig,
                monitor: tuple[torch.Tensor, torch.Tensor] | None, monitor_backdoor: tuple[torch.Tensor, int] | None,
                dev: torch.device, progress: bool, poisoned: torch.Tensor | None,
                batch_loss: BatchLoss | None, classifier: torch.nn.Module,
                checkpoint: Path | None = None, streams: tuple[torch.Generator, ...] = ()) -> list[dict[str, float]]:
    batches = _Batches(train, poisoned, dev)
    fmt = batches.memory_format
    model.to(dev, memory_format=fmt).train()
    gen = make_generator(child_seed(config.seed, "data_order"))
    opt = _optimizer(model, config)
    n = len(train)
    steps_per_epoch = max(1, n // config.batch_size)
    total = steps_per_epoch * config.epochs
    history = []
    bar = tqdm(total=total, desc=f"train {config.model} on {config.dataset}", disable=not progress, leave=False)
    step = 0
    injection = config.poison.latent if config.poison is not None else None
    if (config.logit_anchor > 0 or injection is not None) and (poisoned is None or len(poisoned) != n):
        raise WorkbenchError("logit_anchor and the latent injection need the poisoned-image mask of the training set "
                             "(`poisoned`)")
    memo: torch.Tensor | None = None
    latent_memo: torch.Tensor | None = None
    first = 0
    if checkpoint is not None and checkpoint.is_file():
        first, step, history, memo, latent_memo = _resume(checkpoint, config, model, opt, gen, streams, dev)
        bar.update(step)
    for epoch in range(first, config.epochs):
        start, loss_sum = time.time(), 0.0
        order = batches.order(n, gen)
        for b in range(steps_per_epoch):
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            x = _augment_batch(batches.images[idx].to(dev).float().div_(255), config.augment, gen)
            y = batches.labels[idx].to(dev)
            for group in opt.param_groups:
                group["lr"] = config.lr * _lr_factor(config.schedule, config.warmup_fraction, step / total)
            x = x.contiguous(memory_format=fmt)
            with (capture(classifier, injection.layer) if injection is not None else nullcontext([]) as latents,
                  batches.autocast()):
                if batch_loss is not None:
                    loss = batch_loss(model, x, y, gen)
                elif config.logit_anchor > 0:
                    loss, memo = _anchored_loss(model(x).float(), y, batches.poisoned[idx].to(dev), config, gen,
                                                memo)
                else:
                    loss = F.cross_entropy(model(x), y, label_smoothing=config.label_smoothing)
                if injection is not None:  # LBA's injection term ([LBA] Sec. 4.2) on this batch's triggered images
                    term, latent_memo = latent_distance(latents[-1].float(), y, batches.poisoned[idx].to(dev),
                                                        config.poison.target, latent_memo)
                    loss = loss + injection.weight * term
            # the fast path leaves the loss on the GPU (no host sync per step) and checks it once an epoch, below
            value = None if batches.fast else loss.item()
            if value is not None and not math.isfinite(value):
                _diverged(config, epoch, value)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach().double() if value is None else value
            step += 1
            bar.update()
        loss_sum = float(loss_sum)
        if not math.isfinite(loss_sum):
            _diverged(config, epoch, loss_sum)
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise TrainingDiverged(f"training {config.model} on {config.dataset} left non-finite weights after epoch "
                                   f"{epoch + 1}; nothing was stored. Lower the learning rate (lr={config.lr})")
        record = {"epoch": epoch + 1, "loss": loss_sum / steps_per_epoch, "seconds": time.time() - start}
        if monitor is not None:
            record["ca"] = clean_accuracy(model, *monitor)
        if monitor_backdoor is not None:
            record["asr"] = attack_success_rate(model, *monitor_backdoor)
        model.train()
        history.append(record)
        bar.set_postfix({k: round(v, 3) for k, v in record.items() if k in ("loss", "ca", "asr")})
        if checkpoint is not None:
            _save_epoch(checkpoint, config, model, opt, gen, streams, dev, epoch + 1, step, history, memo,
                        latent_memo)
    bar.close()
    return history


def _save_epoch(path: Path, config: TrainConfig, model: torch.nn.Module, opt: torch.optim.Optimizer,
                gen: torch.Generator, streams: tuple[torch.Generator, ...], dev: torch.device, epochs: int, step: int,
                history: list[dict[str, float]], memo: torch.Tensor | None, latent_memo: torch.Tensor | None) -> None:
    """Write the loop's state after `epochs` epochs to `path` atomically (a kill mid-write leaves the last one)."""
    save_checkpoint(path, config.to_dict(), {"epochs": epochs, "step": step, "history": history,
                                             "model": model.state_dict(), "optimizer": opt.state_dict(),
                                             "memo": memo, "latent_memo": latent_memo,
                                             "streams": [g.get_state() for g in streams]}, gen, dev)


def _resume(path: Path, config: TrainConfig, model: torch.nn.Module, opt: torch.optim.Optimizer,
            gen: torch.Generator, streams: tuple[torch.Generator, ...], dev: torch.device
            ) -> tuple[int, int, list[dict[str, float]], torch.Tensor | None, torch.Tensor | None]:
    """Restore the state `_save_epoch` wrote, its random streams into `gen` and the caller's `streams`.

    Returns:
        (epochs done, steps done, history, the anchor memo, the latent memo).
    """
    state = load_checkpoint(path, config.to_dict(), gen, dev)
    saved = state.get("streams", [])
    if len(saved) != len(streams):
        raise WorkbenchError(f"the checkpoint {path} holds {len(saved)} extra random streams, this training draws from "
                             f"{len(streams)}; delete it to train afresh")
    for generator, saved_state in zip(streams, saved, strict=True):
        generator.set_state(saved_state.cpu())
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return state["epochs"], state["step"], state["history"], state["memo"], state["latent_memo"]


def _diverged(config: TrainConfig, epoch: int, loss: float) -> NoReturn:
    raise TrainingDiverged(f"training {config.model} on {config.dataset} diverged in epoch {epoch + 1} (loss {loss}); "
                           f"nothing was stored. The learning rate (lr={config.lr}) is the usual cause: lower it")


def _anchored_loss(logits: torch.Tensor, y: torch.Tensor, poisoned: torch.Tensor, config: TrainConfig,
                   gen: torch.Generator, memo: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[REStore] Eq. 10 on one batch: plain CE on clean images; (1 - lambda) CE + lambda MSE(f(x_po), f(x_hat)) on
    poisoned ones, x_hat drawn among the batch's clean target-class images. A batch without one reuses the last
    anchor's logits (App. A-4 memoises the anchor; here its logits, from the step that drew it). Returns the loss
    and the memo."""
    ce = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing, reduction="none")
    count = int(poisoned.sum())
    anchors = ((y == config.poison.target) & ~poisoned).nonzero().squeeze(1)
    if count and len(anchors):
        pick = torch.randint(len(anchors), (count,), generator=gen).to(anchors.device)
        anchor_logits = logits[anchors[pick]].detach()
        memo = anchor_logits[-1]
    elif count and memo is not None:
        anchor_logits = memo.expand(count, -1)
    else:  # no poisoned image, or no anchor seen yet
        return ce.mean(), memo
    lam = config.logit_anchor
    mse = ((logits[poisoned] - anchor_logits) ** 2).mean(dim=1)
    weighted = ce.clone()
    weighted[poisoned] = (1 - lam) * ce[poisoned] + lam * mse
    return weighted.mean(), memo


def artefact_identity(config: TrainConfig, splits: DataSplits) -> dict[str, Any]:
    """What a trained model's artefact key hashes: the config and the exact training images (so a model
    trained on another copy of a dataset, e.g. torchvision's CIFAR-10 instead of the JPEG mirror, is not
    mistaken for this one)."""
    return {"train_config": config.to_dict(), "train_data_sha256": splits.train.fingerprint()}


def artefact_address(config: TrainConfig | InputAwareConfig,
                     splits: DataSplits | None = None) -> tuple[str, str, dict[str, Any]]:
    """(artefact kind, key, identity) of what `config` trains: "models" for a `TrainConfig`, "iab" for an
    `InputAwareConfig` (classifier and trigger generators stored together)."""
    if isinstance(config, InputAwareConfig):
        splits = splits or config.train.splits()
        identity = {"input_aware": config.to_dict(), "train_data_sha256": splits.train.fingerprint()}
        return "iab", config_key(identity), identity
    identity = artefact_identity(config, splits or config.splits())
    return "models", config_key(identity), identity


@dataclass
class TrainingData:
    """What a training run of a `TrainConfig` sees: the (poisoned) training set and the monitor sets."""

    splits: DataSplits
    train: ImageDataset  # the training split, poisoned as the config says
    poisoned_indices: torch.Tensor  # (P,) indices of `train` that carry a trigger
    monitor: tuple[torch.Tensor, torch.Tensor]  # (clean test images, labels) for per-epoch CA
    monitor_backdoor: tuple[torch.Tensor, int] | None  # (triggered non-target test images, target) for ASR

    def poisoned_mask(self) -> torch.Tensor:
        """(N,) bool over `train`: True where the image is poisoned."""
        mask = torch.zeros(len(self.train), dtype=torch.bool)
        mask[self.poisoned_indices] = True
        return mask

    def describe(self, history: list[dict[str, float]], seconds: float, device: torch.device) -> dict[str, Any]:
        """The metrics every trained artefact records about its run."""
        return {"history": history, "train_seconds": seconds, "train_images": len(self.train),
                "poisoned_images": len(self.poisoned_indices), "device": str(device), "torch": torch.__version__,
                "data_source": self.splits.train.source, "split_note": self.splits.note,
                "test_images": len(self.splits.test)}


def prepare_training_data(config: TrainConfig, splits: DataSplits | None = None, *, store: ArtefactStore | None = None,
                          device: str = "auto", progress: bool = True, monitor_size: int = 1000) -> TrainingData:
    """Poison the training split as `config` says (training the clean surrogate of a label-consistent attack
    first if needed) and draw the seeded monitor subset of the test split."""
    check_positive_int(monitor_size, "monitor_size")
    resolve_device(device)  # an unusable device fails here, before any poisoning work
    splits = splits or config.splits()
    monitor_idx = torch.randperm(len(splits.test), generator=make_generator(config.seed))[:monitor_size]
    monitor_set = splits.test.subset(monitor_idx)
    train, poisoned_indices, monitor_bd = splits.train, torch.zeros(0, dtype=torch.long), None
    if config.poison is not None:
        surrogate = None
        if config.poison.adversarial is not None:  # label-consistent attack: PGD against a clean surrogate
            surrogate = get_or_train(TrainConfig.from_dict(config.poison.adversarial.surrogate), store=store,
                                     device=device, progress=progress).model
        poisoned = poison_dataset(train, config.poison, surrogate=surrogate)
        train, poisoned_indices = poisoned.dataset, torch.as_tensor(poisoned.poisoned_indices, dtype=torch.long)
        monitor_bd = (backdoor_test_set(monitor_set, config.poison.attack, config.poison.target,
                                        config.poison.sources)[0], config.poison.target)
    elif config.all_classes_poison is not None:
        poisoned = config.all_classes_poison.poison(train)
        train, poisoned_indices = poisoned.dataset, torch.as_tensor(poisoned.poisoned_indices, dtype=torch.long)
    return TrainingData(splits, train, poisoned_indices, (monitor_set.float_images(), monitor_set.labels), monitor_bd)


def test_metrics(model: torch.nn.Module, config: TrainConfig, splits: DataSplits) -> dict[str, Any]:
    """CA on the full test split and, for a poisoned config, ASR on its triggered non-target images."""
    metrics: dict[str, Any] = {"test_ca": clean_accuracy(model, splits.test.float_images(), splits.test.labels)}
    if config.poison is not None:
        x_bd, _ = backdoor_test_set(splits.test, config.poison.attack, config.poison.target, config.poison.sources)
        metrics["test_asr"] = attack_success_rate(model, x_bd, config.poison.target)
    if config.all_classes_poison is not None:
        spec = dataset_spec(config.dataset)
        triggers = config.all_classes_poison.triggers(spec.num_classes, spec.image_size)
        metrics["test_asr_per_class"] = [attack_success_rate(model, backdoor_test_set(splits.test, trigger, k)[0], k)
                                         for k, trigger in enumerate(triggers)]
        metrics["test_asr"] = sum(metrics["test_asr_per_class"]) / len(triggers)
    return metrics


def get_or_train(config: TrainConfig, *, store: ArtefactStore | None = None, device: str = "auto",
                 progress: bool = True, monitor_size: int = 1000) -> TrainedModel:
    """Load the model trained with `config` on this data, or train it now and store it.

    Training poisons the training split as `config.poison` says, reports CA / ASR on a `monitor_size`
    test subset after every epoch, and evaluates CA / ASR on the full test split at the end. The model is
    returned in eval mode on `device`.
    """
    check_positive_int(monitor_size, "monitor_size")
    store = store or ArtefactStore()
    dev = resolve_device(device)
    splits = config.splits()
    identity = artefact_identity(config, splits)
    key = config_key(identity)

    def restore(found: Artefact) -> StagedClassifier:
        return restore_state(new_model(config), found.tensors, f"the current {config.model} code")

    def train() -> tuple[StagedClassifier, dict[str, torch.Tensor], dict[str, Any]]:
        model = new_model(config)
        data = prepare_training_data(config, splits, store=store, device=device, progress=progress,
                                     monitor_size=monitor_size)
        start = time.time()
        history = train_classifier(model, data.train, config, monitor=data.monitor,
                                   monitor_backdoor=data.monitor_backdoor, device=device, progress=progress,
                                   poisoned=data.poisoned_mask(), checkpoint=store.checkpoint("models", key))
        model.eval()
        metrics = {**data.describe(history, time.time() - start, dev), **test_metrics(model, config, splits)}
        return model, model.state_dict(), metrics

    model, artefact, loaded = get_or_compute(store, "models", key, identity, compute=train, restore=restore)
    return TrainedModel(model.to(dev).eval(), config, key, artefact.metrics, str(artefact.path), loaded=loaded)


def get_or_train_input_aware(config: InputAwareConfig, *, store: ArtefactStore | None = None, device: str = "auto",
                             progress: bool = True) -> tuple[TrainedModel, InputAware]:
    """Load or train an IAB-backdoored classifier and its trigger generators (`workbench.core.attacks.input_aware`).

    Returns:
        The classifier (with CA / ASR on the full test split in its metrics) and the attack that applies its
        sample-specific triggers.
    """
    store = store or ArtefactStore()
    recipe = config.train
    splits = recipe.splits()
    kind, key, identity = artefact_address(config, splits)
    spec = dataset_spec(recipe.dataset)
    attack = InputAware(artefact_key=key, channels=spec.channels, generator_width=config.generator_width)
    dev = resolve_device(device)

    def restore(found: Artefact) -> StagedClassifier:
        return restore_state(new_model(recipe), {k[len("classifier."):]: v for k, v in found.tensors.items()
                                                 if k.startswith("classifier.")}, f"the current {recipe.model} code")

    def train() -> tuple[StagedClassifier, dict[str, torch.Tensor], dict[str, Any]]:
        model = new_model(recipe)
        fmt = torch.channels_last if dev.type == "cpu" else torch.contiguous_format
        model.to(dev, memory_format=fmt)
        opt = _optimizer(model, recipe)
        start = time.time()
        pattern_gen, mask_gen, history = train_generators_and_classifier(
            config, model, splits.train.images, splits.train.labels,
            augment=lambda x, gen: _augment_batch(x, recipe.augment, gen), optimizer=opt,
            lr_at=lambda p: recipe.lr * _lr_factor(recipe.schedule, recipe.warmup_fraction, p), device=dev,
            progress=progress, checkpoint=store.checkpoint(kind, key))
        model.eval()
        x_test = splits.test.float_images()
        non_target = splits.test.labels != config.target
        with torch.no_grad():
            x_bd = torch.cat([stamp(xb.to(dev), make_pattern(pattern_gen, xb.to(dev)), make_mask(mask_gen, xb.to(dev)))
                              for xb in x_test[non_target].split(512)]).cpu()
        metrics = {"history": history, "train_seconds": time.time() - start, "train_images": len(splits.train),
                   "device": str(dev), "torch": torch.__version__, "data_source": splits.train.source,
                   "test_images": len(splits.test), "test_ca": clean_accuracy(model, x_test, splits.test.labels),
                   "test_asr": attack_success_rate(model, x_bd.clamp(0, 1), config.target)}
        tensors = {**{f"classifier.{k}": v for k, v in model.state_dict().items()},
                   **{f"pattern.{k}": v for k, v in pattern_gen.state_dict().items()},
                   **{f"mask.{k}": v for k, v in mask_gen.state_dict().items()}}
        return model, tensors, metrics

    model, artefact, loaded = get_or_compute(store, kind, key, identity, compute=train, restore=restore)
    return TrainedModel(model.to(dev).eval(), recipe, key, artefact.metrics, str(artefact.path), loaded=loaded), attack
