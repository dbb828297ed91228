"""L-RED experiments: the attacked and clean classifiers, detections and tables behind `31_lred_tables.ipynb`.

Class indices are 0-based here. The paper counts CIFAR-10 and MNIST classes from 1 (App. A.4.2: "class 1-10"; MNIST's
"class 10" in App. A.8.1 only exists 1-based) and Fashion-MNIST and GTSRB by their official 0-based labels (GTSRB's
target "class 8, 120 kph" is label 8); the mapping is spelled out next to each setting below.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.core.artefacts import Artefact, ArtefactStore, config_key, get_or_compute
from workbench.core.attacks import Attack, PoisonConfig, backdoor_test_set, make_attack
from workbench.core.data import ImageDataset, dataset_spec, load_splits
from workbench.core.runtime import child_seed
from workbench.core.scales import pick, resolve_scale
from workbench.core.training import TrainConfig, TrainedModel, get_or_train
from workbench.core.validation import WorkbenchError, check_name
from workbench.defenses.lred import DetectionResult, EstimationResult, LREDConfig, detect, detection_images
from workbench.repro.paper_numbers import (
    LRED_CLASSIFIERS_PER_GROUP,
    LRED_TABLE1,
    LRED_TABLE2,
    LRED_TABLE3,
    LRED_TABLE4,
    LRED_TABLE6,
    LRED_TABLE6_CLEAN,
    Published,
    printed_p_value,
)
from workbench.repro.presets import ModelRecipe
from workbench.repro.results import ColdRunClock, ResultTable


@dataclass(frozen=True)
class AttackSetting:
    """One attack of the paper: an additive pattern, its target, its source classes and the backdoor training images
    per source class (their clean originals are removed, App. A.4.4). `pattern=None` is a clean model."""

    dataset: str
    pattern: str | None
    target: int
    sources: tuple[int, ...]
    count_per_source: int
    note: str = ""

    def clean(self) -> AttackSetting:
        """The clean counterpart: same dataset and recipe, no poisoning."""
        return replace(self, pattern=None, sources=(), count_per_source=0, note="clean")

    def attack(self, seed: int, amplitude: float | None = None) -> Attack | None:
        """The trigger; patterns with a random place ("local_square") draw it from `seed`, one per attack.
        `amplitude` overrides the paper's perturbation size (None keeps it)."""
        if self.pattern is None:
            return None
        return make_attack("additive", pattern=self.pattern, seed=seed, amplitude=amplitude)


def _all_but(target: int, num_classes: int = 10) -> tuple[int, ...]:
    return tuple(c for c in range(num_classes) if c != target)


#: Table 2's groups on CIFAR-10 (App. A.4): global pattern, target "class 10" (truck, 9), sources "1" / "1, 7, 9"
#: (0 / 0, 6, 8) / all; local pattern, target "class 2" (automobile, 1), sources "1" / "1, 5, 6" (0 / 0, 4, 5) / all;
#: 150 / 50 / 15 and 900 / 300 / 100 backdoor images per source class; C-0 the clean control group.
GROUPS: dict[str, AttackSetting] = {
    "G-1": AttackSetting("cifar10", "lred_global", 9, (0,), 150),
    "G-3": AttackSetting("cifar10", "lred_global", 9, (0, 6, 8), 50),
    "G-9": AttackSetting("cifar10", "lred_global", 9, _all_but(9), 15),
    "L-1": AttackSetting("cifar10", "local_square", 1, (0,), 900),
    "L-3": AttackSetting("cifar10", "local_square", 1, (0, 4, 5), 300),
    "L-9": AttackSetting("cifar10", "local_square", 1, _all_but(1), 100),
    "C-0": AttackSetting("cifar10", None, 9, (), 0),
}

