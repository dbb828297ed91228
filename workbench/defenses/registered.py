"""The registered defences: thin adapters from `workbench.defenses.interface` to each method's own functions.

Every adapter takes its configuration as keyword arguments (the method's config dataclass fields, defaults the
paper's), validates its inputs at the boundary (`workbench.core.classifier.check_classifier`: shapes, [0, 1]
range, labels in range of the model's class count, which comes from the model, never from the labels) and
times the call.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from workbench.core.classifier import check_classifier, input_shape_of, num_classes_of, resolve_split
from workbench.core.data import ImageDataset
from workbench.core.diffusion import Diffusion
from workbench.core.diffusion_training import load_workbench_diffusion
from workbench.core.mae import MAERestorer
from workbench.core.mae_training import load_workbench_mae
from workbench.core.query import ACCESS_LEVELS, QueryModel
from workbench.core.runtime import child_seed
from workbench.core.training import TrainConfig
from workbench.core.validation import (
    WorkbenchError,
    check_fraction,
    check_labels,
    check_name,
    check_non_negative,
    check_positive_int,
    check_seed,
)
from workbench.defenses import lred, restore
from workbench.defenses.baselines.abl import ABLConfig, train_abl
from workbench.defenses.baselines.anp import ANPConfig, anp_with_masks
from workbench.defenses.baselines.diffpure import DiffPure
from workbench.defenses.baselines.dp import DPConfig, train_dp
from workbench.defenses.baselines.februus import Februus as _Februus
from workbench.defenses.baselines.finetune import FineTuneConfig, fine_tune, registered_model_name
from workbench.defenses.baselines.ibau import IBAUConfig, ibau
from workbench.defenses.baselines.nad import NADConfig, default_stages, nad
from workbench.defenses.baselines.patchcleanser import PatchCleanser as _PatchCleanser
from workbench.defenses.baselines.transforms import Blur as _Blur
from workbench.defenses.baselines.transforms import ShrinkPad as _ShrinkPad
from workbench.defenses.bdmae import BDMAE as _BDMAE
from workbench.defenses.bdmae import VARIANTS, BDMAEConfig
from workbench.defenses.interface import Detection, Purification, Repair, Training, register
from workbench.defenses.trap_replace import ReplaceConfig, TrapNet, replace_head, train_trap

# --- access --------------------------------------------------------------------------------------------------------

def white_box(model_or_query: nn.Module | QueryModel, method: str) -> nn.Module:
    """The model itself, for methods that need its gradients."""
    if isinstance(model_or_query, QueryModel):
        raise WorkbenchError(f"{method} is white-box (it uses the model's gradients): pass the nn.Module, not a "
                             "QueryModel")
    if not isinstance(model_or_query, nn.Module):
        raise WorkbenchError(f"{method}: pass a classifier (nn.Module or QueryModel), got {type(model_or_query)}")
    return model_or_query


def query_access(model_or_query: nn.Module | QueryModel, access: str, method: str) -> QueryModel:
    """A `QueryModel` with at least `access`: the caller's (checked), or a new one around the caller's module."""
    check_name("access level", access, ACCESS_LEVELS)
    if isinstance(model_or_query, QueryModel):
        if ACCESS_LEVELS.index(model_or_query.access) < ACCESS_LEVELS.index(access):
            raise WorkbenchError(f"{method} needs {access!r} access but the QueryModel gives {model_or_query.access!r};"
                                 f" create it with access={access!r}")
        return model_or_query
    input_shape_of(white_box(model_or_query, method))  # a clear error for a model without a declared input shape
    return QueryModel(model_or_query, access)


def as_dataset(data: ImageDataset | tuple[torch.Tensor, torch.Tensor], model: nn.Module, name: str = "clean_holdout"
               ) -> ImageDataset:
    """A set the defence trains on (a repair's clean holdout, a training-time defence's training set) as an
    `ImageDataset`: an `ImageDataset`, or (images in [0, 1] (N, C, H, W), labels (N,)), stored as uint8 like every
    training set here (exact for images that came from 8-bit files). Checked against `model`."""
    if isinstance(data, ImageDataset):
        classes = check_classifier(model, data.float_images(), name=f"{name} images")
        check_labels(data.labels, len(data), classes, name=f"{name} labels")
        return data
    if not (isinstance(data, tuple) and len(data) == 2):
        raise WorkbenchError(f"{name} must be an ImageDataset or a tuple (images, labels)")
    images, labels = data
    classes = check_classifier(model, images, name=f"{name} images")
    check_labels(labels, len(images), classes, name=f"{name} labels")
    label = "mnist" if images.shape[1] == 1 else "cifar10"  # a registered name: it only labels the progress bar
    return ImageDataset(label, images.mul(255).round().to(torch.uint8).cpu(), labels.long().cpu(),
                        tuple(str(k) for k in range(classes)), f"caller's {name}")


#: the `TrainConfig` fields a defence that trains takes as its `training` settings (the rest name data and model)
TRAINING_FIELDS = ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule",
                   "warmup_fraction", "label_smoothing", "augment")


def _refuse_unknown(settings: dict[str, Any], allowed: tuple[str, ...] | list[str], what: str) -> None:
    """Refuse keys of `settings` outside `allowed`, naming them and the choices (`what`: e.g. "training settings")."""
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise WorkbenchError(f"unknown {what} {unknown}; choose among {', '.join(allowed)}")


def _training_settings(training: dict[str, Any] | None) -> dict[str, Any]:
    """`training` checked: only `TRAINING_FIELDS`, with values `TrainConfig` accepts."""
    training = dict(training or {})
    _refuse_unknown(training, TRAINING_FIELDS, "training settings")
    TrainConfig(dataset="cifar10", model="lenet5", **training)  # checks the values (the names are placeholders)
    return training


def _training_recipe(model: nn.Module, data: ImageDataset, training: dict[str, Any] | None = None, seed: int = 0
                    ) -> TrainConfig:
    """The optimisation settings for training `model` on `data` as a `TrainConfig` (its defaults where `training`
    is silent); the config's dataset and model names only label the progress bar."""
    return TrainConfig(dataset=data.name, model=registered_model_name(model), seed=seed,
                       **_training_settings(training))


