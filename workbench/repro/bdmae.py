"""BDMAE experiments: the models, defences, evaluation and tables of `11_bdmae_tables.ipynb` (`BDMAETables`).

Every defence is evaluated the same way on the same images: CA on clean test images, BA and ASR on triggered
test images whose true class is not the target ([BDMAE] Sec. 5.1), with wall-clock seconds and label queries.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from typing import Any, Protocol

import pandas as pd
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from workbench.core.artefacts import Artefact, ArtefactStore, config_key, get_or_compute
from workbench.core.attacks import (
    AdversarialStep,
    Attack,
    InputAwareConfig,
    PoisonConfig,
    backdoor_test_set,
    make_attack,
)
from workbench.core.data import ImageDataset, stratified_subset
from workbench.core.diffusion import Diffusion
from workbench.core.diffusion_training import DEFAULT_DIFFUSION, load_workbench_diffusion
from workbench.core.mae import MAERestorer, random_token_masks
from workbench.core.mae_training import DEFAULT_MAE, load_workbench_mae
from workbench.core.query import QueryModel
from workbench.core.runtime import make_generator, resolve_device
from workbench.core.scales import pick, resolve_scale
from workbench.core.training import (
    TrainConfig,
    TrainedModel,
    artefact_address,
    get_or_train,
    get_or_train_input_aware,
)
from workbench.core.validation import check_positive_int
from workbench.defenses.baselines.diffpure import DiffPure
from workbench.defenses.baselines.februus import Februus
from workbench.defenses.baselines.patchcleanser import PatchCleanser
from workbench.defenses.baselines.transforms import Blur, ShrinkPad
from workbench.defenses.bdmae import BDMAE, VARIANTS, BDMAEConfig, BDMAEResult, token_dissimilarity
from workbench.repro.paper_numbers import (
    BDMAE_TABLE1,
    BDMAE_TABLE2,
    BDMAE_TABLE3,
    BDMAE_TABLE_A2,
    BDMAE_TABLE_A3_A4,
    Published,
)
from workbench.repro.presets import QUICKSTART, TARGETS
from workbench.repro.results import ResultTable

Predict = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BDMAEPreset:
    """Sizes of the BDMAE tables at one scale."""

    main_images: int  # clean and triggered images for the main CIFAR-10 setting (acceptance)
    other_images: int  # clean and triggered images for every other setting
    model_epochs: int  # epochs of the reduced models (Table 3, trigger sizes of Tables A.3/A.4)
    model_train_size: int | None  # training images of the reduced models (None = all)
    datasets: tuple[str, ...] = ("cifar10", "gtsrb")  # datasets of every table
    bdmae: BDMAEConfig = field(default_factory=BDMAEConfig)
    diffpure_images: int = 500  # Table 1's clean and triggered images (the paper's 500), at most Table 2's count
    diffpure_datasets: tuple[str, ...] = ("cifar10", "gtsrb")  # Table 1's datasets (those of `datasets`)
    variant_images: int | None = None  # Tables A.3/A.4's clean and triggered images per trigger (None: other_images)
    shard_images: int = 256  # images per cached evaluation shard (a `jobs run` job): a multiple of BDMAE's 64 per batch

    @property
    def trigger_variant_images(self) -> int:
        return self.variant_images or self.other_images


BDMAE_PRESETS = {
    # smoke: shards of 4 images, so that the smoke job graph evaluates the main setting in two shards
    "smoke": BDMAEPreset(8, 4, 1, 1000, ("cifar10",), BDMAEConfig(outer_rounds=2, inner_masks=3, refine_steps=2),
                         shard_images=4),
    # cpu: 100 + 100 images outside the main setting keep notebook 11 under an hour on 2 cores. Measured on one
    # 2-core machine with DiffPure on 200 + 200 images and Tables A.3/A.4 on 100 + 100: 65.4 minutes (Table 2 15.4,
    # Table 1 15.6, A.2 2.1, A.3/A.4 13.0, Table 3 15.0, Fig. 5 4.2); DiffPure's 100 network passes cost 1.0 s per
    # image with either sampler. Hence DiffPure on 100 + 100 CIFAR-10 images and the twelve trigger variants on
    # 60 + 60 each (the paper: 500 and the full test sets)
    "cpu": BDMAEPreset(500, 100, 6, 15_000, diffpure_images=100, diffpure_datasets=("cifar10",), variant_images=60),
    # gpu: the main setting on 2,000 + 2,000 images, the others on 1,000 + 1,000, the reduced models 30 epochs on
    # the full training sets
    "gpu": BDMAEPreset(2000, 1000, 30, None, variant_images=500),
    "paper": BDMAEPreset(10_000, 10_000, 60, None),
}


@dataclass(frozen=True)
class Setting:
    """One row group of a table: how the model is trained, the test-time trigger and the target."""

    train: TrainConfig | InputAwareConfig
    test_attack: Attack | None  # None for IAB: its trigger comes with the trained generators
    target: int
    note: str = ""

    @property
    def recipe(self) -> TrainConfig:
        return self.train.train if isinstance(self.train, InputAwareConfig) else self.train

    def load(self, *, device: str = "auto", store: ArtefactStore | None = None,
             progress: bool = False) -> tuple[TrainedModel, Attack]:
        """The trained model (loaded from `store`, default the cache, or trained now) and its test-time trigger."""
        if isinstance(self.train, InputAwareConfig):
            return get_or_train_input_aware(self.train, store=store, device=device, progress=progress)
        return get_or_train(self.train, store=store, device=device, progress=progress), self.test_attack


@dataclass(frozen=True)
class ModelAccuracy:
    """A trained model's own CA and ASR (%) on its recipe's test images, as recorded when it was trained."""

    ca: float
    asr: float  # NaN for a clean model
    test_size: int | None = None  # the recipe's `test_size`: None = the full test split

    @property
    def measured_on(self) -> str:
        return "the full test split" if self.test_size is None else f"{self.test_size:,} test images"

    @classmethod
    def of(cls, trained: TrainedModel) -> ModelAccuracy:
        return cls(*trained.summary.percent(), trained.config.test_size)


def bdmae_model(dataset: str, poison: PoisonConfig | None, scale: str | None, *, reduced: bool = False,
                seed: int = 0) -> TrainConfig:
    """A model for the BDMAE tables: the quickstart's recipe on `dataset` poisoned by `poison` (None = clean).
    `reduced` trains on the preset's smaller subset for fewer epochs (the trigger-size models of Tables A.3/A.4)."""
    recipe = pick(scale, QUICKSTART).recipe
    if reduced:
        preset = pick(scale, BDMAE_PRESETS)
        recipe = replace(recipe, epochs=preset.model_epochs, train_size=preset.model_train_size)
    return recipe.config(dataset, poison=poison, seed=seed)


