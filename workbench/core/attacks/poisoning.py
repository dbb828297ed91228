"""Poisoned training sets and triggered test sets.

One builder, `poison_dataset`, covers the papers' settings: a poison ratio of the whole training set
(BDMAE, T&R, REStore) or a count / count per source class (L-RED), all-to-one towards a target class,
optional source classes, clean-label mode (only target-class images get the trigger, labels unchanged),
and WaNet's noise mode. Poisoned images replace their clean originals, so the set keeps its size (as L-RED
A.4.4 describes: the originals are removed). Poisoned images are stored as 8-bit images, as a distributed
poisoned dataset would be; test-time triggers are applied in float (`backdoor_test_set`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from workbench.core.attacks.adversarial import pgd_perturb
from workbench.core.attacks.base import Attack, attack_from_dict
from workbench.core.attacks.latent import LatentInjection
from workbench.core.attacks.patches import BadNets, per_class_triggers
from workbench.core.data import ImageDataset
from workbench.core.runtime import make_generator
from workbench.core.storage import canonical_json
from workbench.core.validation import (
    WorkbenchError,
    check_class,
    check_fraction,
    check_non_negative,
    check_positive_int,
    check_seed,
)

_CHUNK = 4096  # images triggered per step: bounds the float copy's memory on 50,000-image sets


@dataclasses.dataclass(frozen=True)
class AdversarialStep:
    """The label-consistent attack's extra step ([LC]): before the trigger is added, each
    poisoned image gets an untargeted L-inf PGD perturbation against a clean surrogate model.

    Args:
        surrogate: the surrogate's `TrainConfig.to_dict()` (the trainer loads or trains it).
        epsilon: L-inf radius (16/255: our choice within [LC]'s 8-32/255; BDMAE and T&R do not say).
        steps: PGD steps (step size 2.5 epsilon / steps).
    """

    surrogate: dict[str, Any]
    epsilon: float = 16 / 255
    steps: int = 10

    def __post_init__(self) -> None:
        check_fraction(self.epsilon, "epsilon")
        check_positive_int(self.steps, "steps")

    def __hash__(self) -> int:  # the surrogate config is a dict: hash its canonical JSON
        return hash((canonical_json(self.surrogate), self.epsilon, self.steps))


@dataclasses.dataclass(frozen=True)
class PoisonConfig:
    """How to poison a training set. Give exactly one of `ratio`, `count`, `count_per_source`.

    Args:
        attack: the trigger.
        target: the attack's target class (all-to-one).
        ratio: poisoned images as a fraction of `ratio_of`, in (0, 1].
        count: number of poisoned images.
        count_per_source: number of poisoned images per source class (L-RED A.4.3).
        ratio_of: "dataset" (fraction of the whole training set: BDMAE, T&R, REStore) or "candidates"
            (fraction of the eligible images, e.g. REStore's 30 % of the target class in clean-label mode).
        sources: source classes; None = every class but the target.
        clean_label: trigger target-class images and keep their labels (SIG, LC) instead of relabelling
            source images to the target.
        noise_ratio: WaNet noise-mode images as a multiple of the poisoned count (WaNet's cross ratio, 2).
        seed: seed of the image selection (and noise-mode offsets).
        adversarial: the label-consistent attack's PGD step (needs `clean_label`).
        latent: the Latent Backdoor Attack's injection term, added to the training loss of the poisoned images
            (`workbench.core.attacks.latent`; needs poison-label mode: the target's clean images are its anchor).
    """

    attack: Attack
    target: int = 0
    ratio: float | None = None
    count: int | None = None
    count_per_source: int | None = None
    ratio_of: str = "dataset"
    sources: tuple[int, ...] | None = None
    clean_label: bool = False
    noise_ratio: float = 0.0
    seed: int = 0
    adversarial: AdversarialStep | None = None
    latent: LatentInjection | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.attack, Attack):
            raise WorkbenchError(f"attack must be an Attack (see make_attack), got {type(self.attack).__name__}")
        given = [k for k in ("ratio", "count", "count_per_source") if getattr(self, k) is not None]
        if len(given) != 1:
            raise WorkbenchError(f"give exactly one of ratio, count, count_per_source; got {given or 'none'}")
        if self.ratio is not None:
            check_fraction(self.ratio, "poison ratio")
        check_positive_int(self.count, "count", optional=True)
        check_positive_int(self.count_per_source, "count_per_source", optional=True)
        if self.ratio_of not in ("dataset", "candidates"):
            raise WorkbenchError(f"ratio_of must be 'dataset' or 'candidates', got {self.ratio_of!r}")
        if self.count_per_source is not None and self.clean_label:
            raise WorkbenchError("count_per_source needs source classes; it does not apply in clean-label mode")
        if self.sources is not None:
            object.__setattr__(self, "sources", tuple(sorted(set(self.sources))))
            if self.target in self.sources:
                raise WorkbenchError(f"target class {self.target} cannot also be a source class")
        check_non_negative(self.noise_ratio, "noise_ratio", meaning_of_zero="0 = no noise-mode images")
        if isinstance(self.target, bool) or not isinstance(self.target, int) or self.target < 0:
            raise WorkbenchError(f"target must be a class index (an integer >= 0), got {self.target!r}")
        check_seed(self.seed, "PoisonConfig seed")
        if self.noise_ratio > 0 and not self.attack.has_noise_mode:
            raise WorkbenchError(f"attack {self.attack.family!r} has no noise mode; set noise_ratio=0")
        if self.adversarial is not None and not self.clean_label:
            raise WorkbenchError("the adversarial (label-consistent) step perturbs target-class images: "
                                 "set clean_label=True")
        if self.latent is not None and not isinstance(self.latent, LatentInjection):
            raise WorkbenchError(f"latent must be a LatentInjection, got {type(self.latent).__name__}")
        if self.latent is not None and self.clean_label:
            raise WorkbenchError("the latent injection pulls relabelled source images towards the target class's "
                                 "clean images: set clean_label=False")

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["attack"] = self.attack.to_dict()
        data["sources"] = list(self.sources) if self.sources is not None else None
        if self.adversarial is None:
            data.pop("adversarial")  # keeps the keys of configs made before this field existed
        else:
            data["adversarial"] = dataclasses.asdict(self.adversarial)
        if self.latent is None:
            data.pop("latent")
        else:
            data["latent"] = self.latent.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PoisonConfig:
        data = dict(data)
        data["attack"] = attack_from_dict(data["attack"])
        if data.get("sources") is not None:
            data["sources"] = tuple(data["sources"])
        if data.get("adversarial") is not None:
            data["adversarial"] = AdversarialStep(**data["adversarial"])
        if data.get("latent") is not None:
            data["latent"] = LatentInjection(**data["latent"])
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class PoisonedDataset:
    """A poisoned training set and what was done to it.

    Attributes:
        dataset: the poisoned set (same size and order as the clean one).
        poisoned_indices: indices of the triggered images (sorted).
        noise_indices: indices of WaNet noise-mode images (labels kept).
        targets: label given to each poisoned image (all equal for all-to-one attacks).
    """

    dataset: ImageDataset
    poisoned_indices: torch.Tensor
    noise_indices: torch.Tensor
    targets: torch.Tensor


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def _apply_in_chunks(images: torch.Tensor, transform: Any) -> torch.Tensor:
    """Apply a float transform to uint8 images chunk by chunk; returns uint8 (rounded)."""
    out = torch.empty_like(images)
    for start in range(0, len(images), _CHUNK):
        out[start:start + _CHUNK] = _to_uint8(transform(images[start:start + _CHUNK].float() / 255))
    return out


def _candidates(labels: torch.Tensor, config: PoisonConfig, num_classes: int) -> torch.Tensor:
    if config.clean_label:
        return (labels == config.target).nonzero().squeeze(1)
    sources = config.sources if config.sources is not None else [c for c in range(num_classes) if c != config.target]
    return torch.isin(labels, torch.tensor(sources)).nonzero().squeeze(1)


def _select(labels: torch.Tensor, config: PoisonConfig, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """Seeded choice of the images to poison."""
    pool = _candidates(labels, config, num_classes)
    if config.count_per_source is not None:
        chosen = []
        for source in config.sources or [c for c in range(num_classes) if c != config.target]:
            members = pool[labels[pool] == source]
            if config.count_per_source > len(members):
                raise WorkbenchError(f"count_per_source={config.count_per_source} but source class {source} has "
                                     f"only {len(members)} images")
            chosen.append(members[torch.randperm(len(members), generator=gen)[: config.count_per_source]])
        return torch.sort(torch.cat(chosen)).values
    if config.count is not None:
        n = config.count
    else:
        n = round(config.ratio * (len(labels) if config.ratio_of == "dataset" else len(pool)))
    what = "target-class images (clean-label mode)" if config.clean_label else "source-class images"
    if n < 1:
        raise WorkbenchError(f"poison ratio {config.ratio} selects no image of this {len(labels)}-image set; "
                             "raise the ratio or give a count")
    if n > len(pool):
        raise WorkbenchError(f"cannot poison {n} images: only {len(pool)} {what} are available; "
                             "lower the ratio/count or widen the sources")
    return torch.sort(pool[torch.randperm(len(pool), generator=gen)[:n]]).values


def _check_dataset(dataset: ImageDataset, name: str) -> None:
    """A non-empty `ImageDataset`."""
    if not isinstance(dataset, ImageDataset):
        raise WorkbenchError(f"{name} must be an ImageDataset (see workbench.core.data), got {type(dataset).__name__}")
    if not len(dataset):
        raise WorkbenchError(f"{name} is empty: give a dataset with images")


def _naming(transform: Any, name: str) -> Any:
    """`transform` (a trigger's `apply`), its refusal of images it does not fit naming the set they come from."""
    def run(x: torch.Tensor) -> torch.Tensor:
        try:
            return transform(x)
        except WorkbenchError as exc:
            raise WorkbenchError(f"the trigger cannot be applied to the {name}'s "
                                 f"{'x'.join(map(str, x.shape[1:]))} images: {exc}") from exc
    return run


def poison_dataset(dataset: ImageDataset, config: PoisonConfig, *,
                   surrogate: torch.nn.Module | None = None) -> PoisonedDataset:
    """Build a poisoned copy of `dataset` (see the module docstring and `PoisonConfig`).

    Args:
        dataset: the clean training set.
        config: how to poison it.
        surrogate: the clean surrogate model of `config.adversarial` (required then, unused otherwise).

    Returns:
        The poisoned set with the indices that were triggered (and noise-mode images, for WaNet).
    """
    _check_dataset(dataset, "dataset")
    if not isinstance(config, PoisonConfig):
        raise WorkbenchError(f"config must be a PoisonConfig, got {type(config).__name__}")
    check_class(config.target, dataset.num_classes, "target")
    for source in config.sources or ():
        check_class(source, dataset.num_classes, "source class")
    gen = make_generator(config.seed)
    chosen = _select(dataset.labels, config, dataset.num_classes, gen)
    images = dataset.images.clone()
    labels = dataset.labels.clone()
    originals = dataset.images[chosen]
    if config.adversarial is not None:
        if surrogate is None:
            raise WorkbenchError("this poison config has an adversarial step: pass the surrogate model")
        adv = config.adversarial
        originals = _to_uint8(pgd_perturb(surrogate, originals.float() / 255, dataset.labels[chosen],
                                          epsilon=adv.epsilon, steps=adv.steps, generator=gen))
    images[chosen] = _apply_in_chunks(originals, _naming(config.attack.apply, "dataset"))
    if not config.clean_label:
        labels[chosen] = config.target
    noise = torch.empty(0, dtype=torch.long)
    if config.noise_ratio > 0:
        rest = torch.ones(len(dataset), dtype=torch.bool)
        rest[chosen] = False
        rest_idx = rest.nonzero().squeeze(1)
        n_noise = min(len(rest_idx), round(config.noise_ratio * len(chosen)))
        noise = torch.sort(rest_idx[torch.randperm(len(rest_idx), generator=gen)[:n_noise]]).values
        images[noise] = _apply_in_chunks(dataset.images[noise], lambda x: config.attack.apply_noise_mode(x, gen))
    targets = torch.full((len(chosen),), config.target, dtype=torch.long)
    return PoisonedDataset(dataset.replace(images=images, labels=labels), chosen, noise, targets)


def poison_all_classes(dataset: ImageDataset, triggers: Sequence[Attack], *, ratio: float,
                       seed: int = 0) -> PoisonedDataset:
    """Backdoor every class with its own trigger ([REStore] Sec. V-A adaptive attack).

    Trigger k relabels images of other classes to class k. The poisoned images (a `ratio` fraction of the
    set in total, split evenly over the classes) are disjoint.
    """
    _check_dataset(dataset, "dataset")
    check_seed(seed)
    check_fraction(ratio, "poison ratio")
    if len(triggers) != dataset.num_classes:
        raise WorkbenchError(f"need one trigger per class of the dataset ({dataset.num_classes} classes), got "
                             f"{len(triggers)} triggers")
    gen = make_generator(seed)
    per_class = round(ratio * len(dataset) / dataset.num_classes)
    if per_class < 1:
        raise WorkbenchError(f"poison ratio {ratio} of the {len(dataset)}-image dataset leaves no poisoned image for "
                             f"each of its {dataset.num_classes} classes; raise the ratio")
    free = torch.ones(len(dataset), dtype=torch.bool)
    images, labels = dataset.images.clone(), dataset.labels.clone()
    chosen_all, targets = [], []
    for target, trigger in enumerate(triggers):
        pool = (free & (dataset.labels != target)).nonzero().squeeze(1)
        if per_class > len(pool):
            raise WorkbenchError(f"ratio {ratio} is too high: class {target} cannot get {per_class} free images")
        chosen = pool[torch.randperm(len(pool), generator=gen)[:per_class]]
        free[chosen] = False
        images[chosen] = _apply_in_chunks(dataset.images[chosen], _naming(trigger.apply, "dataset"))
        labels[chosen] = target
        chosen_all.append(chosen)
        targets.append(torch.full((per_class,), target, dtype=torch.long))
    chosen, targets_t = torch.cat(chosen_all), torch.cat(targets)
    order = torch.argsort(chosen)
    no_noise = torch.empty(0, dtype=torch.long)
    return PoisonedDataset(dataset.replace(images=images, labels=labels), chosen[order], no_noise, targets_t[order])


@dataclasses.dataclass(frozen=True)
class AllClassesPoison:
    """[REStore] Sec. V-B's adaptive attack: every class backdoored by its own random 3x3 BadNets trigger (pattern and
    position drawn from `seed`, see `per_class_triggers`), `ratio` of the training set poisoned in total.
    """

    ratio: float = 0.05
    size: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        check_fraction(self.ratio, "poison ratio")
        check_positive_int(self.size, "trigger size")
        check_seed(self.seed)

    def triggers(self, num_classes: int, image_size: int) -> list[BadNets]:
        """Trigger k sends images to class k."""
        return per_class_triggers(num_classes, image_size, size=self.size, seed=self.seed)

    def poison(self, dataset: ImageDataset) -> PoisonedDataset:
        triggers = self.triggers(dataset.num_classes, dataset.images.shape[-1])
        return poison_all_classes(dataset, triggers, ratio=self.ratio, seed=self.seed)


def backdoor_test_set(test: ImageDataset, attack: Attack, target: int,
                      sources: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Triggered test inputs for ASR and BA: every test image of a source class (default: all but the target).

    Returns:
        (triggered float images (M, C, H, W) in [0, 1], their true labels (M,)).
    """
    _check_dataset(test, "test")
    check_class(target, test.num_classes, "target")
    keep = test.labels != target
    if sources is not None:
        keep &= torch.isin(test.labels, torch.tensor(list(sources)))
    idx = keep.nonzero().squeeze(1)
    if len(idx) == 0:
        raise WorkbenchError("the test set has no images of the source classes: cannot measure ASR")
    return _naming(attack.apply, "test set")(test.images[idx].float() / 255), test.labels[idx]