def _seeded(config: Any, seed: int) -> Any:
    return dataclasses.replace(config, seed=seed)


# --- detectors ----------------------------------------------------------------------------------------------------

class _LRED:
    """L-RED ([L-RED]): pattern estimation with annealed source weights (Alg. 1, Eqs. 3-8) and the order-statistic
    test (Sec. 3.2)."""

    method, config_class = "RED-A", lred.LREDConfig
    default_per_class = 8  # the workbench's cpu preset (the paper's Sec. 4.3 setting uses more; see notebook 31)

    def __init__(self, *, images_per_class: int | None = None, **config: Any) -> None:
        self.images_per_class = images_per_class or self.default_per_class
        self.config = lred.LREDConfig(**config)

    def detect(self, model_or_query: nn.Module | QueryModel, clean_images: torch.Tensor, clean_labels: torch.Tensor,
               *, num_classes: int | None = None, seed: int = 0) -> Detection:
        """Detect with `images_per_class` seeded clean images of every class drawn from the caller's clean set."""
        model = white_box(model_or_query, self.method)
        classes = check_classifier(model, clean_images, clean_labels, num_classes=num_classes, name="clean images")
        x, y = lred.detection_images(clean_images, clean_labels, self.images_per_class, classes, seed)
        start = time.perf_counter()
        found = lred.detect(model, x, y, classes, self.method, self.config)
        per_class = torch.full((classes,), -math.inf, dtype=torch.float64).scatter_reduce(
            0, found.estimation.targets.long(), found.statistics.double(), "amax")  # RED-P: best pair per target
        return Detection(self.name, found.detected, found.inferred_target, float(found.statistics.max()),
                         found.p_value, per_class, None, time.perf_counter() - start, found.summary(), found)


@register("red-a", "detector")
class REDA(_LRED):
    """L-RED's RED-A: annealed source weights (Sec. 3.1, Eqs. 7-8), 8 clean images per class."""

    name = "red-a"


@register("red-a-prime", "detector")
class REDAPrime(_LRED):
    """L-RED's RED-A' (Sec. 4.3): RED-A on only 2 clean images per class."""

    name, default_per_class = "red-a-prime", 2