def badnets_setting(dataset: str, attack: Attack, scale: str | None, *, reduced: bool = False) -> Setting:
    """10 % all-to-one poisoning with `attack` ([BDMAE] App. B.1)."""
    target = TARGETS[dataset]
    poison = PoisonConfig(attack, target=target, ratio=0.1)
    return Setting(bdmae_model(dataset, poison, scale, reduced=reduced), attack, target)


def clean_setting(dataset: str, scale: str | None) -> Setting:
    """A clean model (Table A.2); its "triggered" images carry BDMAE's colour patch, which it ignores."""
    return Setting(bdmae_model(dataset, None, scale), make_attack("bdmae_badnets_colour"), TARGETS[dataset])


def challenging_settings(dataset: str, scale: str | None) -> dict[str, Setting]:
    """Table 3's attacks: IAB (sample-specific generated triggers), LC (PGD against the clean model + four-corner
    grid) and Blended (15 x 15 noise patch, alpha 0.2 for training, 0.1 at test time)."""
    target = TARGETS[dataset]
    clean = bdmae_model(dataset, None, scale)  # LC's surrogate
    recipe = bdmae_model(dataset, None, scale, reduced=True)  # Table 3's models use the reduced recipe
    lc = PoisonConfig(make_attack("lc_four_corners"), target=target, ratio=1.0, ratio_of="candidates",
                      clean_label=True, adversarial=AdversarialStep(surrogate=clean.to_dict()))
    blended = make_attack("bdmae_blended")
    return {
        "IAB": Setting(InputAwareConfig(train=recipe, target=target, mask_epochs=max(1, recipe.epochs // 4)), None,
                       target,
                       "generators trained with the classifier for the recipe's epochs (original: 1000)"),
        "LC": Setting(bdmae_model(dataset, lc, scale, reduced=True), lc.attack, target,
                      "every target-class training image perturbed (PGD, eps 16/255) then triggered"),
        "Blended": Setting(bdmae_model(dataset, PoisonConfig(blended, target=target, ratio=0.1), scale, reduced=True),
                           blended.replace(alpha=0.1), target, "alpha 0.2 in training, 0.1 at test time"),
    }


def trigger_variants() -> dict[str, Attack]:
    """[BDMAE] Tables A.3/A.4: 1x1-3x3 colour (random, seeded) and white patches at the colour patch's place."""
    variants = {}
    for size in (1, 2, 3):
        variants[f"{size}x{size}-color"] = make_attack("badnets", pattern="random_colour", size=size, row=16, col=27,
                                                       seed=size)
        variants[f"{size}x{size}-white"] = make_attack("badnets", pattern="white", size=size, row=16, col=27)
    return variants


def evaluation_images(test: ImageDataset, attack: Attack | None, target: int, count: int, seed: int = 0,
                      sources: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]:
    """`count` clean test images (stratified) and `count` triggered non-target ones (clean ones if no attack),
    drawn from the `sources` classes only when given (source-specific attacks, e.g. L-RED's).

    Returns:
        (x_clean, y_clean, x_triggered, y_triggered).
    """
    gen = make_generator(seed)
    clean = test.subset(stratified_subset(test.labels, count, gen))
    keep = test.labels != target
    if sources is not None:
        keep &= torch.isin(test.labels, torch.tensor(list(sources)))
    non_target = test.subset(torch.nonzero(keep).squeeze(1))
    chosen = non_target.subset(stratified_subset(non_target.labels, count, gen))
    x_bd, y_bd = backdoor_test_set(chosen, attack, target) if attack is not None else (
        chosen.float_images(), chosen.labels)
    return clean.float_images(), clean.labels, x_bd, y_bd


def evaluate(predict: Predict, x_clean: torch.Tensor, y_clean: torch.Tensor, x_bd: torch.Tensor,
             y_bd: torch.Tensor, target: int, queries: Callable[[], int] | None = None) -> dict[str, float]:
    """CA, BA, ASR (in %), seconds per image and label queries per image of one defence."""
    before = queries() if queries is not None else 0
    start = time.perf_counter()
    pred_clean = predict(x_clean).cpu()
    pred_bd = predict(x_bd).cpu()
    seconds = time.perf_counter() - start
    used = (queries() - before) if queries is not None else float("nan")
    return {"CA": 100 * (pred_clean == y_clean).float().mean().item(),
            "BA": 100 * (pred_bd == y_bd).float().mean().item(),
            "ASR": 100 * (pred_bd == target).float().mean().item(),
            "s/image": seconds / (len(x_clean) + len(x_bd)),
            "queries/image": used / (len(x_clean) + len(x_bd))}


class Predictor(Protocol):
    """A defended pipeline's labels for test images; image n of the call is image `first_index` + n of the test
    set, whose random draws (if any) come from (seed, first_index + n), so any split into calls agrees."""

    def predict(self, x: torch.Tensor, *, seed: int = 0, first_index: int = 0) -> torch.Tensor: ...


@dataclass(frozen=True)
class Subject:
    """What the defences of one evaluation are built from: the model, the MAE that restores masked images (BDMAE,
    Februus), BDMAE's settings and, for DiffPure, the diffusion model."""

    model: nn.Module
    restorer: MAERestorer
    bdmae_config: BDMAEConfig
    diffusion: Diffusion | None

    def label_only(self) -> QueryModel:
        """A fresh label-only wrapper (each black-box defence counts its own queries)."""
        return QueryModel(self.model, "label")


#: [BDMAE] Table 2's defences in the table's order (Februus at each CAM threshold; the best one is kept):
#: name -> how it is built. Black-box defences hold their `QueryModel` as `classifier`; Februus is white-box.
TABLE2_DEFENCES: dict[str, Callable[[Subject], Predictor]] = {
    "Before defense": lambda s: _Identity(s.label_only()),
    **{f"Februus {label} ({threshold})": (lambda s, m=method, t=threshold: Februus(s.model, s.restorer, m, t))
       for method, label in (("xgradcam", "XGradCAM"), ("gradcam++", "GradCAM++")) for threshold in (0.6, 0.7, 0.8)},
    "PatchCleanser vanilla": lambda s: PatchCleanser(s.label_only(), variant="vanilla"),
    "PatchCleanser variant": lambda s: PatchCleanser(s.label_only(), variant="majority"),
    "Blur weak": lambda s: Blur(s.label_only(), sigma=0.5),
    "Blur strong": lambda s: Blur(s.label_only(), sigma=1.0),
    "ShrinkPad weak": lambda s: ShrinkPad(s.label_only(), pad=4),
    "ShrinkPad strong": lambda s: ShrinkPad(s.label_only(), pad=8),
    "BDMAE (tiny MAE)": lambda s: BDMAE(s.label_only(), s.restorer, s.bdmae_config),
}
#: [BDMAE] Table 1's DiffPure rows (both samplers), listed before BDMAE's row
DIFFPURE_DEFENCES: dict[str, Callable[[Subject], Predictor]] = {
    f"DiffPure {sampler.upper()}": (lambda s, sampler=sampler: _Purified(s.label_only(),
                                                                         DiffPure(s.diffusion, sampler=sampler)))
    for sampler in ("ddpm", "sde")
}


def defence_builders(diffpure: bool = False) -> dict[str, Callable[[Subject], Predictor]]:
    """Table 2's defences, with Table 1's DiffPure rows before BDMAE's when `diffpure`."""
    *others, bdmae = TABLE2_DEFENCES.items()
    return dict([*others, *(DIFFPURE_DEFENCES.items() if diffpure else ()), bdmae])


@dataclass(frozen=True)
class _Purified:
    """A purifier that only transforms images (DiffPure), followed by the model's label."""

    classifier: QueryModel
    purifier: DiffPure

    def predict(self, x: torch.Tensor, *, seed: int = 0, first_index: int = 0) -> torch.Tensor:
        return self.classifier.labels(self.purifier.purify(x, seed=seed, first_index=first_index))


@dataclass(frozen=True)
class _Identity:
    """No defence: the model's own prediction."""

    classifier: QueryModel

    def predict(self, x: torch.Tensor, *, seed: int = 0, first_index: int = 0) -> torch.Tensor:
        return self.classifier.labels(x)


@dataclass(frozen=True)
class Evaluation:
    """One comparison of a table: the defences whose names start with one of `only` (None: all of Table 2's, with
    Table 1's DiffPure rows when `diffpure`) on `images` clean and `images` triggered test images of `setting`
    (`evaluation_images`, seeded). It is computed in shards of consecutive images, each a cached artefact."""

    setting: Setting
    images: int
    only: tuple[str, ...] | None = None
    diffpure: bool = False

    def defences(self) -> tuple[str, ...]:
        names = defence_builders(self.diffpure)
        return tuple(name for name in names if self.only is None or name.startswith(self.only))

    def shards(self, shard_images: int) -> list[tuple[int, int]]:
        """The (start, stop) image ranges of its shards."""
        check_positive_int(shard_images, "shard_images")
        return [(start, min(start + shard_images, self.images)) for start in range(0, self.images, shard_images)]


def evaluation_address(evaluation: Evaluation, shard: tuple[int, int], bdmae_config: BDMAEConfig, *,
                       seed: int = 0) -> tuple[str, str, dict[str, Any]]:
    """(artefact kind, key, identity) of one shard of `evaluation`: the model's artefact key, the test-time trigger,
    the images (count, seed, range), the defences and what they are built with (BDMAE's settings, the recipes of
    the tiny MAE and, for DiffPure, of the diffusion model)."""
    setting = evaluation.setting
    defences = evaluation.defences()
    identity = {"model": artefact_address(setting.train)[1],
                "trigger": setting.test_attack.to_dict() if setting.test_attack is not None else None,
                "target": setting.target, "images": evaluation.images, "seed": seed, "shard": list(shard),
                "defences": list(defences), "bdmae": asdict(bdmae_config), "mae": config_key(DEFAULT_MAE.to_dict())}
    if any(name in DIFFPURE_DEFENCES for name in defences):
        identity["diffusion"] = config_key(DEFAULT_DIFFUSION.to_dict())
    return "evaluations", config_key(identity), identity


@dataclass(frozen=True)
class ShardPredictions:
    """One defence's labels on a shard's clean and triggered images, with the time and label queries it took."""

    clean: torch.Tensor
    triggered: torch.Tensor
    seconds: float
    queries: int | None  # None for a white-box defence


@dataclass(frozen=True)
class EvaluatedShard:
    """A shard's true labels and every defence's `ShardPredictions`."""

    clean_labels: torch.Tensor
    triggered_labels: torch.Tensor
    defences: dict[str, ShardPredictions]


@functools.cache
def tiny_mae(device: str) -> MAERestorer:
    """The tiny MAE of the evaluations' recipe (`DEFAULT_MAE`), loaded once per process and device."""
    return MAERestorer(load_workbench_mae(DEFAULT_MAE, device=device))


@functools.cache
def _diffusion(device: str) -> Diffusion:
    """The tiny diffusion model of the evaluations' recipe (`DEFAULT_DIFFUSION`), loaded once per process and
    device."""
    return load_workbench_diffusion(DEFAULT_DIFFUSION, device=device)


def get_or_predict(identity: dict[str, Any], names: Sequence[str],
                   prepare: Callable[[], tuple[dict[str, Predictor], torch.Tensor, torch.Tensor, torch.Tensor,
                                               torch.Tensor]], *,
                   first_index: int = 0, seed: int = 0, store: ArtefactStore | None = None,
                   progress: bool = False) -> EvaluatedShard:
    """The labels of the defences `names` on clean and triggered images, stored under `identity` (which must name
    everything they depend on), or loaded. `prepare()` builds the defences (name -> `Predictor`) and the images
    (x_clean, y_clean, x_bd, y_bd), image n being image `first_index` + n of a larger set."""
    store = store or ArtefactStore()
    kind, key = "evaluations", config_key(identity)

    def restore(found: Artefact) -> EvaluatedShard:
        t, recorded = found.tensors, found.metrics["defences"]
        return EvaluatedShard(t["labels/clean"], t["labels/triggered"], {
            name: ShardPredictions(t[f"{name}/clean"], t[f"{name}/triggered"], recorded[name]["seconds"],
                                   recorded[name]["queries"]) for name in names})

    def compute() -> tuple[EvaluatedShard, dict[str, torch.Tensor], dict[str, Any]]:
        defences, x_clean, y_clean, x_bd, y_bd = prepare()
        last = first_index + max(len(x_clean), len(x_bd))
        predictions = {name: _predict(defences[name], x_clean, x_bd, first_index, seed)
                       for name in tqdm(names, desc=f"defences on images {first_index}-{last}", disable=not progress)}
        tensors = {"labels/clean": y_clean, "labels/triggered": y_bd}
        for name, predicted in predictions.items():
            tensors[f"{name}/clean"], tensors[f"{name}/triggered"] = predicted.clean, predicted.triggered
        metrics = {"defences": {name: {"seconds": p.seconds, "queries": p.queries} for name, p in predictions.items()}}
        return EvaluatedShard(y_clean, y_bd, predictions), tensors, metrics

    return get_or_compute(store, kind, key, identity, compute=compute, restore=restore)[0]


def get_or_evaluate_shard(evaluation: Evaluation, shard: tuple[int, int], bdmae_config: BDMAEConfig, *,
                          seed: int = 0, device: str = "auto", store: ArtefactStore | None = None,
                          progress: bool = False) -> EvaluatedShard:
    """Evaluate every defence of `evaluation` on images `shard` = (start, stop) of its clean and triggered images, or
    load that shard: image n is image start + n of the whole evaluation, so the shards of one evaluation give the
    same labels as one call over all its images."""
    _, _, identity = evaluation_address(evaluation, shard, bdmae_config, seed=seed)
    start, stop = shard

    def prepare() -> tuple[dict[str, Predictor], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        trained, attack = evaluation.setting.load(device=device, store=store, progress=progress)
        x_clean, y_clean, x_bd, y_bd = evaluation_images(evaluation.setting.recipe.splits().test, attack,
                                                         evaluation.setting.target, evaluation.images, seed)
        where = str(resolve_device(device))
        diffusion = _diffusion(where) if evaluation.diffpure else None
        subject = Subject(trained.model, tiny_mae(where), bdmae_config, diffusion)
        builders = defence_builders(evaluation.diffpure)
        return ({name: builders[name](subject) for name in evaluation.defences()},
                x_clean[start:stop], y_clean[start:stop], x_bd[start:stop], y_bd[start:stop])

    return get_or_predict(identity, evaluation.defences(), prepare, first_index=start, seed=seed, store=store,
                          progress=progress)


def _predict(defence: Predictor, x_clean: torch.Tensor, x_bd: torch.Tensor, first_index: int,
             seed: int) -> ShardPredictions:
    """One defence's labels on a shard (clean image n and triggered image n both draw from (seed, first_index + n),
    as the paper's separate runs over the clean and triggered test sets do)."""
    wrapper = getattr(defence, "classifier", None)
    start = time.perf_counter()
    labels = [defence.predict(x, seed=seed, first_index=first_index).cpu() if len(x) else
              torch.zeros(0, dtype=torch.long) for x in (x_clean, x_bd)]
    return ShardPredictions(*labels, time.perf_counter() - start, wrapper.queries if wrapper is not None else None)


def compare_defences(evaluation: Evaluation, bdmae_config: BDMAEConfig, *, shard_images: int, seed: int = 0,
                     device: str = "auto", store: ArtefactStore | None = None, progress: bool = False
                     ) -> tuple[pd.DataFrame, ModelAccuracy]:
    """Evaluate the defences of `evaluation` (Table 2's, or those it names; Table 1's DiffPure rows too) on its
    setting, shard by shard (`get_or_evaluate_shard`: cached, so `jobs run` can compute the shards anywhere).

    Februus is reported at the threshold with the best (CA + BA) / 2 for each CAM method, as the paper does.

    Returns:
        (one row per defence with CA, BA, ASR in %, seconds and label queries per image (summed over the shards);
         the model's own CA / ASR on its recipe's test images, from training).
    """
    trained, _ = evaluation.setting.load(device=device, store=store, progress=progress)
    shards = [get_or_evaluate_shard(evaluation, shard, bdmae_config, seed=seed, device=device, store=store,
                                    progress=progress) for shard in evaluation.shards(shard_images)]
    y_clean = torch.cat([s.clean_labels for s in shards])
    y_bd = torch.cat([s.triggered_labels for s in shards])
    target = evaluation.setting.target
    rows = []
    for name in evaluation.defences():
        parts = [s.defences[name] for s in shards]
        clean, triggered = torch.cat([p.clean for p in parts]), torch.cat([p.triggered for p in parts])
        queries = [p.queries for p in parts]
        images = len(y_clean) + len(y_bd)
        rows.append({"defence": name, "CA": 100 * (clean == y_clean).float().mean().item(),
                     "BA": 100 * (triggered == y_bd).float().mean().item(),
                     "ASR": 100 * (triggered == target).float().mean().item(),
                     "s/image": sum(p.seconds for p in parts) / images,
                     "queries/image": float("nan") if None in queries else sum(queries) / images})
    table = pd.DataFrame(rows)
    for method in ("Februus XGradCAM", "Februus GradCAM++"):  # keep the best threshold per CAM method
        candidates = table[table["defence"].str.startswith(method)]
        if len(candidates) > 1:
            best = (candidates["CA"] + candidates["BA"]).idxmax()
            table = table.drop(index=[i for i in candidates.index if i != best])
    return table.reset_index(drop=True), ModelAccuracy.of(trained)


def paper_row(defence: str) -> str:
    """The paper's row for one of our defence rows: Februus rows carry the CAM threshold we chose, and our BDMAE
    runs the tiny MAE, whose closest row in BDMAE's tables is BDMAE Base."""
    if defence.startswith("Februus"):
        return defence.split(" (")[0]
    return {"BDMAE (tiny MAE)": "BDMAE Base"}.get(defence, defence)


def with_paper(table: pd.DataFrame, paper: dict[str, Published], note: str,
               metrics: tuple[str, ...] = ("CA", "BA", "ASR"), model: ModelAccuracy | None = None) -> pd.DataFrame:
    """`table` (one row per defence) beside the paper's numbers (NaN where the paper has no such row) and a column
    saying what differs. A backdoored model whose ASR on its test images is below 90 % did not learn its backdoor
    at this scale: the note says so, since BA and ASR then do not test purification."""
    if model is not None and model.asr < 90:
        note += (f"; NO effective backdoor at this scale (model ASR {model.asr:.0f} % on {model.measured_on}): "
                 "BA/ASR here do not test purification")
    out = table.round({"CA": 1, "BA": 1, "ASR": 1, "s/image": 4, "queries/image": 1}).copy()
    out["paper row"] = [paper_row(d) if paper_row(d) in paper else "" for d in out["defence"]]
    for metric in metrics:
        out[f"paper {metric}"] = [paper.get(paper_row(d), Published()).metric(metric) for d in out["defence"]]
    out["what differs"] = note
    return out


def bdmae_accuracies(query: QueryModel, restorer: MAERestorer, config: BDMAEConfig, x_clean: torch.Tensor,
                     y_clean: torch.Tensor, x_bd: torch.Tensor, y_bd: torch.Tensor, seed: int = 0
                     ) -> tuple[float, float, BDMAEResult, BDMAEResult]:
    """[BDMAE] Fig. 5's measurement for one configuration: CA and BA (%) of BDMAE with `config`, and the two results."""
    result_clean = BDMAE(query, restorer, config).purify(x_clean, seed=seed)
    result_bd = BDMAE(query, restorer, config).purify(x_bd, seed=seed)
    return (100 * (result_clean.labels == y_clean).float().mean().item(),
            100 * (result_bd.labels == y_bd).float().mean().item(), result_clean, result_bd)


def score_diagnostics(result: BDMAEResult, x: torch.Tensor, restorer: MAERestorer) -> dict[str, float]:
    """Where BDMAE's clean accuracy goes with a given MAE: the mean initial scores (Alg. 1), the median refinement
    lengths L (Alg. 2), how often the 25 % rule raised the thresholds (Sec. 4.4), the tokens restored, the labels
    purification changed, and S_i of an exact MAE (what the resampling alone costs)."""
    lowest = VARIANTS["full"].thresholds[-1]
    return {
        "mean S_i (before refinement)": result.score_image_initial.mean().item(),
        "mean S_l (before refinement)": result.score_label_initial.mean().item(),
        "L for S_i (median tokens)": result.refinement.of("image").top.float().median().item(),
        "L for S_l (median tokens)": result.refinement.of("label").top.float().median().item(),
        "25 % rule raised the thresholds (%)": 100 * (result.thresholds[:, -1] > lowest).float().mean().item(),
        "tokens restored (%)": 100 * result.restoration_masks[:, -1].float().mean().item(),
        "label changed by purification (%)": 100 * (result.labels != result.original_labels).float().mean().item(),
        "S_i of an exact MAE (resampling only)": token_dissimilarity(
            x, restorer.resample(x), restorer.grid).mean().item(),
    }


#: the BDMAE variants Fig. 5 runs
_FIG5_VARIANTS = ("base_i", "base_l", "full")


def fig5_address(setting: Setting, images: int, *, seed: int = 0) -> tuple[str, str, dict[str, Any]]:
    """(artefact kind, key, identity) of `get_or_measure_fig5`'s measurement."""
    identity = {"figure": "BDMAE Fig. 5 and score diagnostics", "model": artefact_address(setting.train)[1],
                "trigger": setting.test_attack.to_dict() if setting.test_attack is not None else None,
                "target": setting.target, "images": images, "seed": seed, "mae": config_key(DEFAULT_MAE.to_dict()),
                "variants": {name: asdict(config) for name, config in VARIANTS.items() if name in _FIG5_VARIANTS},
                "thresholds": list(FIXED_THRESHOLDS)}
    return "evaluations", config_key(identity), identity


def get_or_measure_fig5(setting: Setting, images: int, *, seed: int = 0, device: str = "auto",
                        store: ArtefactStore | None = None, progress: bool = False) -> dict[str, Any]:
    """[BDMAE] Fig. 5 measured on `images` clean and triggered images of `setting` (computed once, then loaded), as
    rows: "curves" (panel, value, CA, BA: a-c), "fixed" (stage, threshold, CA, BA: d) and "diagnostics" (quantity,
    then `score_diagnostics` of the full method, N_r = 10, on the clean and on the triggered images)."""
    store = store or ArtefactStore()
    kind, key, identity = fig5_address(setting, images, seed=seed)

    def compute() -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
        trained, attack = setting.load(device=device, store=store, progress=progress)
        x_c, y_c, x_b, y_b = evaluation_images(setting.recipe.splits().test, attack, setting.target, images, seed)
        restorer = tiny_mae(str(resolve_device(device)))
        query = QueryModel(trained.model, "label")
        curves, results = [], {}
        for variant in ("base_i", "base_l"):
            for n_o in (1, 2, 3, 5):
                config = replace(VARIANTS[variant], outer_rounds=n_o)
                ca, ba, _, _ = bdmae_accuracies(query, restorer, config, x_c, y_c, x_b, y_b, seed)
                curves.append([f"N_o ({variant})", n_o, ca, ba])
        for n_r in (0, 2, 5, 10):
            config = replace(VARIANTS["full"], refine_steps=n_r)
            ca, ba, on_clean, on_triggered = bdmae_accuracies(query, restorer, config, x_c, y_c, x_b, y_b, seed)
            curves.append(["N_r (full)", n_r, ca, ba])
            results[n_r] = (on_clean, on_triggered)
        fixed = []
        bdmae = BDMAE(query, restorer)
        for stage, (on_clean, on_triggered) in (("before refinement", results[0]), ("after refinement", results[10])):
            for tau in FIXED_THRESHOLDS:
                accuracies = []
                for x, y, result in ((x_c, y_c, on_clean), (x_b, y_b, on_triggered)):
                    purified, _, _ = bdmae.adaptive_restore(x, result.score, fixed_threshold=tau)
                    accuracies.append(100 * (query.labels(purified.clamp(0, 1)) == y).float().mean().item())
                fixed.append([stage, tau, *accuracies])
        on_clean, on_triggered = results[10]
        clean = score_diagnostics(on_clean, x_c, restorer)
        triggered = score_diagnostics(on_triggered, x_b, restorer)
        measured = {"curves": curves, "fixed": fixed,
                    "diagnostics": [[name, clean[name], triggered[name]] for name in clean]}
        return measured, {}, measured

    return get_or_compute(store, kind, key, identity, compute=compute, restore=lambda found: found.metrics)[0]


# --- the paper's tables -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MAEConsistency:
    """How often restoring 75 % random masks keeps the classifier's label on clean images: BDMAE's label score and
    its CA rest on this property of the MAE ([BDMAE] Sec. 4.2)."""

    kept: float  # fraction of labels unchanged
    accuracy_before: float  # % on the clean images
    accuracy_after: float  # % on their restorations
    images: int

    def __str__(self) -> str:
        return (f"labels kept after 75 % random-mask restoration: {100 * self.kept:.1f} % of {self.images} clean test "
                f"images (accuracy {self.accuracy_before:.1f} % -> {self.accuracy_after:.1f} %)")


@dataclass(frozen=True)
class Fig5:
    """[BDMAE] Fig. 5 measured: accuracy against N_o and N_r (`curves`: panel, value, CA, BA) and against one fixed
    threshold on S before / after refinement (`fixed`: stage, threshold, CA, BA)."""

    curves: ResultTable
    fixed: ResultTable


#: the thresholds of Fig. 5d
FIXED_THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(1, 10))


class BDMAETables:
    """[BDMAE]'s Tables 1-3, A.2-A.4, Fig. 5 and the score diagnostics at one scale, each returned as a
    `ResultTable` beside the paper's numbers. Models are trained once and cached; each table is computed once per
    object (Table 1 reuses Table 2's rows where both saw the same images).

    Args:
        scale: the preset's scale (None: $WORKBENCH_SCALE, else "cpu").
        seed: seed of the evaluation images and of every defence's draws.
        device: where to compute.
    """

    def __init__(self, scale: str | None = None, *, seed: int = 0, device: str = "auto") -> None:
        self.scale = resolve_scale(scale)
        self.preset = pick(self.scale, BDMAE_PRESETS)
        self.seed, self.device = seed, device
        self.started = time.time()
        self._table2: dict[str, ResultTable] = {}

    def __str__(self) -> str:
        p = self.preset
        return (f"scale {self.scale}: {p.main_images} + {p.main_images} images for the main setting, {p.other_images} "
                f"+ {p.other_images} elsewhere; BDMAE {p.bdmae}")

    @cached_property
    def restorer(self) -> MAERestorer:
        return tiny_mae(str(resolve_device(self.device)))

    @cached_property
    def main(self) -> Setting:
        """The main setting: CIFAR-10, BDMAE's colour patch, 10 % poisoning (Table 2 and the acceptance checks)."""
        return badnets_setting("cifar10", make_attack("bdmae_badnets_colour"), self.scale)

    def _setting(self, dataset: str) -> Setting:
        return self.main if dataset == "cifar10" else badnets_setting(dataset, make_attack("bdmae_badnets_colour"),
                                                                        self.scale)

    def _images(self, dataset: str) -> int:
        return self.preset.main_images if dataset == "cifar10" else self.preset.other_images

    def _compare(self, evaluation: Evaluation) -> tuple[pd.DataFrame, ModelAccuracy]:
        return compare_defences(evaluation, self.preset.bdmae, shard_images=self.preset.shard_images, seed=self.seed,
                                device=self.device)

    # --- what each table evaluates (the same `Evaluation`s `jobs run bdmae` computes as shards) ---
    def table2_evaluation(self, dataset: str) -> Evaluation:
        return Evaluation(self._setting(dataset), self._images(dataset))

    def table1_evaluation(self, dataset: str) -> Evaluation:
        """DiffPure on at most `preset.diffpure_images` images; beside it, no defence and BDMAE on those images,
        unless Table 2 saw the very same images (then `table1` reuses Table 2's rows)."""
        images = min(self.preset.diffpure_images, self._images(dataset))
        only = ("DiffPure",) if images == self._images(dataset) else ("Before defense", "DiffPure", "BDMAE")
        return Evaluation(self._setting(dataset), images, only, diffpure=True)

    def table_a2_evaluations(self) -> dict[str, Evaluation]:
        return {dataset: Evaluation(clean_setting(dataset, self.scale), self.preset.other_images,
                                    ("Before defense", "BDMAE")) for dataset in self.preset.datasets}

    def table_a3_a4_evaluations(self) -> dict[tuple[str, str], Evaluation]:
        return {(dataset, name): Evaluation(badnets_setting(dataset, attack, self.scale, reduced=True),
                                            self.preset.trigger_variant_images,
                                            ("Before defense", "Blur", "ShrinkPad", "BDMAE"))
                for dataset in self.preset.datasets for name, attack in trigger_variants().items()}

    def table3_evaluations(self) -> dict[tuple[str, str], Evaluation]:
        return {(dataset, name): Evaluation(setting, self.preset.other_images)
                for dataset in self.preset.datasets for name, setting in challenging_settings(dataset,
                                                                                              self.scale).items()}

    def evaluations(self) -> dict[str, Evaluation]:
        """Every comparison of Tables 1, 2, A.2, A.3/A.4 and 3, by a label naming its table and setting."""
        out = {f"Table 2 {d}": self.table2_evaluation(d) for d in self.preset.datasets}
        out |= {f"Table 1 {d}": self.table1_evaluation(d) for d in self.table1_datasets}
        out |= {f"Table A.2 {d}": e for d, e in self.table_a2_evaluations().items()}
        out |= {f"Table A.3/A.4 {d} {n}": e for (d, n), e in self.table_a3_a4_evaluations().items()}
        out |= {f"Table 3 {d} {n}": e for (d, n), e in self.table3_evaluations().items()}
        return out

    @property
    def table1_datasets(self) -> tuple[str, ...]:
        return tuple(d for d in self.preset.datasets if d in self.preset.diffpure_datasets)

    def minutes(self) -> float:
        """Minutes since this object was made."""
        return (time.time() - self.started) / 60

    @cached_property
    def consistency(self) -> MAEConsistency:
        """The tiny MAE's consistency on the main setting's clean evaluation images."""
        trained, _ = self.main.load(device=self.device)
        x, y, _, _ = evaluation_images(self.main.recipe.splits().test, None, self.main.target,
                                       self.preset.main_images, self.seed)
        probe = QueryModel(trained.model, "label")
        masks = random_token_masks(len(x), self.restorer.grid ** 2, 0.75, torch.Generator().manual_seed(self.seed))
        restored, _ = self.restorer.restore(x, masks)
        before, after = probe.labels(x), probe.labels(restored.clamp(0, 1))
        return MAEConsistency((before == after).float().mean().item(), 100 * (before == y).float().mean().item(),
                              100 * (after == y).float().mean().item(), len(x))

    def table2(self, dataset: str) -> ResultTable:
        """[BDMAE] Table 2: every defence on BadNets (the colour patch) on `dataset`."""
        if dataset not in self._table2:
            images = self._images(dataset)
            table, model = self._compare(self.table2_evaluation(dataset))
            frame = with_paper(table, BDMAE_TABLE2[dataset],
                               f"tiny MAE, small CNN, {images}+{images} images, one trigger", model=model)
            self._table2[dataset] = ResultTable(
                f"table2_{dataset}", f"BDMAE Table 2, {dataset}, scale {self.scale}: model CA {model.ca:.1f} %, "
                                     f"ASR {model.asr:.1f} % on {model.measured_on}.", frame)
        return self._table2[dataset]

    def table1(self, dataset: str) -> ResultTable:
        """[BDMAE] Table 1: DiffPure with both samplers beside no defence and BDMAE, on at most
        `preset.diffpure_images` images; where Table 2 saw the very same images its rows are reused."""
        evaluation = self.table1_evaluation(dataset)
        images = evaluation.images
        table, model = self._compare(evaluation)
        if images == self._images(dataset):
            table2 = self.table2(dataset).frame
            reused = table2[table2["defence"].isin(["Before defense", "BDMAE (tiny MAE)"])]
            table = pd.concat([reused[table.columns], table]).reset_index(drop=True)
        frame = with_paper(table, BDMAE_TABLE1[dataset], f"tiny 32 px diffusion model (t < 0.2), t* = 0.1, tiny MAE, "
                           f"small CNN, {images}+{images} images", model=model)
        return ResultTable(f"table1_{dataset}", f"BDMAE Table 1, {dataset}, scale {self.scale}: DiffPure (DDPM and "
                                                "SDE samplers) vs BDMAE.", frame)

    @cached_property
    def _table_a2(self) -> ResultTable:
        rows = []
        for dataset, evaluation in self.table_a2_evaluations().items():
            table, _ = self._compare(evaluation)
            table = with_paper(table.drop(columns="ASR"), BDMAE_TABLE_A2.get(dataset, {}),
                               "tiny MAE, small CNN; BA here = accuracy on patched images", metrics=("CA", "BA"))
            table.insert(0, "dataset", dataset)
            rows.append(table)
        return ResultTable("tableA2_clean_models", "BDMAE Table A.2: clean models (GTSRB's paper row is not "
                           "recoverable from the text we have).", pd.concat(rows))

    def table_a2(self) -> ResultTable:
        """[BDMAE] Table A.2: clean models; "triggered" images carry the colour patch, which they ignore."""
        return self._table_a2

    def table_a3_a4(self) -> ResultTable:
        """[BDMAE] Tables A.3 (CIFAR-10) and A.4 (GTSRB): 1x1-3x3 colour and white patches, reduced models."""
        rows = []
        for (dataset, name), evaluation in self.table_a3_a4_evaluations().items():
            images = evaluation.images
            table, model = self._compare(evaluation)
            paper = {row: cells[name] for row, cells in BDMAE_TABLE_A3_A4[dataset].items()}
            subset = (f"{self.preset.model_train_size:,} training images" if self.preset.model_train_size
                      else "all training images")
            table = with_paper(table, paper, f"tiny MAE, small CNN on {subset}, {self.preset.model_epochs} epochs, "
                               f"{images}+{images} images" + (", one seeded colour" if "color" in name else ""),
                               model=model)
            rows.append(_labelled(table, dataset, "trigger", name, model))
        return ResultTable("tableA3_A4_trigger_sizes", "BDMAE Tables A.3 (CIFAR-10) and A.4 (GTSRB): trigger sizes "
                           f"and colours (reduced models; model ASR: each model's own on {model.measured_on}, from "
                           "training).", pd.concat(rows))

    def table3(self) -> ResultTable:
        """[BDMAE] Table 3: IAB, LC and Blended (reduced models)."""
        rows = []
        for (dataset, name), evaluation in self.table3_evaluations().items():
            table, model = self._compare(evaluation)
            paper = BDMAE_TABLE3.get((dataset, name))
            note = ("reduced small CNN, tiny MAE" if paper else
                    "no paper counterpart (the paper runs Blended on VGGFace2 and ImageNet10 only)")
            setting_note = evaluation.setting.note
            table = with_paper(table, paper or {}, f"{note}; {setting_note}" if setting_note else note, model=model)
            rows.append(_labelled(table, dataset, "attack", name, model))
        return ResultTable("table3_challenging", "BDMAE Table 3: IAB, LC and Blended (reduced models; model ASR: "
                           f"each model's own on {model.measured_on}, from training).", pd.concat(rows))

    def fig5_images(self) -> int:
        """Clean (and triggered) images of Fig. 5 and the score diagnostics."""
        return max(4, self.preset.other_images // 2)

    def fig5(self) -> Fig5:
        """[BDMAE] Fig. 5 on the main setting: (a-c) CA / BA against N_o (Base-i, Base-l) and N_r (full method),
        (d) one fixed threshold on S before and after refinement instead of the adaptive restoration."""
        measured = get_or_measure_fig5(self.main, self.fig5_images(), seed=self.seed, device=self.device)
        images = self.fig5_images()
        curves = pd.DataFrame(measured["curves"], columns=["panel", "value", "CA", "BA"])
        fixed = pd.DataFrame(measured["fixed"], columns=["stage", "threshold", "CA", "BA"])
        return Fig5(ResultTable("fig5_no_nr", f"BDMAE Fig. 5a-c on {images} clean + {images} triggered CIFAR-10 "
                                              "images.", curves.round(1)),
                    ResultTable("fig5d_fixed_thresholds", "BDMAE Fig. 5d: single fixed thresholds before / after "
                                "refinement.", fixed.round(1)))

    def score_diagnostics(self) -> ResultTable:
        """`score_diagnostics` of the full method (N_r = 10 of Fig. 5) on clean and triggered images."""
        measured = get_or_measure_fig5(self.main, self.fig5_images(), seed=self.seed, device=self.device)
        frame = pd.DataFrame(measured["diagnostics"], columns=["quantity", "clean images", "triggered images"])
        return ResultTable("score_diagnostics", "Where BDMAE's CA goes with the tiny MAE (full method, main setting).",
                           frame.round(3))

    def acceptance(self) -> ResultTable:
        """Issue 3's acceptance checks on the main setting (Table 2, Table A.2 and the MAE's consistency)."""
        t = self.table2("cifar10").frame.set_index("defence")
        bd, before = t.loc["BDMAE (tiny MAE)"], t.loc["Before defense"]
        clean = self.table_a2().frame.set_index(["dataset", "defence"])
        clean_drop = clean.loc[("cifar10", "Before defense"), "CA"] - clean.loc[("cifar10", "BDMAE (tiny MAE)"), "CA"]
        kept = self.consistency.kept
        checks = pd.DataFrame([
            ("ASR before defence >= 90 %", before["ASR"], before["ASR"] >= 90),
            ("BDMAE BA >= 70 %", bd["BA"], bd["BA"] >= 70),
            ("BDMAE ASR <= 10 %", bd["ASR"], bd["ASR"] <= 10),
            ("BDMAE CA within 12 points of the undefended CA", before["CA"] - bd["CA"], before["CA"] - bd["CA"] <= 12),
            ("BDMAE (CA+BA)/2 above Blur and ShrinkPad", (bd["CA"] + bd["BA"]) / 2,
             all((bd["CA"] + bd["BA"]) / 2 > (t.loc[n, "CA"] + t.loc[n, "BA"]) / 2
                 for n in ("Blur weak", "Blur strong", "ShrinkPad weak", "ShrinkPad strong"))),
            ("MAE consistency >= 65 %", 100 * kept, kept >= 0.65),
            ("clean model: BDMAE costs <= 12 points of CA", clean_drop, clean_drop <= 12),
        ], columns=["claim", "measured", "holds"])
        return ResultTable("acceptance", f"Issue 3 acceptance checks at scale {self.scale}.", checks)


#: claims the `cpu` preset is known to miss (the tiny MAE; named in the README's known gaps): reported, not asserted
BDMAE_CPU_KNOWN_GAPS = ("BDMAE (CA+BA)/2 above Blur and ShrinkPad",)


def _labelled(table: pd.DataFrame, dataset: str, column: str, value: str, model: ModelAccuracy) -> pd.DataFrame:
    """A per-attack block of Tables 3 / A.3-A.4: its dataset and attack in front, the model's own ASR at the end."""
    table.insert(0, column, value)
    table.insert(0, "dataset", dataset)
    table["model ASR"] = round(model.asr, 1)
    return table