#: Table 4's attacks on other datasets (App. A.8.1). CIFAR-100 is not obtainable here and is left out.
OTHER_DATASETS: dict[str, AttackSetting] = {
    "mnist": AttackSetting("mnist", "local_chessboard", 8, (4, 6, 9), 500,
                           "sources '5, 7, 10' and target '9' read 1-based (digits 4, 6, 9 -> 8)"),
    "fashion-mnist": AttackSetting("fashion-mnist", "pixel", 3, (1,), 900,
                                   "source 1 and target 3 read as official labels (trouser -> dress)"),
    "gtsrb": AttackSetting("gtsrb", "local_square", 8, (13, 14, 15, 16, 17, 18, 19, 20, 24, 25, 27, 28, 29, 30), 30,
                           "14 slow-down/stop signs -> 120 kph (8); 18, 19 restore two indices garbled in our copy"),
}


class Budget(NamedTuple):
    """How long one dataset's classifiers train: images (None = the whole training split) and epochs."""

    train_size: int | None
    epochs: int


@dataclass(frozen=True)
class LREDPreset:
    """Sizes of the L-RED tables at one scale.

    Args:
        models_per_group: independently trained (seeded) classifiers per group of Table 2 (paper: 10).
        model, model_options, train_size, epochs, lr, augment: the CIFAR-10 classifiers' recipe.
        other_recipes: training images and epochs of Table 4's classifiers per dataset (LeNet-5 on MNIST, the
            CIFAR-10 model elsewhere; no augmentation, App. A.8.2).
        amplitudes: pattern -> perturbation size replacing the paper's (a named deviation: patterns the small
            models do not learn at the paper's size within the preset's training budget).
        scale_counts: datasets whose backdoor images per source class are scaled by our per-class training images
            over the paper's (keeps each source class's poisoned share the paper's on a smaller training set; the
            others keep the paper's counts).
        detection: the L-RED settings (step delta, max_norm) used by every method.
        images_per_class, images_per_class_small: clean detection images per class for RED-A/U/P and RED-A'.
        other_datasets: Table 4's datasets.
    """

    models_per_group: int
    model: str
    model_options: tuple[tuple[str, Any], ...]
    train_size: int | None
    epochs: int
    lr: float
    augment: str
    other_recipes: dict[str, Budget]
    scale_counts: tuple[str, ...]
    detection: LREDConfig
    amplitudes: dict[str, float] = field(default_factory=dict)
    images_per_class: int = 8
    images_per_class_small: int = 2
    other_datasets: tuple[str, ...] = ("mnist", "fashion-mnist", "gtsrb")
    groups: tuple[str, ...] = tuple(GROUPS)


_SMALL_CNN = (("widths", (16, 32, 32, 64)),)

#: MNIST keeps the paper's 500 backdoor images per source class at every scale although only ~760 images per class
#: exist here (train split missing): scaled to the paper's share (63) the faint chessboard is not learned.

_ALL_DATASETS = ("cifar10", *OTHER_DATASETS)

LRED_PRESETS = {
    # smoke: plumbing only (models learn nothing); counts scaled to the 2,000-image subsets
    "smoke": LREDPreset(models_per_group=1, model="resnet_small", model_options=_SMALL_CNN, train_size=2000, epochs=1,
                        lr=0.2, augment="crop_flip", other_recipes={"mnist": Budget(2000, 1)},
                        scale_counts=_ALL_DATASETS, detection=LREDConfig(step=0.2, max_norm=3.0, max_iterations=10),
                        images_per_class=2, images_per_class_small=1, other_datasets=("mnist",),
                        groups=("G-1", "C-0")),
    # cpu: measured with seed-0 pilots of this recipe, the paper's +2/255 global and +50/255 local patterns reach only
    # 5 % and 37 % ASR (+4/255 global: 6 %); +8/255 and +100/255 reach 86 % and 92 %. delta 0.04: a backdoor
    # pattern's norm (~0.9) takes ~20 steps, a whole RED-A run ~25 s on 2 cores
    "cpu": LREDPreset(models_per_group=3, model="resnet_small", model_options=_SMALL_CNN, train_size=20_000,
                      epochs=12, lr=0.2, augment="none",
                      other_recipes={"mnist": Budget(None, 30), "fashion-mnist": Budget(20_000, 12),
                                     "gtsrb": Budget(None, 12)},
                      scale_counts=("fashion-mnist", "gtsrb"), detection=LREDConfig(step=0.04, max_norm=6.0),
                      amplitudes={"lred_global": 8 / 255, "local_square": 100 / 255}),
    # gpu: the paper's ResNet-18 and detection settings on 3 classifiers per group (paper: 10) for 40 epochs
    "gpu": LREDPreset(models_per_group=3, model="resnet18", model_options=(), train_size=None, epochs=40, lr=0.1,
                      augment="crop_flip",
                      other_recipes={"mnist": Budget(None, 20), "fashion-mnist": Budget(None, 20),
                                     "gtsrb": Budget(None, 40)},
                      scale_counts=(), detection=LREDConfig()),
    # paper: ResNet-18, 100 epochs (App. A.4); lr and schedule are the workbench's (the paper: lr 1e-3, batch 32)
    "paper": LREDPreset(models_per_group=10, model="resnet18", model_options=(), train_size=None, epochs=100, lr=0.1,
                        augment="crop_flip",
                        other_recipes={"mnist": Budget(None, 60), "fashion-mnist": Budget(None, 60),
                                       "gtsrb": Budget(None, 100)},
                        scale_counts=(), detection=LREDConfig()),
}