@register("red-u", "detector")
class REDU(_LRED):
    """L-RED's RED-U (Sec. 4.3): source weights frozen uniform, the ablation of the annealing."""

    name, method = "red-u", "RED-U"


@register("red-p", "detector")
class REDP(_LRED):
    """L-RED's RED-P (Sec. 4.3): one estimation per (source, target) pair."""

    name, method = "red-p", "RED-P"


@dataclasses.dataclass(frozen=True)
class RestoreSettings:
    """REStore's diagnosis settings (Sec. III-D, IV-B).

    Args:
        setup: "PI", "FI" or "PG" (App. G-H).
        output: scorer output of Eq. 4: "logits", "probits" or "labels" (sets the query access needed).
        alpha: alpha_def; None = calibrated on the clean images (App. G: the ratio that halves clean accuracy).
        per_set: |X_test^cl| (min(K - 1, 9) in the paper).
        splitting: importance-splitting settings overriding the paper's n = 500, k = 250, T = 30, J_max = 40.
    """

    setup: str = "PI"
    output: str = "probits"
    alpha: float | None = None
    per_set: int = 9
    splitting: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        check_name("setup", self.setup, restore.SETUPS)
        check_name("scorer output", self.output, restore.OUTPUTS)
        if self.alpha is not None:
            check_fraction(self.alpha, "alpha (alpha_def)")
        check_positive_int(self.per_set, "per_set")
        object.__setattr__(self, "splitting", tuple(sorted(dict(self.splitting).items())))

    def diagnose(self, query: QueryModel, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 seed: int) -> restore.Diagnosis:
        """alpha_def, then importance splitting on every class (Sec. IV-D)."""
        alpha = self.alpha
        if alpha is None:
            alpha, _ = restore.calibrate_alpha(query, self.setup, images, labels, seed=seed)
        setup = restore.RestoreSetup(self.setup, alpha)
        config = restore.splitting_config(setup, tuple(images.shape[1:]), **dict(self.splitting))
        return restore.diagnose(query, images, labels, setup, output=self.output, config=config,
                                per_set=min(self.per_set, num_classes - 1), num_classes=num_classes, seed=seed)


def _restore_settings(setup: str, output: str, alpha: float | None, per_set: int,
                      splitting: dict[str, Any] | None) -> RestoreSettings:
    return RestoreSettings(setup, output, alpha, per_set, tuple((splitting or {}).items()))


@register("restore-diagnosis", "detector")
class RestoreDetector:
    """REStore's diagnosis ([REStore] Sec. III-D2, IV-D): the class whose tau -> rho map lies
    highest is the suspect; a backdoor is reported when its lead over the runner-up, in log10 rho, is at least
    `min_margin` (the paper compares maps by eye, Fig. 3-5; the threshold is the workbench's, 1 = ten times more
    probable by default)."""

    def __init__(self, *, setup: str = "PI", output: str = "probits", alpha: float | None = None, per_set: int = 9,
                 splitting: dict[str, Any] | None = None, min_margin: float = 1.0) -> None:
        self.settings = _restore_settings(setup, output, alpha, per_set, splitting)
        self.min_margin = check_non_negative(min_margin, "min_margin")

    def detect(self, model_or_query: nn.Module | QueryModel, clean_images: torch.Tensor, clean_labels: torch.Tensor,
               *, num_classes: int | None = None, seed: int = 0) -> Detection:
        """tau -> rho maps of every class on the clean images (Sec. IV-D); the verdict and suspect from them."""
        query = query_access(model_or_query, restore.OUTPUTS[self.settings.output], "REStore")
        classes = query.num_classes if num_classes is None else num_classes_of(query._model, num_classes,
                                                                                query.input_shape)
        before, start = query.queries, time.perf_counter()
        found = self.settings.diagnose(query, clean_images, clean_labels, classes, seed)
        scores = torch.tensor(found.log10_rho_at_level, dtype=torch.float64)
        return Detection("restore-diagnosis", bool(found.margin >= self.min_margin), int(found.suspect),
                         float(found.margin), None, scores, query.queries - before, time.perf_counter() - start,
                         found.summary(), found)


# --- test-time purifiers ------------------------------------------------------------------------------------------

