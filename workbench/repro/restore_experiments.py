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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch

from workbench.core.artefacts import Artefact, ArtefactStore, config_key, get_or_compute
from workbench.core.attacks import AllClassesPoison, Attack, PoisonConfig, make_attack
from workbench.core.data import ImageDataset, dataset_spec
from workbench.core.mae import MAERestorer
from workbench.core.query import QueryModel
from workbench.core.runtime import make_generator
from workbench.core.scales import pick
from workbench.core.training import TrainConfig, TrainedModel
from workbench.core.validation import WorkbenchError, check_name, check_positive_int
from workbench.defenses.baselines.februus import Februus
from workbench.defenses.bdmae import BDMAE, BDMAEConfig
from workbench.defenses.restore import (
    OUTPUTS,
    PAPER_PER_SET,
    Diagnosis,
    Purifier,
    RestoreSetup,
    calibrate_alpha,
    diagnose,
    estimate_trigger,
    recovered_asr,
    select_purifier,
    splitting_config,
)
from workbench.repro.bdmae_experiments import evaluate

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
class Recipe:
    """How one dataset's classifiers are trained at a scale."""

    model: str
    model_options: tuple[tuple[str, Any], ...] = ()
    train_size: int | None = None
    epochs: int = 12
    lr: float = 0.2
    augment: str = "none"


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

    recipes: dict[str, Recipe]
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
_BACKDOORED = ("badnets", "sig", "wanet")
_CPU_RUNS = (
    _runs(("mnist", "cifar10"), ("benign", "badnets"), ("PI",), ("probits",))  # maps of Fig. 5 (diagnosis)
    + _runs(("mnist", "cifar10"), ("sig", "wanet"), ("PI",), ("probits",), (TARGET,))  # Table II (III: REStore)
    + _runs(("mnist", "cifar10"), _BACKDOORED, ("PI",), ("logits", "labels"), (TARGET,))  # Tables VIII, IX (III)
    + _runs(("mnist", "cifar10"), _BACKDOORED, ("FI",), ("probits",), (TARGET,))  # Table II, FI column
    + _runs(("cifar10",), ("badnets_clean_label", "sig_clean_label", "dynamic_badnets", "logit_obfuscation"), ("PI",),
            ("logits",), (TARGET,))  # Sec. IV-G, V-C: logits scorer
    + _runs(("cifar10",), ("all_classes",), ("PI",), ("logits",), ALL_CLASSES_SAMPLE)  # Sec. V-B
)