#: The paper's per-class training images (50,000 CIFAR-10 / 60,000 MNIST and Fashion-MNIST images over 10 classes;
#: 26,640 GTSRB images over 43 classes), for `scale_counts`.
PAPER_IMAGES_PER_CLASS = {"cifar10": 5000, "mnist": 6000, "fashion-mnist": 6000, "gtsrb": 26_640 / 43}


def classifier_config(setting: AttackSetting, index: int, scale: str | None) -> TrainConfig:
    """The recipe of the `index`-th classifier of a setting: seed `index` for the weights, the data order, the
    poisoned images and the random parts of the pattern (an independent attack per classifier, as in the paper)."""
    preset = pick(scale, LRED_PRESETS)
    main = setting.dataset == "cifar10"
    budget = Budget(preset.train_size, preset.epochs) if main else preset.other_recipes[setting.dataset]
    train_size = budget.train_size
    poison = None
    if setting.pattern is not None:
        count = setting.count_per_source
        if setting.dataset in preset.scale_counts:
            images = train_size or len(load_splits(setting.dataset).train)
            per_class = images / dataset_spec(setting.dataset).num_classes
            count = max(1, round(count * per_class / PAPER_IMAGES_PER_CLASS[setting.dataset]))
        attack = setting.attack(index, preset.amplitudes.get(setting.pattern))
        poison = PoisonConfig(attack, target=setting.target, count_per_source=count,
                              sources=setting.sources, seed=index)
    if main:
        recipe = ModelRecipe(preset.model, preset.epochs, preset.lr, train_size=train_size,
                             model_options=preset.model_options, augment=preset.augment)
    elif setting.dataset == "mnist":  # Table 4's recipes (App. A.8.2) have no augmentation; LeNet-5 as in the paper
        recipe = ModelRecipe("lenet5", budget.epochs, 0.05, train_size=train_size, augment="none")
    else:  # the small CNN elsewhere
        recipe = ModelRecipe(preset.model, budget.epochs, preset.lr, train_size=train_size,
                             model_options=preset.model_options, augment="none")
    return recipe.config(setting.dataset, poison=poison, seed=index)


def get_classifier(config: TrainConfig, clock: ColdRunClock, *, device: str = "auto") -> TrainedModel:
    """`get_or_train` without a progress bar; `clock` counts its training time when it came from the cache."""
    trained = get_or_train(config, device=device, progress=False)
    clock.seen(trained.key, trained.loaded, trained.summary.train_seconds)
    return trained


@functools.lru_cache(maxsize=4)
def _cached_test_split(dataset: str, split_seed: int, holdout_fraction: float, train_size: int | None
                       ) -> ImageDataset:
    return load_splits(dataset, seed=split_seed, holdout_fraction=holdout_fraction, train_size=train_size).test


def held_out_test_split(config: TrainConfig) -> ImageDataset:
    """The test split a classifier was evaluated on (loaded once per dataset and split, then reused)."""
    return _cached_test_split(config.dataset, config.split_seed, config.holdout_fraction, config.train_size)