@register("bdmae", "purifier")
class BDMAEPurifier:
    """BDMAE ([BDMAE] Alg. 1-3): blind purification with a masked autoencoder on label
    access. `variant` picks the paper's ablations ("full", "base_i", "base_l", "no_refinement", "fixed_threshold"
    and the authors' code's "authors_seed"); other keywords are `BDMAEConfig` fields. `restorer` defaults to the
    workbench's committed tiny MAE (images of another size are resized to it and back)."""

    config_class = BDMAEConfig

    def __init__(self, *, variant: str = "full", restorer: MAERestorer | None = None, batch_images: int = 64,
                 **config: Any) -> None:
        self.config = dataclasses.replace(VARIANTS[check_name("BDMAE variant", variant, VARIANTS)], **config)
        self.batch_images = check_positive_int(batch_images, "batch_images")
        self.restorer = restorer

    def purify(self, model_or_query: nn.Module | QueryModel, images: torch.Tensor, *, seed: int = 0
               ) -> Purification:
        """Trigger scores (Alg. 1), refinement (Alg. 2) and adaptive restoration (Sec. 4.4) of every image; each
        image draws its randomness from (seed, its index), so splitting a test set into calls changes nothing."""
        query = query_access(model_or_query, "label", "BDMAE")
        if self.restorer is None:
            self.restorer = MAERestorer(load_workbench_mae(device=str(query.device)))
        start = time.perf_counter()
        result = _BDMAE(query, self.restorer, self.config, self.batch_images).purify(images, seed=seed)
        return Purification("bdmae", result.purified, result.labels, result.queries, time.perf_counter() - start,
                            result.to_json_dict(), result)


class _Transform:
    """A purifier that transforms each image and classifies the result (one label query per image)."""

    name = ""
    config_class: type = object  # the transform's dataclass: (classifier, **settings)

    def __init__(self, **config: Any) -> None:
        self.check(config)
        self.config = config

    def check(self, config: dict[str, Any]) -> None:
        """Validate the settings now, not at the first `purify` (the classifier is not known yet)."""
        self.config_class(None, **config)

    def defence(self, query: QueryModel, **config: Any) -> Any:
        """The transform for `query`'s classifier."""
        return self.config_class(query, **config)

    def purify(self, model_or_query: nn.Module | QueryModel, images: torch.Tensor, *, seed: int = 0
               ) -> Purification:
        query = query_access(model_or_query, "label", self.name)
        defence = self.defence(query, **self.config)
        before, start = query.queries, time.perf_counter()
        purified = defence.purify(images, seed=seed) if hasattr(defence, "purify") else None
        labels = defence.predict(images, seed=seed) if purified is None else query.labels(purified)
        return Purification(self.name, purified, labels.cpu(), query.queries - before, time.perf_counter() - start,
                            dict(self.config))


@register("blur", "purifier")
class Blur(_Transform):
    """Gaussian blur ([BDMAE] App. C baseline: 3 x 3 kernel, `sigma` 0.5 weak / 1.0 strong)."""

    name, config_class = "blur", _Blur


@register("shrinkpad", "purifier")
class ShrinkPad(_Transform):
    """ShrinkPad ([ShrinkPad]; [BDMAE] App. C baseline: `pad` 4 weak / 8 strong on 32 px images)."""

    name, config_class = "shrinkpad", _ShrinkPad


@register("patchcleanser", "purifier")
class PatchCleanser(_Transform):
    """PatchCleanser's double masking on labels ([PatchCleanser]; [BDMAE] App. C); no purified images."""

    name, config_class = "patchcleanser", _PatchCleanser


@register("diffpure", "purifier")
class DiffPurePurifier(_Transform):
    """DiffPure ([DiffPure]; [BDMAE] Sec. 5.1, Table 1): diffuse each image to `t_star` and run the reverse
    process back (`sampler` "ddpm" or "sde"), then classify (one label query per image). `diffusion` defaults to
    the workbench's committed tiny 32 px model; any diffusers DDPM folder loads with
    `workbench.core.diffusion.load_diffusion`. Other keywords are `DiffPure` fields."""

    name, config_class = "diffpure", DiffPure

    def __init__(self, *, diffusion: Diffusion | None = None, **config: Any) -> None:
        super().__init__(**config)
        self.diffusion = diffusion

    def check(self, config: dict[str, Any]) -> None:
        """The settings that do not need the diffusion model, checked now (it loads at the first `purify`)."""
        _refuse_unknown(config, [f.name for f in dataclasses.fields(DiffPure) if f.name != "diffusion"],
                       "DiffPure settings")
        DiffPure.check_settings(**config)

    def defence(self, query: QueryModel, **config: Any) -> DiffPure:
        self.diffusion = self.diffusion or load_workbench_diffusion(device=str(query.device))
        return DiffPure(self.diffusion, **config)