RESTORE_PRESETS: dict[str, RestorePreset] = {
    "smoke": RestorePreset(
        recipes={"mnist": Recipe("lenet5", train_size=2000, epochs=2, lr=0.05),
                 "cifar10": Recipe("resnet_small", (("widths", (8, 8, 16, 16)),), train_size=2000, epochs=2)},
        splitting={"particles": 8, "survivors": 4, "passes": 1, "max_levels": 3},
        clean_images=200, eval_images=100, comparable_images=4, per_set=3, alpha=0.2,
        attacks={"mnist": ("benign", "badnets"), "cifar10": ("benign", "badnets")},
        runs=(_runs(("mnist", "cifar10"), ("benign", "badnets"), ("PI",), ("probits",))
              + _runs(("mnist",), ("badnets",), ("PI",), ("labels",), (TARGET,))
              + _runs(("mnist",), ("badnets",), ("FI",), ("probits",), (TARGET,)))),
    "cpu": RestorePreset(
        recipes={"mnist": Recipe("lenet5", epochs=30, lr=0.05),
                 "cifar10": Recipe("resnet_small", (("widths", (16, 32, 32, 64)),), train_size=20000, epochs=12)},
        # deep and narrow: J_max and T as the paper's reach matter more than n (pilots: MNIST BadNets separates
        # clearly within 40 levels in ~1 min for 10 classes; CIFAR-10 BadNets overtakes the naturally fragile
        # classes 6 and 9 only beyond ~1e-14 (~45 levels) and was still level with frog at 60 levels; at 80 levels
        # (1e-24) it led both; 80 levels take ~12 min for 10 classes)
        splitting={"particles": 40, "survivors": 20, "passes": 10, "max_levels": 80},
        clean_images=500, eval_images=1000, comparable_images=100,
        attacks={"mnist": MAIN_ATTACKS, "cifar10": ATTACKS}, runs=_CPU_RUNS),
    "paper": RestorePreset(
        recipes={"mnist": Recipe("lenet5", epochs=100, lr=0.001),
                 "cifar10": Recipe("resnet18", epochs=100, lr=0.001, augment="crop_flip")},
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
    common = {"dataset": dataset, "model": recipe.model, "model_options": recipe.model_options,
              "train_size": recipe.train_size, "epochs": recipe.epochs, "lr": recipe.lr, "augment": recipe.augment}
    if attack == "benign":
        return TrainConfig(**common)
    if attack == "all_classes":
        return TrainConfig(**common, all_classes_poison=AllClassesPoison(ratio=POISON_RATIO))
    attack_trigger = trigger(dataset, attack)
    if attack.endswith("_clean_label"):
        poison = PoisonConfig(attack_trigger, target=TARGET, ratio=CLEAN_LABEL_RATIO, ratio_of="candidates",
                              clean_label=True)
    else:
        poison = PoisonConfig(attack_trigger, target=TARGET, ratio=POISON_RATIO,
                              noise_ratio=2.0 if attack == "wanet" else 0.0)
    return TrainConfig(**common, poison=poison, logit_anchor=LOGIT_ANCHOR if attack == "logit_obfuscation" else 0.0)


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


def get_or_diagnose(trained: TrainedModel, images: Images, run: Run, preset: RestorePreset, *, seed: int = 0,
                    store: ArtefactStore | None = None, progress: bool = False) -> Diagnosis:
    """Calibrate alpha_def and run importance splitting over every class of a model, or load that run.

    The identity of a run: the model's artefact key, the setup, the scorer output, the splitting settings, the seed
    and the defender's images (their count; they are a seeded part of the model's own test split).
    """
    store = store or ArtefactStore()
    identity = {"model": trained.key, "setup": run.setup, "output": run.output, "splitting": preset.splitting,
                "clean_images": preset.clean_images, "seed": seed}
    # every class, the paper's |X_test^cl| and a calibrated alpha_def are the defaults; only others enter the identity
    defaults = {"per_set": PAPER_PER_SET, "alpha": None, "classes": []}
    chosen = {"per_set": preset.per_set, "alpha": preset.alpha, "classes": list(run.classes or ())}
    identity.update({k: v for k, v in chosen.items() if v != defaults[k]})

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

    diagnosis, _, _ = get_or_compute(store, "restore", config_key(identity), identity, compute=run_diagnosis,
                                     restore=restore)
    return diagnosis


def triggered_test_images(images: Images, dataset: str, attack: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation images of the non-target classes with the attack's trigger, and their true labels."""
    attack_trigger = trigger(dataset, attack)
    if attack_trigger is None:
        raise WorkbenchError(f"{attack!r} has no single trigger")
    keep = images.test_labels != TARGET
    return attack_trigger.apply(images.test[keep]), images.test_labels[keep]


def restore_purifier(trained: TrainedModel, images: Images, found: Diagnosis, preset: RestorePreset, *,
                     transform: str = "subtract", low_pass: bool = False) -> tuple[Purifier, list[dict[str, float]]]:
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


def compare_defences(trained: TrainedModel, images: Images, dataset: str, attack: str,
                     purifiers: dict[str, Purifier], restorer: MAERestorer, bdmae_config: BDMAEConfig,
                     preset: RestorePreset, *, seed: int = 0) -> pd.DataFrame:
    """Table III and IV for one model: CDA, SDA and ASR (%) and seconds per image of no defence, Februus (XGradCAM
    and GradCAM++ at the paper's CAM threshold 0.8, inpainted by the workbench MAE), BDMAE (tiny MAE) and each
    REStore purifier in `purifiers`.

    The slow per-image defences see `preset.comparable_images` clean and as many triggered test images; no defence
    and REStore, which cost one forward pass, see every evaluation image (the `images` column). Seconds per image
    are measured on those comparable images for every defence (the fast ones as the fastest of interleaved repeated
    passes, their cost being too small for one pass to time reliably).
    """
    x_bd, y_bd = triggered_test_images(images, dataset, attack)
    count = preset.comparable_images
    x_small = torch.cat([images.test[:count], x_bd[:count]])
    labels = QueryModel(trained.model, "label")
    bdmae = BDMAE(QueryModel(trained.model, "label"), restorer, bdmae_config)
    defences: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], bool]] = {  # name -> (predict, is slow)
        "no defence": (labels.labels, False),
        **{f"Februus {name} (0.8)": (Februus(trained.model, restorer, method, 0.8).predict, True)
           for method, name in (("xgradcam", "XGradCAM"), ("gradcam++", "GradCAM++"))},
        "BDMAE (tiny MAE)": (lambda x: bdmae.predict(x, seed=seed), True),
        **{f"REStore {name}": (lambda x, p=purifier: labels.labels(p(x)), False)
           for name, purifier in purifiers.items()},
    }
    fast_seconds = seconds_per_image({name: predict for name, (predict, slow) in defences.items() if not slow},
                                     x_small)
    rows = []
    for name, (predict, slow) in defences.items():
        x_clean, y_clean = (images.test[:count], images.test_labels[:count]) if slow else (images.test,
                                                                                             images.test_labels)
        bd, y = (x_bd[:count], y_bd[:count]) if slow else (x_bd, y_bd)
        measured = evaluate(predict, x_clean, y_clean, bd, y, TARGET)
        rows.append({"defence": name, "CDA": measured["CA"], "SDA": measured["BA"], "ASR": measured["ASR"],
                     "images": len(x_clean) + len(bd),
                     # slow defences were timed on exactly these images by `evaluate`; one pass is enough there
                     "s/image": measured["s/image"] if slow else fast_seconds[name]})
    return pd.DataFrame(rows)


