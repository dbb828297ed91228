"""The defence matrix: every registered detector, purifier and repair run on the same models, one table per kind.

No single paper compares its defence with the other three papers' methods; this puts them side by side on the
same classifiers, the same clean data and the same triggered test images:

* detections: verdict, suspected target, the method's statistic and p-value, queries and seconds per model;
* purifications: CA, BA and ASR (%) of the defended pipeline, seconds and label queries per image;
* repairs: CA and ASR (%) of the repaired model, and the seconds the repair took.

A subject (a model under test) is one of the workbench's own models by name (`SUBJECTS`: CIFAR-10 BadNets,
Blended, WaNet and a clean twin, and L-RED's MNIST model) or a BackdoorBench record by path. Every cell is
stored as it finishes (`<folder>/cells/<subject>/<defence>.json`) and a re-run reuses the stored cells of the
same settings, so an interrupted matrix loses at most the cell that was running.

Settings per scale are in `MATRIX_PRESETS`; each defence runs with its paper's defaults except where the preset
names a smaller budget (listed in the preset's `deviations`, and printed in notebook 50).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from workbench.core.artefacts import config_key
from workbench.core.attacks import make_attack
from workbench.core.data import ImageDataset, load_splits, stratified_subset
from workbench.core.metrics import predict_labels
from workbench.core.runtime import make_generator
from workbench.core.scales import pick
from workbench.core.storage import atomic_write, atomic_write_json, sha256_file
from workbench.core.validation import WorkbenchError, check_name, check_path_component
from workbench.defenses import available, create, describe
from workbench.defenses.interface import Detection, Purification
from workbench.repro import bdmae as bdmae_repro
from workbench.repro import restore as restore_repro
from workbench.repro.lred import LRED_PRESETS, OTHER_DATASETS, classifier_config
from workbench.repro.results import ResultTable, save_figure

KINDS = ("detector", "purifier", "repair")
EXAMPLES = 4  # triggered images whose purified versions a cell keeps for the widget


@dataclass(frozen=True)
class Subject:
    """A model under test with the data every defence sees.

    Attributes:
        name: the row label.
        model: the classifier on [0, 1] images (a workbench model or `workbench.wrap(...)`).
        backdoored: whether it carries a backdoor (the truth the detections are scored against).
        target: the attack's target class (a clean twin keeps its backdoored sibling's, so its ASR shows how
            often the trigger lands on that class without a backdoor).
        clean_images, clean_labels: clean test images for CA.
        triggered_images, triggered_labels: triggered non-target test images and their true labels (BA, ASR).
        holdout: the defender's clean labelled data (detectors' clean images, REStore's calibration, repairs).
        note: where the subject comes from.
        fingerprint: identifies the weights (the artefact key, or the record file's hash): a stored cell of other
            weights is recomputed.
    """

    name: str
    model: nn.Module
    backdoored: bool
    target: int
    clean_images: torch.Tensor
    clean_labels: torch.Tensor
    triggered_images: torch.Tensor
    triggered_labels: torch.Tensor
    holdout: ImageDataset
    note: str = ""
    fingerprint: str = ""


@dataclass(frozen=True)
class MatrixPreset:
    """Sizes and settings of the matrix at one scale.

    Args:
        subjects: the default subjects (`SUBJECTS` names).
        images: clean and triggered test images per subject that purifiers and repaired models are evaluated on:
            the first `images` of notebook 11's draw of `draw` (BDMAE seeds each image by its index in the draw,
            so the labels equal notebook 11's on those images).
        draw: size of that draw (notebook 11's `main_images`).
        holdout: clean holdout images per subject (stratified; the detectors' and repairs' clean data).
        configs: per defence, the settings that differ from `create(name)`'s defaults (the papers').
        deviations: why each entry of `configs` departs from the paper, for the notebook's text.
        skipped: registered defences left out of the default set at this scale, with why (they run by name).
    """

    subjects: tuple[str, ...]
    images: int
    draw: int
    holdout: int
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    deviations: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def config(self, defence: str) -> dict[str, Any]:
        """The settings `defence` runs with (a copy; empty = its paper's defaults)."""
        return dict(self.configs.get(defence, {}))


_ALL = ("cifar10-badnets", "cifar10-blended", "cifar10-wanet", "cifar10-clean", "mnist-lred")
_LRED_SMOKE, _LRED_CPU = LRED_PRESETS["smoke"], LRED_PRESETS["cpu"]


def _bdmae_config(scale: str) -> dict[str, Any]:
    """Notebook 11's BDMAE settings at `scale`, so the matrix's BDMAE labels are notebook 11's."""
    return dataclasses.asdict(bdmae_repro.BDMAE_PRESETS[scale].bdmae)


_REPAIRS_SMOKE = {"fine-tuning": {"epochs": 1}, "nad": {"teacher_epochs": 1, "epochs": 1},
                  "anp": {"iterations": 5}, "i-bau": {"rounds": 1}, "head-replacement": {"epochs": 1}}

MATRIX_PRESETS: dict[str, MatrixPreset] = {
    # smoke: the plumbing of every cell in CI, on the smoke-scale models (barely trained)
    "smoke": MatrixPreset(
        subjects=("cifar10-badnets",), images=4, draw=bdmae_repro.BDMAE_PRESETS["smoke"].main_images,
        holdout=100,
        configs={**{name: {"images_per_class": _LRED_SMOKE.images_per_class, "max_iterations": 10}
                    for name in ("red-a", "red-u", "red-p")},
                 "red-a-prime": {"images_per_class": 1, "max_iterations": 10},
                 "restore-diagnosis": {"alpha": 0.2, "per_set": 3, "splitting": {"particles": 8, "survivors": 4,
                                                                                  "passes": 1, "max_levels": 3}},
                 "restore": {"alpha": 0.2, "per_set": 3, "splitting": {"particles": 8, "survivors": 4, "passes": 1,
                                                                       "max_levels": 3}},
                 "bdmae": _bdmae_config("smoke"), "diffpure": {"t_star": 0.01},
                 **_REPAIRS_SMOKE},
        deviations={"all": "smoke scale checks the plumbing only: every budget is cut to a few steps"}),
    # cpu: the committed / cached cpu-scale models, budgets cut so the whole matrix stays under an hour on 2 cores
    "cpu": MatrixPreset(
        subjects=_ALL, images=100, draw=bdmae_repro.BDMAE_PRESETS["cpu"].main_images, holdout=1000,
        configs={**{name: {"images_per_class": _LRED_CPU.images_per_class, "step": _LRED_CPU.detection.step,
                           "max_norm": _LRED_CPU.detection.max_norm} for name in ("red-a", "red-u", "red-p")},
                 "red-a-prime": {"images_per_class": _LRED_CPU.images_per_class_small,
                                 "step": _LRED_CPU.detection.step, "max_norm": _LRED_CPU.detection.max_norm},
                 "restore-diagnosis": {"splitting": {"particles": 20, "survivors": 10, "passes": 5,
                                                     "max_levels": 40}},
                 "restore": {"splitting": {"particles": 20, "survivors": 10, "passes": 5, "max_levels": 40}},
                 "bdmae": _bdmae_config("cpu"), "fine-tuning": {"epochs": 5}, "nad": {"teacher_epochs": 5, "epochs": 5},
                 "anp": {"iterations": 100}, "i-bau": {"rounds": 3}, "head-replacement": {"epochs": 20}},
        deviations={
            "red-*": "notebook 31's cpu settings: 8 clean images per class (RED-A': 2), its step and max norm",
            "restore": "importance splitting with n = 20, k = 10, T = 5, J_max = 40 (paper: 500, 250, 30, 40; "
                       "notebook 21's cpu preset: 40, 20, 10, 80): about 1/60 of the paper's queries",
            "repairs": "fine-tuning and NAD 5 epochs (paper: 10 / 20), ANP 100 mask updates (ANP paper: 2,000; "
                       "400 took 20 minutes on one model with two other jobs on the 2 cores), I-BAU 3 rounds, head "
                       "replacement 20 epochs (T&R's public code: 100), on 1,000 clean holdout images"},
        skipped={"diffpure": "100 diffusion-model passes per image (t* = 0.1 of 1,000 steps): 1.0 s per image with "
                             "the DDPM sampler on 2 CPU cores (notebook 11), some 17 more minutes over the matrix's "
                             "1,000 images, past the hour the cpu matrix is sized for; run it by name"}),
    # gpu: every defence at its own (the papers') settings on the gpu-scale models, on half the paper preset's images
    "gpu": MatrixPreset(subjects=_ALL, images=500, draw=bdmae_repro.BDMAE_PRESETS["gpu"].main_images, holdout=2500),
    "paper": MatrixPreset(subjects=_ALL, images=1000, draw=bdmae_repro.BDMAE_PRESETS["paper"].main_images,
                          holdout=2500),
}


# --- subjects --------------------------------------------------------------------------------------------------

def _from_setting(name: str, setting: bdmae_repro.Setting, preset: MatrixPreset, backdoored: bool, seed: int,
                  device: str, sources: Sequence[int] | None = None, note: str = "") -> Subject:
    trained, attack = setting.load(device=device)
    splits = setting.recipe.splits()
    x_clean, y_clean, x_bd, y_bd = bdmae_repro.evaluation_images(splits.test, attack, setting.target, preset.draw,
                                                                 seed, sources=sources)
    count = preset.images
    holdout = splits.holdout.subset(stratified_subset(splits.holdout.labels, min(preset.holdout, len(splits.holdout)),
                                                      make_generator(seed)))
    return Subject(name, trained.model, backdoored, setting.target, x_clean[:count], y_clean[:count], x_bd[:count],
                   y_bd[:count], holdout, note, trained.key)


def _bdmae_subject(attack_name: str | None) -> Callable[[MatrixPreset, str, int, str], Subject]:
    def build(preset: MatrixPreset, scale: str, seed: int, device: str) -> Subject:
        name = f"cifar10-{attack_name or 'clean'}"
        if attack_name is None:
            return _from_setting(name, bdmae_repro.clean_setting("cifar10", scale), preset, False, seed, device,
                                 note="clean twin of cifar10-badnets (BDMAE Table A.2's model)")
        if attack_name == "badnets":
            setting = bdmae_repro.badnets_setting("cifar10", make_attack("bdmae_badnets_colour"), scale)
            return _from_setting(name, setting, preset, True, seed, device, note="BDMAE's main setting (notebook 11)")
        if attack_name == "blended":
            setting = bdmae_repro.challenging_settings("cifar10", scale)["Blended"]
            return _from_setting(name, setting, preset, True, seed, device, note="BDMAE Table 3's Blended model")
        config = restore_repro.train_config("cifar10", "wanet", scale)
        setting = bdmae_repro.Setting(config, config.poison.attack, restore_repro.TARGET)
        return _from_setting(name, setting, preset, True, seed, device,
                             note="REStore Table I's WaNet model (k = 4, s = 0.5, noise mode, 5 % poison, target 3)")
    return build


def _mnist_subject(preset: MatrixPreset, scale: str, seed: int, device: str) -> Subject:
    lred_setting = OTHER_DATASETS["mnist"]
    config = classifier_config(lred_setting, 0, scale)
    setting = bdmae_repro.Setting(config, config.poison.attack, lred_setting.target)
    return _from_setting("mnist-lred", setting, preset, True, seed, device, sources=lred_setting.sources,
                         note="L-RED Table 4's MNIST LeNet-5 (chessboard pattern, sources 4, 6, 9 -> 8)")


SUBJECTS: dict[str, Callable[[MatrixPreset, str, int, str], Subject]] = {
    "cifar10-badnets": _bdmae_subject("badnets"),
    "cifar10-blended": _bdmae_subject("blended"),
    "cifar10-wanet": _bdmae_subject("wanet"),
    "cifar10-clean": _bdmae_subject(None),
    "mnist-lred": _mnist_subject,
}
"""The workbench's own subjects by name: builder(preset, scale, seed, device) -> Subject (trained or loaded)."""


def record_subject(path: str | Path, preset: MatrixPreset, seed: int = 0) -> Subject:
    """A BackdoorBench v2 record as a subject: its model and poisoned test images; the clean test images and the
    holdout come from the workbench's copy of the record's dataset (`clean_data`)."""
    from workbench.core.backdoorbench import load_backdoorbench

    record = load_backdoorbench(path)
    if record.poisoned_test is None:
        raise WorkbenchError(f"{path}: the record has no poisoned test set (bd_test), so BA and ASR cannot be measured")
    check_name("record dataset", record.dataset, ("cifar10", "gtsrb", "mnist"))
    splits = load_splits(record.dataset)
    gen = make_generator(seed)
    clean = splits.test.subset(stratified_subset(splits.test.labels, preset.images, gen))
    holdout = splits.holdout.subset(stratified_subset(splits.holdout.labels, min(preset.holdout, len(splits.holdout)),
                                                      gen))
    x_bd, bd = record.poisoned_images()[:preset.images], record.poisoned_test
    target = int(torch.mode(bd.bd_labels).values)
    return Subject(Path(path).parent.name, record.model, True, target, clean.float_images(), clean.labels, x_bd,
                   bd.labels[:preset.images], holdout, f"BackdoorBench record {path} ({record.model_name})",
                   sha256_file(Path(path)))


def load_subjects(names: Sequence[str] | None, preset: MatrixPreset, scale: str, *, seed: int = 0,
                  device: str = "auto") -> list[Subject]:
    """Subjects by `SUBJECTS` name or BackdoorBench record path (`.../attack_result.pt`); None = the preset's."""
    subjects = []
    for name in names or preset.subjects:
        if name in SUBJECTS:
            subjects.append(SUBJECTS[name](preset, scale, seed, device))
        elif str(name).endswith(".pt"):
            subjects.append(record_subject(name, preset, seed))
        else:
            raise WorkbenchError(f"unknown subject {name!r}: give one of {', '.join(SUBJECTS)} or the path of a "
                                 "BackdoorBench attack_result.pt")
    return subjects


# --- cells ------------------------------------------------------------------------------------------------------

def _column(name: str, **kwargs: Any) -> Any:
    """A cell field stored and tabled under `name` (the column names the tables and the stored JSON use)."""
    return field(metadata={"column": name}, **kwargs)


@dataclass(frozen=True, kw_only=True)
class Cell:
    """One defence on one model, as stored in `<folder>/cells/<model>/<defence>.json`.

    Attributes:
        identity: the hash of everything the result depends on (weights, defence, settings, images, seed).
        model, defence, kind: the subject's name, the registered defence and its kind.
        wall_seconds: wall-clock time of the whole cell (the defence's own `seconds` excludes loading).
    """

    identity: str
    model: str
    defence: str
    kind: str
    wall_seconds: float = _column("wall seconds")

    def stored(self) -> dict[str, Any]:
        """The cell as JSON values under its column names (the stored form, and a table row)."""
        return {f.metadata.get("column", f.name): (list(value) if isinstance(value := getattr(self, f.name), tuple)
                                                    else value) for f in dataclasses.fields(self)}

    @staticmethod
    def from_stored(data: dict[str, Any]) -> Cell:
        """The cell `stored()` wrote: a `NotApplicable` if it holds "n/a", else the cell type of its kind."""
        cls = NotApplicable if "n/a" in data else _CELL_TYPES[data["kind"]]
        values = {}
        for f in dataclasses.fields(cls):
            value = data[f.metadata.get("column", f.name)]
            values[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class DetectionCell(Cell):
    """A detector's verdict (`Detection`) scored against the truth: `correct` when the verdict is right and, on a
    backdoored model, the suspected target is the attack's."""

    detected: bool
    target: int
    correct: bool
    statistic: float
    p_value: float | None = _column("p-value")
    queries: int | None
    seconds: float
    class_scores: tuple[float, ...]


@dataclass(frozen=True, kw_only=True)
class PurificationCell(Cell):
    """A purifier's defended pipeline on the subject's clean and triggered images: CA, BA and ASR in %, seconds
    and label queries per image (None for white-box purifiers), and the labels it output."""

    CA: float
    BA: float
    ASR: float
    seconds_per_image: float = _column("s/image")
    queries_per_image: float | None = _column("queries/image")
    clean_labels: tuple[int, ...] = _column("clean labels")
    triggered_labels: tuple[int, ...] = _column("triggered labels")


@dataclass(frozen=True, kw_only=True)
class RepairCell(Cell):
    """The repaired model's CA and ASR (%) on the subject's images, and what the repair cost."""

    CA: float
    ASR: float
    seconds: float
    holdout_images: int = _column("holdout images")


@dataclass(frozen=True, kw_only=True)
class NotApplicable(Cell):
    """A defence that cannot run on this subject (e.g. Februus without a CAM layer), with why."""

    reason: str = _column("n/a")


_CELL_TYPES: dict[str, type[Cell]] = {"detector": DetectionCell, "purifier": PurificationCell, "repair": RepairCell}


@dataclass(frozen=True)
class PurifiedExamples:
    """The first triggered images of a purification cell, what the purifier made of them and its labels."""

    triggered: torch.Tensor
    purified: torch.Tensor
    labels: torch.Tensor

    def save(self, path: Path) -> None:
        tensors = {name: getattr(self, name).detach().cpu().contiguous()
                   for name in ("triggered", "purified", "labels")}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))

    @staticmethod
    def load(folder: str | Path, model: str, defence: str) -> PurifiedExamples | None:
        """The examples a cell of `folder` kept (None if the purifier outputs no images, or the cell has none)."""
        path = Path(folder) / "cells" / model / f"{defence}.safetensors"
        return PurifiedExamples(**load_file(str(path))) if path.is_file() else None


def _accuracies(clean_labels: torch.Tensor, triggered_labels: torch.Tensor, subject: Subject
                ) -> tuple[float, float, float]:
    """CA, BA and ASR (%) of these output labels on the subject's clean and triggered images."""
    return (100 * (clean_labels == subject.clean_labels).float().mean().item(),
            100 * (triggered_labels == subject.triggered_labels).float().mean().item(),
            100 * (triggered_labels == subject.target).float().mean().item())


def _detection_cell(subject: Subject, defence: str, config: dict[str, Any], seed: int,
                    found_by: dict[str, Any], header: dict[str, Any]) -> DetectionCell:
    found: Detection = create(defence, **config).detect(subject.model, subject.holdout.float_images(),
                                                        subject.holdout.labels, seed=seed)
    found_by[defence] = found.result
    correct = found.detected == subject.backdoored and (not subject.backdoored or found.target == subject.target)
    return DetectionCell(**header, detected=found.detected, target=found.target, correct=bool(correct),
                         statistic=found.statistic, p_value=found.p_value, queries=found.queries,
                         seconds=found.seconds, class_scores=tuple(found.class_scores.tolist()))


def _purification_cell(subject: Subject, defence: str, config: dict[str, Any], seed: int,
                       folder: Path, found: dict[str, Any], header: dict[str, Any]) -> PurificationCell:
    if defence == "restore":  # REStore's purifier first recovers the trigger on the defender's clean data
        config = {**config, "clean_images": subject.holdout.float_images(), "clean_labels": subject.holdout.labels,
                  "diagnosis": found.get("restore-diagnosis")}
    purifier = create(defence, **config)
    clean: Purification = purifier.purify(subject.model, subject.clean_images, seed=seed)
    triggered: Purification = purifier.purify(subject.model, subject.triggered_images, seed=seed)
    count = len(subject.clean_images) + len(subject.triggered_images)
    queries = None if clean.queries is None else (clean.queries + triggered.queries) / count
    if triggered.images is not None:
        PurifiedExamples(subject.triggered_images[:EXAMPLES], triggered.images[:EXAMPLES],
                         triggered.labels[:EXAMPLES]).save(folder / f"{defence}.safetensors")
    ca, ba, asr = _accuracies(clean.labels, triggered.labels, subject)
    return PurificationCell(**header, CA=ca, BA=ba, ASR=asr,
                            seconds_per_image=(clean.seconds + triggered.seconds) / count, queries_per_image=queries,
                            clean_labels=tuple(clean.labels.tolist()),
                            triggered_labels=tuple(triggered.labels.tolist()))


def _repair_cell(subject: Subject, defence: str, config: dict[str, Any], seed: int, header: dict[str, Any]
                 ) -> RepairCell:
    repaired = create(defence, **config).repair(subject.model, subject.holdout, seed=seed)
    ca, _, asr = _accuracies(predict_labels(repaired.model, subject.clean_images),
                             predict_labels(repaired.model, subject.triggered_images), subject)
    return RepairCell(**header, CA=ca, ASR=asr, seconds=repaired.seconds, holdout_images=repaired.holdout_images)


def _same_diagnosis(preset: MatrixPreset) -> bool:
    """Whether REStore's purifier and its diagnosis run with the same diagnosis settings in `preset`."""
    keys = ("setup", "output", "alpha", "per_set", "splitting")
    detector, purifier = preset.config("restore-diagnosis"), preset.config("restore")
    return all(detector.get(k) == purifier.get(k) for k in keys)


def _cell_identity(subject: Subject, defence: str, config: dict[str, Any], preset: MatrixPreset, seed: int) -> str:
    return config_key({"subject": subject.name, "weights": subject.fingerprint, "defence": defence, "config": config,
                       "images": preset.images, "draw": preset.draw, "holdout": preset.holdout, "seed": seed})


def run_cell(subject: Subject, defence: str, preset: MatrixPreset, folder: Path, *, seed: int = 0,
             found: dict[str, Any] | None = None) -> Cell:
    """One defence on one subject: the stored cell if its settings match, else computed and stored. A defence
    that does not apply to the subject (e.g. a white-box repair on a model it cannot train) is stored as
    `NotApplicable` with its reason instead of failing the matrix. `found` collects this subject's detector
    results computed in this run: REStore's purifier starts from REStore's diagnosis there when the two share
    their settings."""
    found = {} if found is None else found
    config = preset.config(defence)
    kind = describe(defence).kind
    cell_folder = folder / "cells" / check_path_component(subject.name, "subject name")
    path = cell_folder / f"{defence}.json"
    identity = _cell_identity(subject, defence, config, preset, seed)
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("identity") == identity:
            return Cell.from_stored(stored)
    cell_folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    header = {"identity": identity, "model": subject.name, "defence": defence, "kind": kind, "wall_seconds": 0.0}
    try:
        if kind == "detector":
            cell: Cell = _detection_cell(subject, defence, config, seed, found, header)
        elif kind == "purifier":
            shared = found if _same_diagnosis(preset) else {}
            cell = _purification_cell(subject, defence, config, seed, cell_folder, shared, header)
        else:
            cell = _repair_cell(subject, defence, config, seed, header)
    except WorkbenchError as exc:
        cell = NotApplicable(**header, reason=str(exc).splitlines()[0])
    cell = dataclasses.replace(cell, wall_seconds=time.perf_counter() - start)
    atomic_write_json(path, cell.stored())
    return cell


def undefended(subject: Subject) -> dict[str, Any]:
    """The subject's own CA, BA and ASR on the matrix's images (the "no defence" row)."""
    ca, ba, asr = _accuracies(predict_labels(subject.model, subject.clean_images),
                              predict_labels(subject.model, subject.triggered_images), subject)
    return {"model": subject.name, "defence": "no defence", "CA": ca, "BA": ba, "ASR": asr}


_CAPTIONS = {
    "detector": "Detections: verdict, suspected target, the method's statistic and p-value (L-RED), model queries "
                "(REStore; L-RED is white-box) and seconds.",
    "purifier": "Purifications: CA, BA and ASR (%) of the defended pipeline on the same images; seconds and label "
                "queries per image ('no defence': the model itself).",
    "repair": "Repairs: CA and ASR (%) of the repaired model on the same images; seconds of the repair.",
}


@dataclass
class Matrix:
    """The matrix's three tables (one row per model and defence) and its cells as stored."""

    scale: str
    detections: pd.DataFrame
    purifications: pd.DataFrame
    repairs: pd.DataFrame
    cells: list[Cell]

    def table(self, kind: str) -> ResultTable:
        """The table of one kind ("detector", "purifier" or "repair") with its caption, named "<kind>s"."""
        frame = {"detector": self.detections, "purifier": self.purifications, "repair": self.repairs}[
            check_name("defence kind", kind, KINDS)]
        return ResultTable(f"{kind}s", f"Defence matrix at scale {self.scale}. {_CAPTIONS[kind]}", frame)


_COLUMNS = {
    "detector": ["model", "defence", "backdoored", "true target", "model ASR", "detected", "target", "correct",
                 "statistic", "p-value", "queries", "seconds"],
    "purifier": ["model", "defence", "CA", "BA", "ASR", "s/image", "queries/image"],
    "repair": ["model", "defence", "CA", "ASR", "seconds", "holdout images"],
}


def _table(kind: str, rows: list[dict[str, Any]]) -> pd.DataFrame:
    columns = _COLUMNS[kind] + ["n/a"]
    frame = pd.DataFrame([{c: row.get(c, math.nan) for c in columns} for row in rows], columns=columns)
    if frame["n/a"].isna().all():
        frame = frame.drop(columns="n/a")
    return frame


def matrix_defences(preset: MatrixPreset, defences: Sequence[str] | None = None) -> list[str]:
    """The defences of a matrix, detectors first (REStore's purifier reuses its diagnosis): `defences`, or every
    registered detector, purifier and repair but the preset's `skipped`. An unknown name or a training-time defence
    is refused here, before any model is loaded."""
    names = (list(defences) if defences is not None else
             [name for kind in KINDS for name in available(kind) if name not in preset.skipped])
    for name in names:
        if describe(name).kind not in KINDS:
            raise WorkbenchError(f"{name!r} is a {describe(name).kind}-time defence: it trains a model on the poisoned "
                                 f"training set, so it has no cell in the matrix; choose among {', '.join(KINDS)}s")
    return sorted(names, key=lambda name: KINDS.index(describe(name).kind))


def run_matrix(subjects: Sequence[Subject], preset: MatrixPreset, folder: str | Path, *,
               defences: Sequence[str] | None = None, seed: int = 0, progress: bool = True,
               scale: str = "") -> Matrix:
    """Every defence in `defences` (default: every registered detector, purifier and repair but the preset's
    `skipped`) on every subject; cells are stored in `folder` as they finish and reused by a re-run with the same
    settings. Training-time defences are not matrix cells: they need the poisoned training set, not a trained
    model. `scale` only names the preset in the tables' captions."""
    from tqdm.auto import tqdm

    names = matrix_defences(preset, defences)
    folder = Path(folder)
    cells: list[Cell] = []
    rows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for subject in subjects:
        baseline = undefended(subject)
        rows["purifier"].append(baseline)
        rows["repair"].append({k: baseline[k] for k in ("model", "defence", "CA", "ASR")})
        found: dict[str, Any] = {}
        for defence in tqdm(names, desc=subject.name, disable=not progress):
            cell = run_cell(subject, defence, preset, folder, seed=seed, found=found)
            cells.append(cell)
            # the undefended model's measured ASR beside the truth: a backdoor the training did not instil (ASR near
            # the clean twin's) is in the model's history, not in its behaviour, and a detector cannot see it
            extra = {"backdoored": subject.backdoored, "true target": subject.target, "model ASR": baseline["ASR"]} \
                if cell.kind == "detector" else {}
            rows[cell.kind].append({**cell.stored(), **extra})
    matrix = Matrix(scale, _table("detector", rows["detector"]), _table("purifier", rows["purifier"]),
                    _table("repair", rows["repair"]), cells)
    for kind in KINDS:
        matrix.table(kind).frame.to_csv(folder / f"{kind}s.csv", index=False)
    return matrix


def default_folder(scale: str) -> Path:
    """Where the matrix of `scale` is stored: `outputs/<scale>/matrix` in the checkout (else the working folder)."""
    from workbench.core.runtime import PROJECT_ROOT

    return (PROJECT_ROOT or Path.cwd()) / "outputs" / scale / "matrix"


def build_matrix(scale: str, *, subjects: Sequence[str] | None = None, defences: Sequence[str] | None = None,
                 folder: str | Path | None = None, seed: int = 0, device: str = "auto",
                 progress: bool = True) -> tuple[Matrix, Path]:
    """Load (or train) the subjects, run every defence on each, and write the three tables as CSV and Markdown
    (`<folder>/matrix.md`) and the heat map (`figures/50_defence_matrix_<scale>_heatmap.png`).

    Returns:
        (the matrix, the heat map's path).
    """
    from workbench.viz.matrix import matrix_figure

    preset = pick(scale, MATRIX_PRESETS)
    folder = Path(folder) if folder is not None else default_folder(scale)
    matrix_defences(preset, defences)  # bad names fail before the subjects load (or train)
    loaded = load_subjects(subjects, preset, scale, seed=seed, device=device)
    matrix = run_matrix(loaded, preset, folder, defences=defences, seed=seed, progress=progress, scale=scale)
    figure = matrix_figure(matrix.detections, matrix.purifications, matrix.repairs,
                           f"Defence matrix at {scale} scale ({preset.images} clean + {preset.images} triggered "
                           "test images per model)")
    path = save_figure(figure, notebook="50_defence_matrix", name="heatmap", scale=scale)
    lines = [f"# Defence matrix at `{scale}` scale", ""]
    lines += [f"- {s.name}: {s.note}" for s in loaded]
    for kind in KINDS:
        lines += ["", f"## {kind}s", "", matrix.table(kind).frame.to_markdown(index=False, floatfmt=".4g")]
    atomic_write(folder / "matrix.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    return matrix, path