@register("februus", "purifier")
class Februus:
    """Februus ([Februus]; [BDMAE] App. C): inpaint the Grad-CAM++ region with the MAE (white-box). `layer`:
    the module whose output is the last convolutional feature map (e.g. "layer4" of a torchvision ResNet); by
    default a workbench model's own, or the `cam_layer` a wrapped model declares (BackdoorBench records do)."""

    def __init__(self, *, restorer: MAERestorer | None = None, method: str = "gradcam++", threshold: float = 0.7,
                 layer: str | None = None) -> None:
        check_fraction(threshold, "threshold (of the normalised CAM)", allow_one=False)
        self.restorer, self.method, self.threshold, self.layer = restorer, method, threshold, layer

    def purify(self, model_or_query: nn.Module | QueryModel, images: torch.Tensor, *, seed: int = 0
               ) -> Purification:
        """Inpaint each image's CAM region above `threshold` with the MAE, then classify ([BDMAE] App. C)."""
        model = white_box(model_or_query, "Februus")
        check_classifier(model, images)
        self.restorer = self.restorer or MAERestorer(load_workbench_mae(device=str(next(model.parameters()).device)))
        defence = _Februus(model, self.restorer, self.method, self.threshold, self.layer)
        start = time.perf_counter()
        purified = defence.purify(images, seed=seed)
        with torch.no_grad():
            labels = torch.cat([model(b).argmax(1) for b in purified.split(256)]).cpu()
        return Purification("februus", purified, labels, None, time.perf_counter() - start,
                            {"method": self.method, "threshold": self.threshold, "layer": self.layer})


@register("restore", "purifier")
class RestorePurifier:
    """REStore's purification (Sec. III-D3, IV-F): diagnose on the defender's clean images (`clean_images`,
    `clean_labels`), estimate the suspect class's trigger from its realisations, choose the strongest transform
    that keeps clean accuracy within `max_accuracy_drop`, then apply it to every input. The recovery runs once per
    model (the first `purify` call pays for it; `details["recovery_queries"]` says how much). `diagnosis`: a
    diagnosis of the model on these clean images with these settings already made (e.g. the `result` of
    `restore-diagnosis`'s `Detection`), so the recovery starts from it instead of diagnosing again."""

    def __init__(self, *, clean_images: torch.Tensor, clean_labels: torch.Tensor, setup: str = "PI",
                 output: str = "probits", alpha: float | None = None, per_set: int = 9,
                 splitting: dict[str, Any] | None = None, transform: str = "subtract", low_pass: bool = False,
                 max_accuracy_drop: float = 0.05, diagnosis: restore.Diagnosis | None = None) -> None:
        if diagnosis is not None and not isinstance(diagnosis, restore.Diagnosis):
            raise WorkbenchError(f"diagnosis must be a REStore Diagnosis (Detection.result of restore-diagnosis), "
                                 f"got {type(diagnosis).__name__}")
        self.diagnosis = diagnosis
        self.clean = (clean_images, clean_labels)
        self.settings = _restore_settings(setup, output, alpha, per_set, splitting)
        check_name("purification", transform, restore.TRANSFORMS)
        check_fraction(max_accuracy_drop, "max_accuracy_drop", allow_zero=True)
        self.transform, self.low_pass, self.max_accuracy_drop = transform, low_pass, max_accuracy_drop
        self._recovered: dict[int, tuple[restore.Purifier, dict[str, Any]]] = {}

    def recover(self, query: QueryModel, seed: int = 0) -> tuple[restore.Purifier, dict[str, Any]]:
        """The purifier chosen for `query`'s model (computed once)."""
        if id(query._model) not in self._recovered:
            images, labels = self.clean
            classes = check_classifier(query._model, images, labels, name="clean images")
            before = query.queries
            found = self.diagnosis
            if found is None:
                found = self.settings.diagnose(query, images, labels, classes, seed)
            estimate = restore.estimate_trigger(found.setup, found.realisations(found.suspect), images)
            purifier, tried = restore.select_purifier(query, estimate, images, labels, transform=self.transform,
                                                      low_pass=self.low_pass,
                                                      max_accuracy_drop=self.max_accuracy_drop)
            details = {"suspect": found.suspect, "margin": found.margin, "strength": purifier.strength,
                       "strengths_tried": [dataclasses.asdict(t) for t in tried],
                       "recovery_queries": query.queries - before}
            self._recovered[id(query._model)] = (purifier, details)
        return self._recovered[id(query._model)]

    def purify(self, model_or_query: nn.Module | QueryModel, images: torch.Tensor, *, seed: int = 0
               ) -> Purification:
        """Apply the purifier chosen on the clean images (Sec. III-D3) to `images`; `queries` counts only the
        label queries on `images` (the recovery's are in `details["recovery_queries"]`)."""
        query = query_access(model_or_query, restore.OUTPUTS[self.settings.output], "REStore")
        start = time.perf_counter()
        purifier, details = self.recover(query, seed)
        check_classifier(query._model, images)
        before = query.queries
        purified = purifier(images)
        labels = query.labels(purified).cpu()
        return Purification("restore", purified, labels, query.queries - before, time.perf_counter() - start,
                            details, purifier)