def recovered_asr_percent(trained: TrainedModel, images: Images, found: Diagnosis, cls: int, *,
                          seed: int = 0) -> float:
    """ASR (%) of the perturbations a run recovered for class `cls`, on the clean test images of the other classes
    ([REStore] Tables II, VIII, IX and Fig. 8), through hard-label access to the model."""
    return 100 * recovered_asr(QueryModel(trained.model, "label"), found.setup, found.realisations(cls), images.test,
                               images.test_labels, cls, seed=seed)


#: our defence rows -> the paper's rows in Table III (Februus at CAM threshold 0.8; the tiny MAE's closest BDMAE is
#: BDMAE base)
PAPER_DEFENCE = {"Februus XGradCAM (0.8)": "Februus XGradCAM", "Februus GradCAM++ (0.8)": "Februus GradCAM++",
                 "BDMAE (tiny MAE)": "BDMAE base"}


def defence_table(trained: TrainedModel, images: Images, dataset: str, attack: str, runs: dict[Run, Diagnosis],
                  outputs: list[str], restorer: MAERestorer, preset: RestorePreset,
                  paper: dict[str, tuple[float, float, float]], *, seed: int = 0) -> pd.DataFrame:
    """Table III for one model: `compare_defences` with a REStore purifier from the model's PI run of each scorer
    output in `outputs`, the strength each purifier chose, and the paper's CDA / SDA / ASR beside ours."""
    def pi_run(output: str) -> Diagnosis:
        return next(d for r, d in runs.items() if (r.dataset, r.attack, r.setup, r.output) == (dataset, attack, "PI",
                                                                                                output))

    purifiers = {output: restore_purifier(trained, images, pi_run(output), preset)[0] for output in outputs}
    table = compare_defences(trained, images, dataset, attack, purifiers, restorer, BDMAEConfig(), preset, seed=seed)
    table["strength"] = [purifiers[n.split()[-1]].strength if n.startswith("REStore") else None
                         for n in table["defence"]]
    for i, column in enumerate(("CDA", "SDA", "ASR")):
        table[f"paper {column}"] = [paper.get(PAPER_DEFENCE.get(n, n), (None,) * 3)[i] for n in table["defence"]]
    table.insert(0, "attack", attack)
    table.insert(0, "dataset", dataset)
    return table.round({"CDA": 1, "SDA": 1, "ASR": 1})
