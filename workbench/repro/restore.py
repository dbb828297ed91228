"""REStore experiments: the models, importance-splitting runs, purifications and tables behind notebooks 20 and 21.

Paper settings (Sec. IV-A, App. C): all-to-one attacks on the 4th class (index 3) with 5 % poisoning; clean-label
BadNets / SIG poison 30 % of the target class (Sec. IV-G1); the adaptive attacks of Sec. V on CIFAR-10. Models:
LeNet-5 on MNIST (here trained on part of MNIST's test split, the only split on this machine) and, at `cpu` scale,
the workbench's small CIFAR CNN instead of ResNet-18.

Every importance-splitting run is cached in the artefact store ("restore" kind) under the model's key, the setup,
the scorer and the settings, so the walkthrough and the tables notebook share runs and a re-run loads them.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import pandas as pd
import torch

from workbench.core.artefacts import Artefact, ArtefactStore, config_key, get_or_compute
from workbench.core.attacks import AllClassesPoison, Attack, PoisonConfig, make_attack
from workbench.core.data import ImageDataset, dataset_spec
from workbench.core.mae_training import DEFAULT_MAE
from workbench.core.query import QueryModel
from workbench.core.runtime import make_generator, resolve_device
from workbench.core.scales import pick, resolve_scale
from workbench.core.training import TrainConfig, TrainedModel, get_or_train
from workbench.core.validation import WorkbenchError, check_name, check_positive_int
from workbench.defenses.baselines.februus import Februus
from workbench.defenses.bdmae import BDMAEConfig
from workbench.defenses.restore import (
    OUTPUTS,
    PAPER_PER_SET,
    Diagnosis,
    Purifier,
    RestoreSetup,
    StrengthTrial,
    calibrate_alpha,
    diagnose,
    estimate_trigger,
    recover_any_class,
    recovered_asr,
    select_purifier,
    splitting_config,
)
from workbench.repro.bdmae import (
    TABLE2_DEFENCES,
    EvaluatedShard,
    Predictor,
    Subject,
    evaluate,
    get_or_predict,
    tiny_mae,
)
from workbench.repro.paper_numbers import (
    RESTORE_ADAPTIVE,
    RESTORE_ALPHA_DEF,
    RESTORE_RECOVERED_ASR,
    RESTORE_TABLE1,
    RESTORE_TABLE3,
    RESTORE_TABLE4,
    Published,
)
from workbench.repro.presets import ModelRecipe
from workbench.repro.results import ColdRunClock, ResultTable

TARGET = 3  # "the 4th one (e.g. digit 3 for MNIST)", Sec. IV-A
POISON_RATIO = 0.05  # beta, Sec. IV-A
CLEAN_LABEL_RATIO = 0.3  # Sec. IV-G1: 30 % of the target class
LOGIT_ANCHOR = 0.05  # lambda of Eq. 10 (App. A-4)

MAIN_ATTACKS = ("benign", "badnets", "sig", "wanet")
#: CIFAR-10 only (Sec. IV-G and V)
EXTRA_ATTACKS = ("badnets_clean_label", "sig_clean_label", "dynamic_badnets", "all_classes", "logit_obfuscation")
ATTACKS = MAIN_ATTACKS + EXTRA_ATTACKS

#: the trigger presets of Sec. IV-A per dataset ("badnets" stands for every BadNets-based attack)
TRIGGERS = {
    ("mnist", "badnets"): "restore_badnets_mnist", ("cifar10", "badnets"): "bdmae_badnets_colour",
    ("mnist", "sig"): "restore_sig_mnist", ("cifar10", "sig"): "restore_sig_cifar",
    ("mnist", "wanet"): "wanet", ("cifar10", "wanet"): "wanet",
    ("cifar10", "dynamic_badnets"): "restore_dynamic_badnets",
}


def trigger(dataset: str, attack: str) -> Attack | None:
    """The trigger of an attack that sends inputs to `TARGET` (None for the benign model; for the all-classes attack,
    whose triggers differ per class, the target class's one of `AllClassesPoison.triggers`)."""
    check_name("attack", attack, ATTACKS)
    if attack == "benign":
        return None
    if attack == "all_classes":
        spec = dataset_spec(dataset)
        return AllClassesPoison(ratio=POISON_RATIO).triggers(len(spec.class_names), spec.image_size)[TARGET]
    base = {"badnets_clean_label": "badnets", "sig_clean_label": "sig", "logit_obfuscation": "badnets"}.get(attack,
                                                                                                            attack)
    if (dataset, base) not in TRIGGERS:
        raise WorkbenchError(f"REStore has no {attack!r} attack on {dataset!r}")
    return make_attack(TRIGGERS[dataset, base])


@dataclass(frozen=True)
class Run:
    """One importance-splitting run: a model (dataset, attack), a setup, a scorer output and the classes searched.

    `classes` None searches every class (a diagnosis: the tau -> rho maps of Figs. 5-6); `(TARGET,)` only recovers
    the backdoored class's trigger, all Tables II and VIII-IX need, at a tenth of the cost.
    """

    dataset: str
    attack: str
    setup: str = "PI"
    output: str = "probits"
    classes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class RestorePreset:
    """Sizes of the REStore experiments at one scale.

    Args:
        recipes: per dataset, how its classifiers are trained.
        splitting: n, k, T and J_max of importance splitting (the paper: 500, 250, 30, 40).
        clean_images: the defender's clean labelled images D_test^cl (clean sets, alpha_def, purifier choice).
        eval_images: test images for recovered-trigger ASR, CDA, SDA and ASR.
        comparable_images: clean + triggered test images for BDMAE and Februus (slow per image).
        max_cda_drop: REStore's purification keeps the clean accuracy on D_test^cl within this drop.
        per_set: |X_test^cl| (the paper: 9).
        alpha: a fixed alpha_def instead of the calibration (only `smoke`, whose briefly trained models are too
            weak for noise to halve their accuracy reliably).
        attacks: the attacks trained per dataset.
        runs: the importance-splitting runs of the tables notebook.
    """

    recipes: dict[str, ModelRecipe]
    splitting: dict[str, int]
    clean_images: int
    eval_images: int
    comparable_images: int
    max_cda_drop: float = 0.05
    per_set: int = PAPER_PER_SET
    alpha: float | None = None
    attacks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    runs: tuple[Run, ...] = ()


def _runs(datasets: tuple[str, ...], attacks: tuple[str, ...], setups: tuple[str, ...], outputs: tuple[str, ...],
          classes: tuple[int, ...] | None = None) -> tuple[Run, ...]:
    return tuple(Run(d, a, s, o, classes) for d in datasets for a in attacks for s in setups for o in outputs)


#: classes whose triggers are recovered on the all-classes model (Table XIV averages over classes)
ALL_CLASSES_SAMPLE = (0, TARGET, 6)
#: the backdoored models' attacks (Table III compares defences on those with a PI run)
BACKDOORED = ("badnets", "sig", "wanet")
_CPU_RUNS = (
    _runs(("mnist", "cifar10"), ("benign", "badnets"), ("PI",), ("probits",))  # maps of Fig. 5 (diagnosis)
    + _runs(("mnist", "cifar10"), ("sig", "wanet"), ("PI",), ("probits",), (TARGET,))  # Table II (III: REStore)
    + _runs(("mnist", "cifar10"), BACKDOORED, ("PI",), ("logits", "labels"), (TARGET,))  # Tables VIII, IX (III)
    + _runs(("mnist", "cifar10"), BACKDOORED, ("FI",), ("probits",), (TARGET,))  # Table II, FI column
    + _runs(("cifar10",), ("badnets_clean_label", "sig_clean_label", "dynamic_badnets", "logit_obfuscation"), ("PI",),
            ("logits",), (TARGET,))  # Sec. IV-G, V-C: logits scorer
    + _runs(("cifar10",), ("all_classes",), ("PI",), ("logits",), ALL_CLASSES_SAMPLE)  # Sec. V-B
)

RESTORE_PRESETS: dict[str, RestorePreset] = {
    "smoke": RestorePreset(
        recipes={"mnist": ModelRecipe("lenet5", 2, 0.05, train_size=2000, augment="none"),
                 "cifar10": ModelRecipe("resnet_small", 2, 0.2, train_size=2000, augment="none",
                                        model_options=(("widths", (8, 8, 16, 16)),))},
        splitting={"particles": 8, "survivors": 4, "passes": 1, "max_levels": 3},
        clean_images=200, eval_images=100, comparable_images=4, per_set=3, alpha=0.2,
        attacks={"mnist": ("benign", "badnets"), "cifar10": ("benign", "badnets")},
        runs=(_runs(("mnist", "cifar10"), ("benign", "badnets"), ("PI",), ("probits",))
              + _runs(("mnist",), ("badnets",), ("PI",), ("labels",), (TARGET,))
              + _runs(("mnist",), ("badnets",), ("FI",), ("probits",), (TARGET,)))),
    "cpu": RestorePreset(
        recipes={"mnist": ModelRecipe("lenet5", 30, 0.05, augment="none"),
                 "cifar10": ModelRecipe("resnet_small", 12, 0.2, train_size=20000, augment="none",
                                        model_options=(("widths", (16, 32, 32, 64)),))},
        # deep and narrow: J_max and T as the paper's reach matter more than n (pilots: MNIST BadNets separates
        # clearly within 40 levels in ~1 min for 10 classes; CIFAR-10 BadNets overtakes the naturally fragile
        # classes 6 and 9 only beyond ~1e-14 (~45 levels) and was still level with frog at 60 levels; at 80 levels
        # (1e-24) it led both; 80 levels take ~12 min for 10 classes)
        splitting={"particles": 40, "survivors": 20, "passes": 10, "max_levels": 80},
        clean_images=500, eval_images=1000, comparable_images=100,
        attacks={"mnist": MAIN_ATTACKS, "cifar10": ATTACKS}, runs=_CPU_RUNS),
    # gpu: the paper's networks (ResNet-18 for 40 epochs) and the cpu preset's runs with the paper's J_max and a
    # fifth of its particles and moves
    "gpu": RestorePreset(
        recipes={"mnist": ModelRecipe("lenet5", 30, 0.05, augment="none"),
                 "cifar10": ModelRecipe("resnet18", 40, 0.1, augment="crop_flip")},
        splitting={"particles": 100, "survivors": 50, "passes": 6, "max_levels": 40},
        clean_images=1000, eval_images=2000, comparable_images=200,
        attacks={"mnist": MAIN_ATTACKS, "cifar10": ATTACKS}, runs=_CPU_RUNS),
    "paper": RestorePreset(
        recipes={"mnist": ModelRecipe("lenet5", 100, 0.001, augment="none"),
                 "cifar10": ModelRecipe("resnet18", 100, 0.001, augment="crop_flip")},
        splitting={"particles": 500, "survivors": 250, "passes": 30, "max_levels": 40},
        clean_images=1000, eval_images=9000, comparable_images=1000,
        attacks={"mnist": MAIN_ATTACKS, "cifar10": ATTACKS},
        runs=(_runs(("mnist", "cifar10"), MAIN_ATTACKS, ("PI", "FI"), tuple(OUTPUTS))
              + _runs(("cifar10",), EXTRA_ATTACKS, ("PI",), tuple(OUTPUTS)))),
}


def train_config(dataset: str, attack: str, scale: str | None) -> TrainConfig:
    """The recipe of one of Table I's models (and the extra / adaptive ones) at a scale."""
    preset = pick(scale, RESTORE_PRESETS)
    check_name("dataset", dataset, preset.recipes)
    recipe = preset.recipes[dataset]
    if attack == "benign":
        return recipe.config(dataset)
    if attack == "all_classes":
        return recipe.config(dataset, all_classes_poison=AllClassesPoison(ratio=POISON_RATIO))
    attack_trigger = trigger(dataset, attack)
    if attack.endswith("_clean_label"):
        poison = PoisonConfig(attack_trigger, target=TARGET, ratio=CLEAN_LABEL_RATIO, ratio_of="candidates",
                              clean_label=True)
    else:
        poison = PoisonConfig(attack_trigger, target=TARGET, ratio=POISON_RATIO,
                              noise_ratio=2.0 if attack == "wanet" else 0.0)
    return recipe.config(dataset, poison=poison, logit_anchor=LOGIT_ANCHOR if attack == "logit_obfuscation" else 0.0)


@dataclass(frozen=True)
class Images:
    """The defender's clean labelled images and the evaluation images, disjoint parts of the model's test split."""

    clean: torch.Tensor
    clean_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor


def split_images(test: ImageDataset, preset: RestorePreset, seed: int = 0) -> Images:
    """D_test^cl (`preset.clean_images`) and evaluation images (`preset.eval_images`) from a seeded permutation."""
    need = preset.clean_images + preset.eval_images
    if len(test) < need:
        raise WorkbenchError(f"the test split has {len(test)} images; this preset needs {need}")
    order = torch.randperm(len(test), generator=make_generator(seed))
    clean, evaluation = order[:preset.clean_images], order[preset.clean_images:need]
    x = test.float_images()
    return Images(x[clean], test.labels[clean], x[evaluation], test.labels[evaluation])


def diagnosis_address(model_key: str, run: Run, preset: RestorePreset, *,
                      seed: int = 0) -> tuple[str, str, dict[str, Any]]:
    """(artefact kind, key, identity) of the importance-splitting run `get_or_diagnose` makes on the model artefact
    `model_key`."""
    identity = {"model": model_key, "setup": run.setup, "output": run.output, "splitting": preset.splitting,
                "clean_images": preset.clean_images, "seed": seed}
    # every class, the paper's |X_test^cl| and a calibrated alpha_def are the defaults; only others enter the identity
    defaults = {"per_set": PAPER_PER_SET, "alpha": None, "classes": []}
    chosen = {"per_set": preset.per_set, "alpha": preset.alpha, "classes": list(run.classes or ())}
    identity.update({k: v for k, v in chosen.items() if v != defaults[k]})
    return "restore", config_key(identity), identity


def get_or_diagnose(trained: TrainedModel, images: Images, run: Run, preset: RestorePreset, *, seed: int = 0,
                    store: ArtefactStore | None = None, progress: bool = False) -> Diagnosis:
    """Calibrate alpha_def and run importance splitting over every class of a model, or load that run.

    The identity of a run: the model's artefact key, the setup, the scorer output, the splitting settings, the seed
    and the defender's images (their count; they are a seeded part of the model's own test split).
    """
    store = store or ArtefactStore()
    kind, key, identity = diagnosis_address(trained.key, run, preset, seed=seed)

    def restore(found: Artefact) -> Diagnosis:
        loaded = Diagnosis.from_stored(found.tensors, found.metrics)
        loaded.extra["loaded_from_cache"] = True  # its recorded "seconds_with_calibration" were not spent now
        return loaded

    def run_diagnosis() -> tuple[Diagnosis, dict[str, torch.Tensor], dict[str, Any]]:
        query = QueryModel(trained.model, OUTPUTS[run.output])
        start = time.time()
        alpha, probes = (preset.alpha, []) if preset.alpha is not None else calibrate_alpha(
            query, run.setup, images.clean, images.clean_labels, seed=seed)
        setup = RestoreSetup(run.setup, alpha)
        config = splitting_config(setup, tuple(images.clean.shape[1:]), **preset.splitting)
        result = diagnose(query, images.clean, images.clean_labels, setup, output=run.output,
                          classes=None if run.classes is None else list(run.classes), config=config,
                          per_set=preset.per_set, seed=seed, progress=progress)
        result.extra.update({"alpha_probes": probes, "seconds_with_calibration": time.time() - start,
                             "run": asdict(run)})
        return result, result.splitting.tensors(), result.summary()

    diagnosis, _, _ = get_or_compute(store, kind, key, identity, compute=run_diagnosis, restore=restore)
    return diagnosis


def triggered_test_images(images: Images, dataset: str, attack: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation images of the non-target classes with the attack's trigger, and their true labels."""
    attack_trigger = trigger(dataset, attack)
    if attack_trigger is None:
        raise WorkbenchError(f"{attack!r} has no single trigger")
    keep = images.test_labels != TARGET
    return attack_trigger.apply(images.test[keep]), images.test_labels[keep]


def restore_purifier(trained: TrainedModel, images: Images, found: Diagnosis, preset: RestorePreset, *,
                     transform: str = "subtract", low_pass: bool = False) -> tuple[Purifier, list[StrengthTrial]]:
    """REStore's purifier for `TARGET` from a run (Sec. III-D3): the trigger estimate of the target's realisations on
    the first clean set's worth of the defender's images, the strength chosen on their clean images only."""
    estimate = estimate_trigger(found.setup, found.realisations(TARGET), images.clean[:preset.per_set])
    return select_purifier(QueryModel(trained.model, "label"), estimate, images.clean, images.clean_labels,
                           transform=transform, low_pass=low_pass, max_accuracy_drop=preset.max_cda_drop)


def seconds_per_image(predicts: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor,
                      repeats: int = 20) -> dict[str, float]:
    """Seconds per image of each predict function on `x`: passes interleaved across the functions, so that load
    from other work on the machine falls on all alike, and the fastest pass of each (Table IV compares costs
    measured back to back in one run)."""
    fastest = dict.fromkeys(predicts, math.inf)
    for _ in range(check_positive_int(repeats, "repeats")):
        for name, predict in predicts.items():
            start = time.perf_counter()
            predict(x)
            fastest[name] = min(fastest[name], time.perf_counter() - start)
    return {name: seconds / len(x) for name, seconds in fastest.items()}


def purification_table(trained: TrainedModel, images: Images, dataset: str, attack: str, purifier: Purifier,
                       comparable_images: int) -> pd.DataFrame:
    """Notebook 20's purification table: CDA, SDA and ASR (%) without a defence and with one REStore purifier on every
    evaluation image, and each one's milliseconds per image (fastest of interleaved passes over
    `comparable_images` clean and as many triggered images, as `seconds_per_image` measures them)."""
    x_bd, y_bd = triggered_test_images(images, dataset, attack)
    labels = QueryModel(trained.model, "label")
    predicts = {"undefended": labels.labels,
                f"REStore ({purifier.transform}, strength {purifier.strength})": lambda x: labels.labels(purifier(x))}
    count = check_positive_int(comparable_images, "comparable_images")
    seconds = seconds_per_image(predicts, torch.cat([images.test[:count], x_bd[:count]]))
    rows = []
    for name, predict in predicts.items():
        measured = evaluate(predict, images.test, images.test_labels, x_bd, y_bd, TARGET)
        rows.append({"inputs": name, "CDA": measured["CA"], "SDA": measured["BA"], "ASR": measured["ASR"],
                     "ms per image": 1000 * seconds[name]})
    return pd.DataFrame(rows).round(2)


#: Table III's per-image defences (run on `comparable_images` images): Februus at the paper's CAM threshold 0.8,
#: inpainted by the tiny MAE, and BDMAE with its default settings, built as BDMAE's own tables build them
SLOW_DEFENCES: dict[str, Callable[[Subject], Predictor]] = {
    **{f"Februus {name} (0.8)": (lambda s, m=method: Februus(s.model, s.restorer, m, 0.8))
       for method, name in (("xgradcam", "XGradCAM"), ("gradcam++", "GradCAM++"))},
    "BDMAE (tiny MAE)": TABLE2_DEFENCES["BDMAE (tiny MAE)"],
}


def slow_defences_address(model_key: str, attack: str, preset: RestorePreset, *,
                          seed: int = 0) -> tuple[str, str, dict[str, Any]]:
    """(artefact kind, key, identity) of `get_or_evaluate_slow_defences` on the model artefact `model_key`."""
    identity = {"table": "REStore Table III", "model": model_key, "attack": attack, "target": TARGET,
                "clean_images": preset.clean_images, "eval_images": preset.eval_images,
                "images": preset.comparable_images, "seed": seed, "defences": list(SLOW_DEFENCES),
                "bdmae": asdict(BDMAEConfig()), "mae": config_key(DEFAULT_MAE.to_dict())}
    return "evaluations", config_key(identity), identity


def get_or_evaluate_slow_defences(trained: TrainedModel, images: Images, dataset: str, attack: str,
                                  preset: RestorePreset, *, seed: int = 0, device: str = "auto",
                                  store: ArtefactStore | None = None, progress: bool = False) -> EvaluatedShard:
    """Februus and BDMAE's labels on the first `preset.comparable_images` clean and triggered evaluation images,
    computed once and cached (a `jobs run restore` job)."""
    identity = slow_defences_address(trained.key, attack, preset, seed=seed)[2]
    count = preset.comparable_images

    def prepare() -> tuple[dict[str, Predictor], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x_bd, y_bd = triggered_test_images(images, dataset, attack)
        subject = Subject(trained.model, tiny_mae(str(resolve_device(device))), BDMAEConfig(), None)
        return ({name: build(subject) for name, build in SLOW_DEFENCES.items()}, images.test[:count],
                images.test_labels[:count], x_bd[:count], y_bd[:count])

    return get_or_predict(identity, list(SLOW_DEFENCES), prepare, seed=seed, store=store, progress=progress)


def compare_defences(trained: TrainedModel, images: Images, dataset: str, attack: str,
                     purifiers: dict[str, Purifier], preset: RestorePreset, *, seed: int = 0, device: str = "auto",
                     store: ArtefactStore | None = None) -> pd.DataFrame:
    """Table III and IV for one model: CDA, SDA and ASR (%) and seconds per image of no defence, Februus (XGradCAM
    and GradCAM++ at the paper's CAM threshold 0.8, inpainted by the workbench MAE), BDMAE (tiny MAE) and each
    REStore purifier in `purifiers`.

    The slow per-image defences see `preset.comparable_images` clean and as many triggered test images (their labels
    cached: `get_or_evaluate_slow_defences`); no defence and REStore, which cost one forward pass, see every
    evaluation image (the `images` column). Seconds per image are measured on those comparable images for every
    defence (the fast ones as the fastest of interleaved repeated passes, their cost being too small for one pass to
    time reliably; the slow ones' single pass when they were computed).
    """
    x_bd, y_bd = triggered_test_images(images, dataset, attack)
    count = preset.comparable_images
    x_small = torch.cat([images.test[:count], x_bd[:count]])
    labels = QueryModel(trained.model, "label")
    fast = {"no defence": labels.labels, **{f"REStore {name}": (lambda x, p=purifier: labels.labels(p(x)))
                                            for name, purifier in purifiers.items()}}
    fast_seconds = seconds_per_image(fast, x_small)
    slow = get_or_evaluate_slow_defences(trained, images, dataset, attack, preset, seed=seed, device=device,
                                         store=store)
    rows = []
    for name in ("no defence", *SLOW_DEFENCES, *list(fast)[1:]):
        if name in fast:
            measured = evaluate(fast[name], images.test, images.test_labels, x_bd, y_bd, TARGET)
            seen, seconds = len(images.test) + len(x_bd), fast_seconds[name]
        else:
            predicted = slow.defences[name]
            measured = {"CA": 100 * (predicted.clean == slow.clean_labels).float().mean().item(),
                        "BA": 100 * (predicted.triggered == slow.triggered_labels).float().mean().item(),
                        "ASR": 100 * (predicted.triggered == TARGET).float().mean().item()}
            seen = len(slow.clean_labels) + len(slow.triggered_labels)
            seconds = predicted.seconds / seen
        rows.append({"defence": name, "CDA": measured["CA"], "SDA": measured["BA"], "ASR": measured["ASR"],
                     "images": seen, "s/image": seconds})
    return pd.DataFrame(rows)


def any_class_runs(preset: RestorePreset) -> list[Run]:
    """The runs whose setup App. J's run over all classes at once reuses: each dataset's first BadNets run over
    every class."""
    first = {}
    for run in preset.runs:
        if run.attack == "badnets" and run.classes is None:
            first.setdefault(run.dataset, run)
    return list(first.values())


def any_class_address(model_key: str, run: Run, preset: RestorePreset, *,
                      seed: int = 0) -> tuple[str, str, dict[str, Any]]:
    """(artefact kind, key, identity) of `get_or_recover_any_class` (its setup and splitting settings are those of
    the diagnosis `run`, named by that run's key)."""
    diagnosis = diagnosis_address(model_key, run, preset, seed=seed)[1]
    identity = {"figure": "REStore App. J, Fig. 12b", "diagnosis": diagnosis, "output": "probits",
                "eval_images": preset.eval_images, "seed": seed}
    return "evaluations", config_key(identity), identity


def get_or_recover_any_class(trained: TrainedModel, images: Images, run: Run, found: Diagnosis, preset: RestorePreset,
                             *, seed: int = 0, store: ArtefactStore | None = None) -> dict[str, Any]:
    """[REStore] App. J: one importance-splitting run over all classes at once with the setup of the diagnosis
    `found` (its calibrated alpha_def), computed once and cached: the class its perturbations send clean images to
    ("class"), their ASR on the other classes' evaluation images ("asr", a fraction), "seconds" and "queries"."""
    kind, key, identity = any_class_address(trained.key, run, preset, seed=seed)

    def compute() -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
        query = QueryModel(trained.model, "probs")
        start = time.time()
        config = splitting_config(found.setup, tuple(images.clean.shape[1:]), **preset.splitting)
        result, found_class = recover_any_class(query, images.clean, images.clean_labels, found.setup,
                                                output="probits", num_classes=dataset_spec(run.dataset).num_classes,
                                                config=config, seed=seed)
        asr = recovered_asr(QueryModel(trained.model, "label"), found.setup, result.realisations(0), images.test,
                            images.test_labels, found_class, seed=seed)
        measured = {"class": found_class, "asr": asr, "seconds": time.time() - start, "queries": query.queries}
        return measured, {}, measured

    return get_or_compute(store or ArtefactStore(), kind, key, identity, compute=compute,
                          restore=lambda stored: stored.metrics)[0]


def recovered_asr_percent(trained: TrainedModel, images: Images, found: Diagnosis, cls: int, *,
                          seed: int = 0) -> float:
    """ASR (%) of the perturbations a run recovered for class `cls`, on the clean test images of the other classes
    ([REStore] Tables II, VIII, IX and Fig. 8), through hard-label access to the model."""
    return 100 * recovered_asr(QueryModel(trained.model, "label"), found.setup, found.realisations(cls), images.test,
                               images.test_labels, cls, seed=seed)


#: the paper's model each dataset's models stand for (Table I rows)
PAPER_MODEL = {"mnist": "lenet5", "cifar10": "resnet18"}


def paper_row(defence: str) -> str:
    """The paper's row (Tables III, IV, XIV-XVI) for one of our defence rows: Februus at the paper's CAM threshold
    0.8, and the tiny MAE's closest BDMAE, BDMAE base."""
    return {"Februus XGradCAM (0.8)": "Februus XGradCAM", "Februus GradCAM++ (0.8)": "Februus GradCAM++",
            "BDMAE (tiny MAE)": "BDMAE base"}.get(defence, defence)


def defence_table(trained: TrainedModel, images: Images, dataset: str, attack: str, runs: dict[Run, Diagnosis],
                  outputs: list[str], preset: RestorePreset, paper: dict[str, Published], *, seed: int = 0,
                  device: str = "auto") -> pd.DataFrame:
    """Table III for one model: `compare_defences` with a REStore purifier from the model's PI run of each scorer
    output in `outputs`, the strength each purifier chose, and the paper's CDA / SDA / ASR beside ours."""
    def pi_run(output: str) -> Diagnosis:
        return next(d for r, d in runs.items() if (r.dataset, r.attack, r.setup, r.output) == (dataset, attack, "PI",
                                                                                                output))

    purifiers = {output: restore_purifier(trained, images, pi_run(output), preset)[0] for output in outputs}
    table = compare_defences(trained, images, dataset, attack, purifiers, preset, seed=seed, device=device)
    table["strength"] = [purifiers[n.split()[-1]].strength if n.startswith("REStore") else None
                         for n in table["defence"]]
    for column, attribute in (("CDA", "ca"), ("SDA", "ba"), ("ASR", "asr")):
        table[f"paper {column}"] = [getattr(paper.get(paper_row(n), Published()), attribute) for n in table["defence"]]
    table.insert(0, "attack", attack)
    table.insert(0, "dataset", dataset)
    return table.round({"CDA": 1, "SDA": 1, "ASR": 1})


# --- the paper's tables -----------------------------------------------------------------------------------------------

def _model_percent(trained: TrainedModel) -> dict[str, float | None]:
    """A model's recorded CDA and ASR (%, one decimal; ASR None for a clean model), as Table I prints them."""
    ca, asr = trained.summary.percent()
    return {"CDA": round(ca, 1), "ASR": None if math.isnan(asr) else round(asr, 1)}



class RestoreTables:
    """[REStore]'s Table I, the tau -> rho diagnoses (Fig. 5), recovered triggers (Fig. 8, Fig. 12b, Tables II,
    VIII, IX), the defence comparison and its cost (Tables III, IV) and the adaptive attacks (Sec. IV-G, V) at one
    scale, each returned as a `ResultTable` beside the paper's numbers. Models and importance-splitting runs are
    trained once and cached; `clock` records what a run from an empty cache would cost.

    Args:
        scale: the preset's scale (None: $WORKBENCH_SCALE, else "cpu").
        seed: seed of the defender's images, the runs and every evaluation.
        device: where to compute.
        progress: progress bars on the importance-splitting runs.
    """

    def __init__(self, scale: str | None = None, *, seed: int = 0, device: str = "auto", progress: bool = True) -> None:
        self.scale = resolve_scale(scale)
        self.preset = pick(self.scale, RESTORE_PRESETS)
        self.seed, self.device, self.progress = seed, device, progress
        self.clock = ColdRunClock()
        self.class_names = {dataset: dataset_spec(dataset).class_names for dataset in self.preset.attacks}
        self._table3: ResultTable | None = None

    @cached_property
    def models(self) -> dict[tuple[str, str], tuple[TrainedModel, Images]]:
        """(dataset, attack) -> the trained model and the defender's / evaluation images of its test split."""
        out = {}
        for dataset, attacks in self.preset.attacks.items():
            for attack in attacks:
                trained = get_or_train(train_config(dataset, attack, self.scale), device=self.device, progress=False)
                self.clock.seen(trained.key, trained.loaded, trained.summary.train_seconds)
                out[dataset, attack] = trained, split_images(trained.config.splits().test, self.preset, self.seed)
        return out

    @cached_property
    def runs(self) -> dict[Run, Diagnosis]:
        """Every importance-splitting run of the preset (loaded or run now)."""
        out = {}
        for run in self.preset.runs:
            trained, images = self.models[run.dataset, run.attack]
            found = get_or_diagnose(trained, images, run, self.preset, seed=self.seed, progress=self.progress)
            self.clock.seen(f"restore run {run}", bool(found.extra.get("loaded_from_cache")),
                            found.extra["seconds_with_calibration"])
            out[run] = found
        return out

    @property
    def searched(self) -> dict[Run, Diagnosis]:
        """The runs over every class (the diagnoses of Fig. 5)."""
        return {r: d for r, d in self.runs.items() if r.classes is None}

    def __str__(self) -> str:
        loaded = sum(trained.loaded for trained, _ in self.models.values())
        return (f"{len(self.models)} models ({loaded} from the cache); importance splitting {self.preset.splitting}; "
                f"{len(self.preset.runs)} runs")

    def _recovered(self, run: Run, cls: int) -> float:
        trained, images = self.models[run.dataset, run.attack]
        return recovered_asr_percent(trained, images, self.runs[run], cls, seed=self.seed)

    @staticmethod
    def _backdoored(run: Run) -> int | None:
        return TARGET if run.attack != "benign" else None

    def table1(self) -> ResultTable:
        """[REStore] Table I: CDA / ASR of every model, as recorded at training."""
        rows = []
        for (dataset, attack), (trained, _) in self.models.items():
            paper = RESTORE_TABLE1.get((dataset, PAPER_MODEL[dataset]), {}).get(attack, Published())
            rows.append({"dataset": dataset, "attack": attack, **_model_percent(trained),
                         "paper CDA": paper.ca, "paper ASR": paper.asr, "differs": "model, epochs, data (see top)"})
        return ResultTable("table1_models", "REStore Table I: CDA / ASR (%) of the models, beside the paper's "
                           "(LeNet-5 / ResNet-18).", pd.DataFrame(rows))

    def runs_table(self) -> ResultTable:
        """Every importance-splitting run: its calibrated alpha_def beside the paper's (App. G), levels, queries and
        seconds (recorded when it ran, calibration included)."""
        rows = [{"dataset": r.dataset, "attack": r.attack, "setup": r.setup, "scorer": r.output,
                 "classes": "all" if r.classes is None else list(r.classes), "alpha_def": round(d.setup.alpha, 3),
                 "paper alpha_def": RESTORE_ALPHA_DEF.get((r.dataset, PAPER_MODEL[r.dataset])),
                 "levels": int(d.splitting.levels.shape[0]), "queries": d.queries,
                 "seconds": round(d.extra["seconds_with_calibration"])} for r, d in self.runs.items()]
        return ResultTable("runs", "The importance-splitting runs (App. E, Alg. 1) with their alpha_def (App. G).",
                           pd.DataFrame(rows))

    def fig5_panels(self) -> list[tuple[str, Diagnosis, list[str], int | None]]:
        """(title, diagnosis, class names, backdoored class) of every fully searched model, for `tau_rho_grid`."""
        return [(f"{r.dataset} {r.attack}", d, self.class_names[r.dataset], self._backdoored(r))
                for r, d in self.searched.items()]

    def fig5_diagnosis(self) -> ResultTable:
        """[REStore] Fig. 5 in numbers: the suspect class and margin of every fully searched model."""
        def highest_tau(d: Diagnosis, b: int) -> float:
            return float(d.splitting.curve(b)[0][-1])

        rows = [{"dataset": r.dataset, "model": r.attack, "setup": r.setup, "scorer": r.output,
                 "suspect": self.class_names[r.dataset][d.suspect], "margin (decades)": round(d.margin, 2),
                 "class 3 highest tau": round(highest_tau(d, d.classes.index(TARGET)), 3),
                 "best other highest tau": round(max(highest_tau(d, b) for b, c in enumerate(d.classes)
                                                     if c != TARGET), 3)} for r, d in self.searched.items()]
        return ResultTable("fig5_diagnosis", "Suspect class and margin of every fully searched model (Fig. 5).",
                           pd.DataFrame(rows))

    def fig8_panels(self) -> list[tuple[str, list[float], list[str], int | None]]:
        """(title, recovered-trigger ASR of each class as a fraction, class names, backdoored class) of every fully
        searched model ([REStore] Fig. 8), for `recovered_asr_grid`."""
        return [(f"{r.dataset} {r.attack}", [self._recovered(r, c) / 100 for c in d.classes],
                 self.class_names[r.dataset], self._backdoored(r)) for r, d in self.searched.items()]

    def fig12b(self) -> ResultTable:
        """[REStore] App. J, Fig. 12b: one run over all classes at once on each BadNets model."""
        rows = []
        for run in any_class_runs(self.preset):
            trained, images = self.models[run.dataset, run.attack]
            measured = get_or_recover_any_class(trained, images, run, self.runs[run], self.preset, seed=self.seed)
            rows.append({"dataset": run.dataset, "model": run.attack,
                         "recovered class": self.class_names[run.dataset][measured["class"]],
                         "its ASR": round(100 * measured["asr"], 1), "seconds": round(measured["seconds"]),
                         "queries": measured["queries"]})
        return ResultTable("fig12b_any_class", "One importance-splitting run over all classes at once (App. J, Fig. "
                           "12b): the class its perturbations send clean images to and their ASR (%) on clean test "
                           "images of the other classes.", pd.DataFrame(rows))

    @cached_property
    def recovery(self) -> dict[tuple[str, str, str, str], float]:
        """(dataset, attack, scorer, setup) -> ASR (%) of the backdoored class's recovered perturbations."""
        return {(r.dataset, r.attack, r.output, r.setup): round(self._recovered(r, TARGET), 1)
                for r in self.runs if r.attack in BACKDOORED}

    def table2(self) -> ResultTable:
        """[REStore] Tables II (probits), VIII (logits), IX (labels): recovered-trigger ASR by setup and scorer."""
        rows = []
        for dataset, attack, output in sorted({key[:3] for key in self.recovery}):
            paper = RESTORE_RECOVERED_ASR[output].get((dataset, PAPER_MODEL[dataset]), {}).get(attack)
            rows.append({"dataset": dataset, "attack": attack, "scorer": output,
                         "PI": self.recovery.get((dataset, attack, output, "PI")), "paper PI": paper and paper.pi,
                         "FI": self.recovery.get((dataset, attack, output, "FI")), "paper FI": paper and paper.fi})
        return ResultTable("table2_recovered_asr", "REStore Tables II (probits), VIII (logits), IX (labels): "
                           "recovered-trigger ASR (%), beside the paper's.", pd.DataFrame(rows))

    @cached_property
    def _pi_outputs(self) -> dict[tuple[str, str], list[str]]:
        """(dataset, attack) -> the scorers with a PI run, per backdoored model."""
        out: dict[tuple[str, str], list[str]] = {}
        for r in self.runs:
            if r.setup == "PI" and r.attack in BACKDOORED:
                out.setdefault((r.dataset, r.attack), []).append(r.output)
        return out

    def _defences(self, dataset: str, attack: str, outputs: list[str],
                  paper: dict[str, tuple[float, float, float]]) -> pd.DataFrame:
        trained, images = self.models[dataset, attack]
        return defence_table(trained, images, dataset, attack, self.runs, outputs, self.preset, paper,
                             seed=self.seed, device=self.device)

    def table3(self) -> ResultTable:
        """[REStore] Table III: CDA / SDA / ASR after no defence, Februus, BDMAE and REStore's purifiers."""
        if self._table3 is None:
            frame = pd.concat([self._defences(dataset, attack, outputs,
                                              RESTORE_TABLE3.get((dataset, PAPER_MODEL[dataset], attack), {}))
                               for (dataset, attack), outputs in self._pi_outputs.items()], ignore_index=True)
            self._table3 = ResultTable("table3_defences", "REStore Table III: CDA / SDA / ASR (%) after each defence, "
                                       "beside the paper's (BDMAE base, Februus at CAM threshold 0.8); 'images' is how "
                                       "many test images each row saw.", frame)
        return self._table3

    def table4(self) -> ResultTable:
        """[REStore] Table IV: seconds per image of each defence on the BadNets models, and its multiple of a plain
        forward pass, beside the paper's (V100)."""
        table3 = self.table3().frame
        forward = table3[table3["defence"] == "no defence"].set_index(["dataset", "attack"])["s/image"]
        table4 = table3[table3["attack"] == "badnets"][["dataset", "defence", "s/image"]].copy()
        table4["x no defence"] = [row["s/image"] / forward[row["dataset"], "badnets"] for _, row in table4.iterrows()]
        table4["paper s/image (V100)"] = [
            RESTORE_TABLE4.get((row["dataset"], PAPER_MODEL[row["dataset"]]), {}).get(paper_row(row["defence"]))
            for _, row in table4.iterrows()]
        return ResultTable("table4_seconds", "REStore Table IV: seconds per image of each defence on this CPU (BadNets "
                           "models), and its multiple of a plain forward pass, measured in one run; the paper's on a "
                           "V100 beside.", table4.round(6))

    def adaptive(self) -> tuple[ResultTable, ResultTable] | None:
        """Sec. IV-G and V (CIFAR-10): each clean-label, dynamic or adaptive model with its recovered triggers' ASR
        (mean over the classes searched), and the defences against it; None when the preset runs none."""
        rows, tables = [], []
        for r in self.runs:
            if r.attack not in EXTRA_ATTACKS:
                continue
            trained, _ = self.models[r.dataset, r.attack]
            paper = RESTORE_ADAPTIVE.get(r.attack, {})
            classes = self.runs[r].classes
            rows.append({
                "attack": r.attack, **_model_percent(trained),
                "recovered ASR": round(sum(self._recovered(r, c) for c in classes) / len(classes), 1),
                "paper CDA / ASR": (paper["model"].ca, paper["model"].asr) if paper else None,
                "paper recovered ASR": paper.get("recovered ASR")})
            tables.append(self._defences(r.dataset, r.attack, [r.output], paper.get("defences", {})))
        if not rows:
            return None
        return (ResultTable("adaptive_models", "Clean-label, dynamic and adaptive attacks (CIFAR-10): model CDA / ASR "
                            "(%) and recovered-trigger ASR (%), beside the paper's Tables XIV-XVI where it has them.",
                            pd.DataFrame(rows)),
                ResultTable("adaptive_defences", "Defences against the clean-label, dynamic and adaptive attacks: "
                            "CDA / SDA / ASR (%).", pd.concat(tables, ignore_index=True)))

    def repeats_bit_for_bit(self) -> bool | None:
        """Re-run the cheapest run (MNIST BadNets, PI, probits) in a temporary store: same curves and recovered
        triggers? None when the preset has no such run."""
        cheapest = next((r for r in self.runs if (r.dataset, r.attack, r.setup, r.output)
                         == ("mnist", "badnets", "PI", "probits")), None)
        if cheapest is None:
            return None
        trained, images = self.models["mnist", "badnets"]
        with tempfile.TemporaryDirectory() as folder:
            again = get_or_diagnose(trained, images, cheapest, self.preset, seed=self.seed,
                                    store=ArtefactStore(folder, read_only_roots=[]))
        first = self.runs[cheapest]
        # levels are model scores: equal up to float rounding (BLAS may sum in another order under other load)
        return (torch.allclose(first.splitting.levels, again.splitting.levels, atol=1e-6, equal_nan=True)
                and torch.equal(first.realisations(TARGET).nan_to_num(-9), again.realisations(TARGET).nan_to_num(-9)))

    def acceptance(self) -> ResultTable:
        """Issue 5's acceptance checks on the numbers above (and, at `cpu` scale, the cold-cache time < 90 min)."""
        checks = []
        for dataset in self.preset.attacks:
            found = {r.attack: d for r, d in self.searched.items() if r.dataset == dataset}
            if {"badnets", "benign"} <= found.keys():
                bad, clean = found["badnets"], found["benign"]
                checks.append((f"{dataset}: class 3 leads the BadNets model's maps (margin {bad.margin:.2f} decades; "
                               f"benign model's suspect {self.class_names[dataset][clean.suspect]} by "
                               f"{clean.margin:.2f})", bad.suspect == TARGET and clean.margin < bad.margin / 2))
            asr = self.recovery.get((dataset, "badnets", "probits", "PI"))
            if asr is not None:
                checks.append((f"{dataset}: recovered BadNets trigger ASR {asr:.1f} % >= 50 %", asr >= 50))
        if ("cifar10", "badnets") in self._pi_outputs:
            table3 = self.table3().frame
            rows = table3[(table3["dataset"] == "cifar10") & (table3["attack"] == "badnets")].set_index("defence")
            restore, plain = rows.loc["REStore probits"], rows.loc["no defence"]
            checks.append((f"cifar10: REStore purification ASR {restore['ASR']:.1f} % < 20 % with CDA drop "
                           f"{plain['CDA'] - restore['CDA']:.1f} <= 8 points", restore["ASR"] < 20
                           and plain["CDA"] - restore["CDA"] <= 8))
            ratio = restore["s/image"] / plain["s/image"]
            checks.append((f"cifar10: REStore test-time cost {ratio:.2f}x a plain forward pass (<= 1.1x)",
                           ratio <= 1.1))
        repeats = self.repeats_bit_for_bit()
        if repeats is not None:
            checks.append(("same seed, same curves and recovered triggers (MNIST BadNets run, twice)", repeats))
        if self.scale == "cpu":
            cold = self.clock.cold_minutes()
            checks.append((f"notebook from a cold cache {cold:.1f} min < 90", cold < 90))
        return ResultTable("acceptance", f"Issue 5 acceptance checks at scale {self.scale!r}, as measured in this "
                           "run.", pd.DataFrame(checks, columns=["check", "holds"]))