# --- post-training repairs ----------------------------------------------------------------------------------------

class _Repair:
    """A repair trained on the clean holdout through the method's own function and config dataclass."""

    name = ""
    config_class: type = object
    #: the method's own function, `function(model, holdout, config, device=, progress=) -> repaired model` (set by
    #: the subclasses that do not override `run`)
    function: Callable[..., nn.Module]

    def __init__(self, *, device: str = "auto", progress: bool = False, **config: Any) -> None:
        self.config = self.config_class(**config)
        self.device, self.progress = device, progress

    def run(self, model: nn.Module, holdout: ImageDataset, config: Any) -> tuple[nn.Module, Any]:
        """(repaired model, the method's result object if it has one beyond the model)."""
        return self.function(model, holdout, config, device=self.device, progress=self.progress), None

    def repair(self, model: nn.Module, clean_holdout: ImageDataset | tuple[torch.Tensor, torch.Tensor], *,
               seed: int = 0) -> Repair:
        holdout = as_dataset(clean_holdout, model)
        config = _seeded(self.config, seed)
        start = time.perf_counter()
        repaired, result = self.run(model, holdout, config)
        details = dataclasses.asdict(config)
        if isinstance(result, dict):  # what the adapter chose (NAD's stages, the split) overrides the defaults
            details.update(result)
        return Repair(self.name, repaired.eval(), time.perf_counter() - start, len(holdout), details, result)


@register("fine-tuning", "repair")
class FineTuning(_Repair):
    """Fine-tuning every layer on the clean holdout ([Fine-Pruning]; NAD's teacher recipe by default)."""

    name, config_class = "fine-tuning", FineTuneConfig
    function = staticmethod(fine_tune)


@register("nad", "repair")
class NAD(_Repair):
    """Neural Attention Distillation ([NAD]): fine-tuned teacher, attention-distilled student. Without
    `stages`, a model that lacks WRN-16-1's residual groups distils its deepest spatial stages (a wrapped model's
    deepest spatial top-level modules, e.g. torchvision's layer2-4; `nad.default_stages`)."""

    name, config_class = "nad", NADConfig

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        self.stages_given = "stages" in config

    def run(self, model: nn.Module, holdout: ImageDataset, config: Any) -> tuple[nn.Module, Any]:
        """NAD's teacher fine-tuning, then attention distillation into the student ([NAD] Sec. 3)."""
        config = config if self.stages_given else default_stages(model, config)
        return nad(model, holdout, config, device=self.device, progress=self.progress), {"stages": config.stages}


@register("anp", "repair")
class ANP(_Repair):
    """Adversarial Neuron Pruning ([ANP]): prune BatchNorm neurons sensitive to adversarial perturbation."""

    name, config_class = "anp", ANPConfig

    def run(self, model: nn.Module, holdout: ImageDataset, config: Any) -> tuple[nn.Module, Any]:
        """ANP's adversarial mask optimisation, then pruning by the learned masks ([ANP] Sec. 3-4)."""
        result = anp_with_masks(model, holdout, config, device=self.device, progress=self.progress)
        return result.model, result