@dataclass
class Inspection:
    """One detector's verdict on one classifier, with what was true."""

    setting: str  # group ("G-1") or dataset name
    index: int
    method: str  # RED-A, RED-A', RED-U, RED-P
    attacked: bool
    true_target: int | None
    result: DetectionResult = field(repr=False)

    @property
    def success(self) -> bool:
        """Table 2's criterion: an attack detected with the correct target; on a clean model, no detection."""
        if not self.attacked:
            return not self.result.detected
        return self.result.detected and self.result.inferred_target == self.true_target

    def row(self) -> dict[str, Any]:
        return {"setting": self.setting, "index": self.index, "method": self.method, "attacked": self.attacked,
                "true target": self.true_target, "detected": self.result.detected,
                "inferred target": self.result.inferred_target, "success": self.success,
                "p-value": self.result.p_value, "seconds": self.result.estimation.seconds,
                "iterations (max)": int(self.result.estimation.iterations.max())}


def method_settings(method: str, preset: LREDPreset) -> tuple[str, int]:
    """(detector, clean images per class) of a Table 2 row: RED-A' is RED-A with fewer images (Sec. 4.3)."""
    check_name("method", method, ("RED-A", "RED-A'", "RED-U", "RED-P"))
    if method == "RED-A'":
        return "RED-A", preset.images_per_class_small
    return method, preset.images_per_class


def inspect(trained: TrainedModel, setting: AttackSetting, name: str, index: int, method: str, preset: LREDPreset,
            *, per_class: int | None = None, seed: int = 0, snapshot_every: int = 0,
            progress: bool = False) -> Inspection:
    """Run one detector on one classifier with clean images drawn (seeded) from its test split, which it never
    trained on (Sec. 4.3). `per_class` overrides the method's images per class (Table 4's GTSRB uses 1);
    `snapshot_every` keeps patterns for the annealing player."""
    detector, default_per_class = method_settings(method, preset)
    test = held_out_test_split(trained.config)
    x, y = detection_images(test.images, test.labels, per_class or default_per_class, test.num_classes,
                            seed=child_seed(seed, "detection_images", index))
    result = detect(trained.model, x.to(next(trained.model.parameters()).device), y, test.num_classes, detector,
                    preset.detection, snapshot_every=snapshot_every, progress=progress)
    attacked = setting.pattern is not None
    return Inspection(name, index, method, attacked, setting.target if attacked else None, result)


def inspection_address(model_key: str, method: str, preset: LREDPreset, *, per_class: int | None = None,
                       seed: int = 0) -> tuple[str, str, dict[str, Any]]:
    """(artefact kind, key, identity) of one detector's run on the classifier artefact `model_key`: the detector,
    its settings, the clean images per class and their seed (they are drawn from the classifier's own test split)."""
    detector, default_per_class = method_settings(method, preset)
    identity = {"model": model_key, "method": method, "detector": detector, "config": asdict(preset.detection),
                "per_class": per_class or default_per_class, "seed": seed}
    return "lred", config_key(identity), identity


def get_or_inspect(trained: TrainedModel, setting: AttackSetting, name: str, index: int, method: str,
                   preset: LREDPreset, *, per_class: int | None = None, seed: int = 0,
                   store: ArtefactStore | None = None) -> Inspection:
    """`inspect`, cached: the detection is stored with its whole estimation (patterns, weights, traces) and loads as
    computed, bit for bit (its `seconds` are those of the run that made it)."""
    kind, key, identity = inspection_address(trained.key, method, preset, per_class=per_class, seed=seed)

    def compute() -> tuple[Inspection, dict[str, torch.Tensor], dict[str, Any]]:
        found = inspect(trained, setting, name, index, method, preset, per_class=per_class, seed=seed)
        return found, stored_detection(found.result), {"summary": found.result.summary()}

    def restore(artefact: Artefact) -> Inspection:
        result = detection_from_stored(artefact.tensors, artefact.metrics["summary"])
        attacked = setting.pattern is not None
        return Inspection(name, index, method, attacked, setting.target if attacked else None, result)

    return get_or_compute(store or ArtefactStore(), kind, key, identity, compute=compute, restore=restore)[0]