@register("i-bau", "repair")
class IBAU(_Repair):
    """I-BAU ([I-BAU]): implicit hypergradient unlearning of a universal adversarial perturbation."""

    name, config_class = "i-bau", IBAUConfig
    function = staticmethod(ibau)


@register("head-replacement", "repair")
class HeadReplacement(_Repair):
    """Trap and Replace stage 2 (Sec. 3.2, Eq. 2; Alg. 1 lines 5-6) on any model: re-initialise the head from
    `split` on (a module name, e.g. torchvision's "layer4"; default a workbench model's `default_split`) and
    train it on the clean holdout with the stem frozen. Without T&R's stage 1 the stem is not guaranteed to be
    backdoor-free: this is the replacement step alone, as a repair."""

    name, config_class = "head-replacement", ReplaceConfig

    def __init__(self, *, split: str | None = None, **config: Any) -> None:
        super().__init__(**config)
        self.split = split

    def run(self, model: nn.Module, holdout: ImageDataset, config: Any) -> tuple[nn.Module, Any]:
        """Re-initialise and retrain a copy's head from `split` on ([T&R] Alg. 1 lines 5-6)."""
        split = resolve_split(model, self.split)
        repaired = copy.deepcopy(model).requires_grad_(True)
        history = replace_head(repaired, holdout, config, _training_recipe(model, holdout), split, device=self.device,
                               progress=self.progress)
        return repaired, {"split": split, "history": history}


# --- training-time defences ---------------------------------------------------------------------------------------

class _TrainingDefence:
    """A training-time defence: trains a copy of the caller's (freshly initialised) architecture on the training
    set through the method's own function. `training`: the optimisation settings (`TRAINING_FIELDS`: epochs, lr,
    ...; `TrainConfig`'s defaults where silent); other keywords are the method's config dataclass fields."""

    name = ""
    config_class: type = object

    def __init__(self, *, training: dict[str, Any] | None = None, device: str = "auto", progress: bool = False,
                 **config: Any) -> None:
        self.config = self.config_class(**config)
        self.training = _training_settings(training)
        self.device, self.progress = device, progress

    def run(self, model: nn.Module, train: ImageDataset, recipe: TrainConfig, config: Any,
            clean_holdout: ImageDataset | None) -> tuple[nn.Module, dict[str, Any], Any]:
        """(trained model, JSON-ready details, the method's own result)."""
        raise NotImplementedError

    def train(self, model: nn.Module, train_set: ImageDataset | tuple[torch.Tensor, torch.Tensor], *,
              clean_holdout: ImageDataset | tuple[torch.Tensor, torch.Tensor] | None = None,
              seed: int = 0) -> Training:
        """Train a copy of `model` (the caller's architecture, freshly initialised; it is not modified) on
        `train_set` (ImageDataset or (images in [0, 1], labels)); `seed` seeds data order, augmentation and the
        method's own draws."""
        white_box(model, self.name)
        data = as_dataset(train_set, model, "train_set")
        holdout = None if clean_holdout is None else as_dataset(clean_holdout, model)
        recipe = _training_recipe(model, data, self.training, seed)
        config = _seeded(self.config, seed)
        start = time.perf_counter()
        trained, details, result = self.run(copy.deepcopy(model).requires_grad_(True), data, recipe, config, holdout)
        settings = {"config": dataclasses.asdict(config),
                    "training": {k: getattr(recipe, k) for k in (*TRAINING_FIELDS, "seed")}}
        return Training(self.name, trained.eval(), time.perf_counter() - start, len(data), {**settings, **details},
                        result)


@dataclasses.dataclass(frozen=True)
class TrapSettings:
    """T&R's settings for any model (Sec. 3.2, App. B.2).

    Args:
        split: the module where the classification head starts (None = a workbench model's default; e.g. "layer4"
            for a torchvision ResNet).
        rec_weight, tv_weight: lambda1 = 10 and lambda2 = 0.1 of Eq. 1.
        replace: stage 2's `ReplaceConfig` fields (Eq. 2: Adam 1e-3, cosine, batch 32, dropout 0.5, CutMix, 100
            epochs by default).
        seed: seed of the reconstruction head's initialisation and of stage 2.
    """

    split: str | None = None
    rec_weight: float = 10.0
    tv_weight: float = 0.1
    replace: tuple[tuple[str, Any], ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        check_non_negative(self.rec_weight, "rec_weight", meaning_of_zero="0 = no reconstruction head")
        check_non_negative(self.tv_weight, "tv_weight")
        check_seed(self.seed, "seed")
        object.__setattr__(self, "replace", tuple(sorted(dict(self.replace).items())))
        self.replace_config()  # validates the stage-2 fields now

    def replace_config(self) -> ReplaceConfig:
        return ReplaceConfig(**{**dict(self.replace), "seed": self.seed})


@register("trap-and-replace", "training")
class TrapAndReplace(_TrainingDefence):
    """Trap and Replace ([T&R] Alg. 1) on any architecture: stage 1 trains the model with a
    reconstruction head on the stem (Eq. 1) on the poisoned training set, stage 2 re-initialises the head from
    `split` on and retrains it on `clean_holdout` with the stem frozen (Eq. 2)."""

    name, config_class = "trap-and-replace", TrapSettings

    def __init__(self, *, replace: dict[str, Any] | None = None, **config: Any) -> None:
        super().__init__(replace=tuple((replace or {}).items()), **config)

    def run(self, model: nn.Module, train: ImageDataset, recipe: TrainConfig, config: TrapSettings,
            clean_holdout: ImageDataset | None) -> tuple[nn.Module, dict[str, Any], Any]:
        """Stage 1 (Alg. 1 lines 1-3), then stage 2 (lines 4-6) on the stage-1 classifier."""
        if clean_holdout is None:
            raise WorkbenchError("trap-and-replace needs clean_holdout=(images, labels): stage 2 retrains the head on "
                                 "it (T&R Alg. 1 line 6)")
        split = resolve_split(model, config.split)
        with torch.random.fork_rng(devices=[]):  # the reconstruction head's initialisation, from the seed
            torch.manual_seed(child_seed(config.seed, "head_initialisation"))
            net = TrapNet.build(model, split)
        trap = train_trap(net, train, recipe, rec_weight=config.rec_weight, tv_weight=config.tv_weight,
                          device=self.device, progress=self.progress)
        trapped = copy.deepcopy(net.classifier)  # the stage-1 model, trap head included (T&R's "no replacement")
        replace = replace_head(net.classifier, clean_holdout, config.replace_config(), recipe, split,
                               device=self.device, progress=self.progress)
        return net.classifier, {"split": split, "history": {"trap": trap, "replace": replace},
                                "holdout_images": len(clean_holdout)}, trapped.eval()


@register("abl", "training")
class ABL(_TrainingDefence):
    """Anti-Backdoor Learning ([ABL]; a [T&R] baseline, Sec. 4.1): LGA isolation, fine-tuning, unlearning
    of the isolated examples, on any architecture."""

    name, config_class = "abl", ABLConfig

    def run(self, model: nn.Module, train: ImageDataset, recipe: TrainConfig, config: ABLConfig,
            clean_holdout: ImageDataset | None) -> tuple[nn.Module, dict[str, Any], Any]:
        """ABL's three phases ([ABL] Sec. 3, Eq. 3) with `train_abl`."""
        result = train_abl(train, recipe, config, model=model, device=self.device, progress=self.progress)
        return result.model, {"history": result.history, "isolated": len(result.isolated)}, result


@register("dp-sgd", "training")
class DPSGD(_TrainingDefence):
    """DP-SGD as a backdoor defence ([DP]; a [T&R] baseline, App. B.2): per-example clipping and Gaussian
    noise, on any architecture (its BatchNorm layers become GroupNorm)."""

    name, config_class = "dp-sgd", DPConfig

    def run(self, model: nn.Module, train: ImageDataset, recipe: TrainConfig, config: DPConfig,
            clean_holdout: ImageDataset | None) -> tuple[nn.Module, dict[str, Any], Any]:
        """DP-SGD ([DP-SGD] Alg. 1) with `train_dp`."""
        return train_dp(train, recipe, config, model=model, device=self.device, progress=self.progress), {}, None