def stored_detection(result: DetectionResult) -> dict[str, torch.Tensor]:
    """The tensors of a detection, for the artefact store (its scalars go into `summary()`)."""
    estimation = {f"estimation.{f.name}": getattr(result.estimation, f.name)
                  for f in fields(result.estimation) if f.name != "seconds"}
    tensors = {"source_weights": result.source_weights, "statistics": result.statistics, **estimation}
    return {name: value.detach().cpu().clone() for name, value in tensors.items()}  # views share memory: copies


def detection_from_stored(tensors: dict[str, torch.Tensor], summary: dict[str, Any]) -> DetectionResult:
    """The detection `stored_detection` and `DetectionResult.summary` wrote."""
    estimation = EstimationResult(seconds=summary["seconds"], **{
        name.removeprefix("estimation."): value for name, value in tensors.items() if name.startswith("estimation.")})
    return DetectionResult(summary["method"], summary["p_value"], summary["detected"], summary["inferred_target"],
                           tensors["source_weights"], tensors["statistics"], tuple(summary["gamma"]),
                           LREDConfig(**summary["config"]), summary["images_per_class"], estimation)


def collateral_damage(trained: TrainedModel, setting: AttackSetting) -> pd.DataFrame:
    """App. A.5, Def. A.1 / Fig. 2a: per non-target class, the fraction of its test images classified to the target
    with the attack's pattern (the one the classifier was poisoned with) embedded ("group misclassification") and
    without it (clean class confusion)."""
    if setting.pattern is None or trained.config.poison is None:
        raise WorkbenchError("collateral damage needs an attacked classifier, got a clean one")
    test = held_out_test_split(trained.config)
    attack = trained.config.poison.attack
    x_bd, y = backdoor_test_set(test, attack, setting.target)
    keep = test.labels != setting.target
    x_clean = test.float_images()[keep]
    device = next(trained.model.parameters()).device
    with torch.no_grad():
        hit_bd = _predict(trained.model, x_bd, device) == setting.target
        hit_clean = _predict(trained.model, x_clean, device) == setting.target
    rows = []
    for cls in _all_but(setting.target, test.num_classes):
        members = y == cls
        rows.append({"class": cls, "source": cls in setting.sources,
                     "misclassified with pattern": hit_bd[members].float().mean().item(),
                     "misclassified clean": hit_clean[members].float().mean().item()})
    return pd.DataFrame(rows)


def _predict(model: torch.nn.Module, x: torch.Tensor, device: torch.device, batch: int = 500) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch].to(device)).argmax(1).cpu() for i in range(0, len(x), batch)])


# ------------------------------------------------------------------------------------------------ tables
def _mean_std(values: Iterable[float]) -> str:
    values = torch.tensor(list(values), dtype=torch.float64)
    std = values.std().item() if len(values) > 1 else 0.0
    return f"{values.mean().item():.1f} ± {std:.1f}"


def table1(effects: pd.DataFrame, paper: dict[str, Published]) -> pd.DataFrame:
    """Table 1: ASR and CTA (mean ± std over a group's classifiers) beside the paper's.

    Args:
        effects: one row per classifier with columns group, ASR, CTA.
        paper: group -> the paper's row (`LRED_TABLE1`).
    """
    rows = []
    for group, members in effects.groupby("group", sort=False):
        published = paper.get(group, Published())
        rows.append({"group": group, "classifiers": len(members),
                     "ASR": _mean_std(members["ASR"]) if members["ASR"].notna().all() else "",
                     "CTA": _mean_std(members["CTA"]),
                     "paper ASR": published.mean_std("ASR"), "paper CTA": published.mean_std("CA")})
    return pd.DataFrame(rows)


def table2(inspections: pd.DataFrame, paper: dict[str, dict[str, int]]) -> pd.DataFrame:
    """Table 2: successful detections per method (rows) and group (columns), "measured (paper)"; `paper`:
    method -> group -> detections out of `LRED_CLASSIFIERS_PER_GROUP`."""
    out = {}
    for method, by_method in inspections.groupby("method", sort=False):
        cells = {}
        for group, members in by_method.groupby("setting", sort=False):
            published = paper.get(method, {}).get(group)
            shown = "-" if published is None else f"{published}/{LRED_CLASSIFIERS_PER_GROUP}"
            cells[group] = f"{int(members['success'].sum())}/{len(members)} ({shown})"
        out[method] = cells
    return pd.DataFrame(out).T.rename_axis("method").reset_index()


def table3(inspections: pd.DataFrame, paper: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Table 3: mean seconds per classifier per method and group, "measured (paper)" (paper: RTX 2080 Ti)."""
    out = {}
    for method, by_method in inspections.groupby("method", sort=False):
        out[method] = {group: f"{members['seconds'].mean():.1f} ({paper.get(method, {}).get(group, '-')})"
                       for group, members in by_method.groupby("setting", sort=False)}
    return pd.DataFrame(out).T.rename_axis("method").reset_index()


def speedup(inspections: pd.DataFrame, fast: str = "RED-A'", slow: str = "RED-A") -> float:
    """Total seconds of `slow` over total seconds of `fast` on the classifiers both inspected."""
    pivot = inspections.pivot_table(index=["setting", "index"], columns="method", values="seconds")
    both = pivot[[slow, fast]].dropna()
    if both.empty:
        raise WorkbenchError(f"no classifier was inspected by both {slow} and {fast}")
    return float(both[slow].sum() / both[fast].sum())


# ------------------------------------------------------------------------------------------------ the paper's tables
@dataclass(frozen=True)
class CollateralDamage:
    """[L-RED] App. A.5 Fig. 2 averaged over a group's classifiers: per class (0 at the target), the fraction of its
    test images classified to the target with the pattern and without it, and RED-A's final weights w for the true
    target."""

    target: int
    with_pattern: np.ndarray
    clean: np.ndarray
    weights: np.ndarray


#: the detectors of Table 2, in its row order
METHODS = ("RED-P", "RED-U", "RED-A", "RED-A'")


class LREDTables:
    """[L-RED]'s Tables 1-4 and Figs. 2-3 at one scale, each table returned as a `ResultTable` beside the paper's
    numbers. Classifiers are trained once and cached; `clock` records what a run from an empty cache would cost.

    Args:
        scale: the preset's scale (None: $WORKBENCH_SCALE, else "cpu").
        seed: seed of the detection images.
        device: where to compute.
        progress: progress bars over classifiers and inspections.
    """

    def __init__(self, scale: str | None = None, *, seed: int = 0, device: str = "auto", progress: bool = True) -> None:
        self.scale = resolve_scale(scale)
        self.preset = pick(self.scale, LRED_PRESETS)
        self.seed, self.device, self.progress = seed, device, progress
        self.clock = ColdRunClock()
        self.class_names = dataset_spec("cifar10").class_names

    def __str__(self) -> str:
        p = self.preset
        return (f"scale {self.scale}: {p.models_per_group} classifiers per group ({p.model}, {p.epochs} epochs on "
                f"{p.train_size or 'all'} images); detection {p.detection}")

    @functools.cached_property
    def classifiers(self) -> dict[tuple[str, int], TrainedModel]:
        """(group, index) -> the trained classifier."""
        keys = [(group, index) for group in self.preset.groups for index in range(self.preset.models_per_group)]
        return {(group, index): get_classifier(classifier_config(GROUPS[group], index, self.scale), self.clock,
                                               device=self.device)
                for group, index in tqdm(keys, desc="classifiers", disable=not self.progress)}

    def table1(self) -> ResultTable:
        """[L-RED] Table 1: ASR / CTA of each group, mean ± std over its classifiers."""
        # Table 1's CTA and ASR (source-class test images with the pattern, classified to the target), in %
        effects = pd.DataFrame([{"group": group, "index": index, **dict(zip(("CTA", "ASR"), trained.summary.percent(),
                                                                             strict=True))}
                                for (group, index), trained in self.classifiers.items()])
        return ResultTable("table1_attacks", f"L-RED Table 1 at scale {self.scale}: ASR / CTA (%) of each group, "
                           "mean ± std over classifiers.", table1(effects, LRED_TABLE1))

    @functools.cached_property
    def inspections(self) -> dict[tuple[str, int, str], Inspection]:
        """(group, index, method) -> one detector's verdict on one classifier."""
        return {(group, index, method): get_or_inspect(trained, GROUPS[group], group, index, method, self.preset,
                                                       seed=self.seed)
                for (group, index), trained in tqdm(self.classifiers.items(), desc="inspections",
                                                    disable=not self.progress)
                for method in METHODS}

    @functools.cached_property
    def _rows(self) -> pd.DataFrame:
        return pd.DataFrame([i.row() for i in self.inspections.values()])

    def inspections_table(self) -> ResultTable:
        return ResultTable("inspections", "Every detector run: p-value, inferred target, success and seconds.",
                           self._rows)

    def table2(self) -> ResultTable:
        """[L-RED] Table 2: successful detections per method and group."""
        return ResultTable("table2_detection", f"L-RED Table 2 at scale {self.scale}: successful detections, measured "
                           "(paper, out of 10).", table2(self._rows, LRED_TABLE2))

    def speedup(self) -> float:
        """RED-A's total seconds over RED-A''s on the same classifiers (Sec. 4.3)."""
        return speedup(self._rows)

    def table3(self) -> ResultTable:
        """[L-RED] Table 3: mean seconds per classifier on this machine (the paper's on an RTX 2080 Ti)."""
        return ResultTable("table3_time", f"L-RED Table 3: mean seconds per classifier on this CPU (paper: RTX 2080 "
                           f"Ti); RED-A' is {self.speedup():.1f}x faster than RED-A on the same classifiers.",
                           table3(self._rows, LRED_TABLE3))

    def small_image_detections(self) -> tuple[int, int]:
        """(attacks RED-A' detects with the correct target, attacked classifiers it inspected)."""
        small = self._rows[(self._rows.method == "RED-A'") & self._rows.attacked]
        return int(small.success.sum()), len(small)

    def fig2(self) -> CollateralDamage | None:
        """[L-RED] Fig. 2 on the L-1 group (None when the preset trains none)."""
        members = [i for i in range(self.preset.models_per_group) if ("L-1", i) in self.classifiers]
        if not members:
            return None
        setting = GROUPS["L-1"]
        damage = [collateral_damage(self.classifiers["L-1", i], setting) for i in members]
        with_pattern, clean = np.zeros(len(self.class_names)), np.zeros(len(self.class_names))
        with_pattern[damage[0]["class"]] = np.mean([d["misclassified with pattern"] for d in damage], axis=0)
        clean[damage[0]["class"]] = np.mean([d["misclassified clean"] for d in damage], axis=0)
        weights = np.mean([self.inspections["L-1", i, "RED-A"].result.estimation.weights[setting.target].numpy()
                           for i in members], axis=0)
        return CollateralDamage(setting.target, with_pattern, clean, weights)

    def fig3(self) -> list[tuple[str, DetectionResult, AttackSetting]]:
        """[L-RED] Fig. 3: RED-A's result on the first classifier of the G-1 and L-1 groups (those trained)."""
        return [(group, self.inspections[group, 0, "RED-A"].result, GROUPS[group]) for group in ("G-1", "L-1")
                if (group, 0) in self.classifiers]

    def table4(self) -> ResultTable:
        """[L-RED] Table 4 (and Table 6): RED-A on one attacked and one clean classifier per other dataset."""
        rows = []
        for dataset in self.preset.other_datasets:
            setting = OTHER_DATASETS[dataset]
            per_class = 1 if dataset == "gtsrb" else None
            row: dict[str, Any] = {"dataset": dataset, "note": setting.note}
            for kind, s in (("attacked", setting), ("clean", setting.clean())):
                trained = get_classifier(classifier_config(s, 0, self.scale), self.clock, device=self.device)
                found = get_or_inspect(trained, s, dataset, 0, "RED-A", self.preset, per_class=per_class,
                                       seed=self.seed)
                cta, asr = trained.summary.percent()
                row[f"{kind} p-value"] = f"{found.result.p_value:.3g}"
                row[f"paper {kind} p-value"] = printed_p_value(LRED_TABLE4[kind][dataset])
                row[f"{kind} detected"] = found.result.detected
                row[f"{kind} CTA"] = round(cta, 1)
                if kind == "attacked":
                    row["ASR"] = round(asr, 1)
                    row["inferred target (true)"] = f"{found.result.inferred_target} ({setting.target})"
            attacked, clean = LRED_TABLE6[dataset], LRED_TABLE6_CLEAN[dataset]
            row["paper ASR / CTA / clean CTA"] = f"{attacked.asr} / {attacked.ca} / {clean.ca}"
            rows.append(row)
        return ResultTable("table4_other_datasets", "L-RED Table 4 (and Table 6): RED-A p-values on attacked and "
                           "clean classifiers of other datasets.", pd.DataFrame(rows))

    @functools.cached_property
    def repeatable(self) -> bool:
        """RED-A on the first classifier once more: the same statistics (to float rounding), decision and target."""
        first = next(iter(self.classifiers))
        again = inspect(self.classifiers[first], GROUPS[first[0]], first[0], first[1], "RED-A", self.preset,
                        seed=self.seed).result
        before = self.inspections[(*first, "RED-A")].result
        # to float rounding: on the CPU the estimation repeats to the bit (tests/test_lred.py), but CUDA's index_add
        # sums with atomics, in another order from call to call, and the decision must not depend on that
        return (torch.allclose(again.statistics, before.statistics, rtol=1e-5, atol=0)
                and again.detected == before.detected and again.inferred_target == before.inferred_target)

    def acceptance(self) -> ResultTable:
        """Issue 4's acceptance checks; at `cpu` scale the notebook asserts them but for the named gaps."""
        rows = self._rows
        attacked = rows[rows.attacked]
        red_a, red_u = attacked[attacked.method == "RED-A"], attacked[attacked.method == "RED-U"]

        def few_sources(frame: pd.DataFrame) -> pd.DataFrame:
            return frame[frame.setting.str.endswith(("-1", "-3"))]

        collateral = 100 * np.mean([  # Def. A.1: pattern-induced misclassification of non-source classes to the target
            collateral_damage(trained, GROUPS[group]).query("~source")["misclassified with pattern"].mean()
            for (group, _), trained in self.classifiers.items() if group.endswith(("-1", "-3"))])
        false_alarms = int((~rows[(rows.method == "RED-A") & ~rows.attacked].success).sum())
        per_group = pd.Series([g for g, _ in self.classifiers]).value_counts().min()
        ratio, cold_minutes = self.speedup(), self.clock.cold_minutes()
        checks = pd.DataFrame([
            ("at least 3 classifiers per group", int(per_group), per_group >= 3),
            ("RED-A detects >= 80 % of the attacks with the correct target", 100 * red_a.success.mean(),
             red_a.success.mean() >= 0.8),
            ("RED-A flags at most 1 clean classifier", false_alarms, false_alarms <= 1),
            ("RED-U detects fewer 1- and 3-source attacks than RED-A",
             f"{int(few_sources(red_u).success.sum())} vs {int(few_sources(red_a).success.sum())}",
             few_sources(red_u).success.sum() < few_sources(red_a).success.sum()),
            ("mean collateral damage of the 1- and 3-source attacks (%, non-source classes; measured, no threshold)",
             round(collateral, 1), True),
            ("RED-A' at least 2x faster than RED-A", round(ratio, 2), ratio >= 2),
            ("same seed, same statistics and decisions", self.repeatable, self.repeatable),
            ("notebook under 2 hours from a cold cache (minutes)", round(cold_minutes, 1), cold_minutes < 120),
        ], columns=["claim", "measured", "holds"])
        return ResultTable("acceptance", f"Issue 4 acceptance checks at scale {self.scale}.", checks)


#: claims the `cpu` preset is known to miss (explained in notebook 31): reported, not asserted
CPU_KNOWN_GAPS = ("RED-U detects fewer 1- and 3-source attacks than RED-A",)
