"""The reproduction as a job graph (issue 26): every unit of work the papers' notebooks cache, as a job named by the
artefact cache's content address, with the jobs whose artefacts it needs and the resources it takes.

    jobs = collect(["quickstart", "trap_replace"], "smoke")
    for job in plan(jobs):            # what the cache does not hold yet (and what it needs), dependencies first
        print(job.id, job.label, job.resources.gpu_hours)
    run(jobs, executor="ray")         # the engines schedule; the notebooks then only load (WORKBENCH_CACHE_ONLY=1)

A job's unit is one artefact of the cache: a classifier training (`get_or_train`, IAB's classifier with its
generators), a T&R stage 1 or stage 2 or baseline defence, an LBA trigger, a REStore importance-splitting run, an
L-RED detection of one classifier, a stage of the tiny MAE's or diffusion model's pretraining, a shard of a BDMAE
table's evaluation (every defence's labels on consecutive test images: `get_or_evaluate_shard`), BDMAE's Fig. 5
measurement, and REStore Table III's Februus and BDMAE rows of one model. Jobs return keys, never tensors: the
shared cache (`WORKBENCH_CACHE`) is the only result channel, its per-key locks make sure one key is computed once,
and a killed job leaves nothing half-written (`ArtefactStore`), so a rerun does only what is missing.

Not jobs (cheap, computed by the notebooks from what the jobs cached): the tiny MAE's consistency check of notebook
11 (one restoration of the main setting's clean images), REStore's App. J run over all classes at once (Fig. 12b),
the strength search of REStore's purifiers and every no-defence or one-pass row.
"""

from __future__ import annotations

import functools
import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from workbench.core.artefacts import ArtefactStore, config_key
from workbench.core.attacks.input_aware import InputAwareConfig
from workbench.core.runtime import resolve_device
from workbench.core.scales import pick
from workbench.core.training import TrainConfig, artefact_address, get_or_train, get_or_train_input_aware
from workbench.core.validation import WorkbenchError, check_name, check_non_negative, check_positive_int

#: effective training throughput assumed for one modern GPU (bf16, channels_last) when estimating GPU-hours: a
#: planning figure, not a measurement (`scripts/gpu_check.sh` measures images/s per model on a real GPU)
ASSUMED_GPU_FLOPS = 20e12
#: fixed cost assumed per optimiser step or query batch on a GPU (kernel launches, the host's Python): it dominates
#: the small networks' steps
ASSUMED_GPU_SECONDS_PER_BATCH = 0.004
ASSUMED_BATCH = 128


@dataclass(frozen=True)
class Resources:
    """What one job needs: GPUs on a GPU executor, CPU threads, host memory and its estimated work.

    `flops` counts the forward and backward passes the job makes (3x a forward pass per trained image, 1x per
    evaluated image, from each network's counted forward FLOPs); `batches` the optimiser steps and query batches.
    `gpu_seconds`, where given, is an estimate scaled from a published GPU measurement of the same computation, used
    instead of the FLOP count (L-RED's detections, whose iterations the FLOP count can only bound).
    """

    gpus: float
    cpus: int
    memory_gb: float
    flops: float
    batches: float
    gpu_seconds: float | None = None

    @property
    def gpu_hours(self) -> float:
        """Estimated hours on one modern GPU: `gpu_seconds` if given, else from the work at `ASSUMED_GPU_FLOPS` and
        `ASSUMED_GPU_SECONDS_PER_BATCH`."""
        if self.gpu_seconds is not None:
            return self.gpu_seconds / 3600
        return (self.flops / ASSUMED_GPU_FLOPS + self.batches * ASSUMED_GPU_SECONDS_PER_BATCH) / 3600


@dataclass(frozen=True)
class Job:
    """One cached unit of work.

    Attributes:
        kind: the artefact kind it writes ("models", "iab", "trap", "replaced", "restore", "mae", ...).
        key: the artefact's content address, or None while it depends on what a dependency computes (LBA's
            models: their trigger is the `lba_triggers` job's output).
        label: what it is, for people ("cifar10 BadNet-Grid T&R stage 2").
        papers: the papers whose notebooks load it.
        action: computes (or loads) the artefact: `action(store=, device=, progress=)` returns its key.
        deps: ids of the jobs whose artefacts it loads.
        resources: what it takes.
        goal: whether a notebook loads it (False: only other jobs do, e.g. a label-consistent attack's surrogate
            or an early pretraining stage; those run only when a job that needs them does).
    """

    kind: str
    key: str | None
    label: str
    papers: tuple[str, ...]
    action: Callable[..., str]
    deps: tuple[str, ...]
    resources: Resources
    goal: bool = True

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.key or 'after-' + config_key({'label': self.label, 'deps': self.deps})[:12]}"


# --- what a job does (module-level functions, so that the engines can pickle the job) ---------------------------------

def _train(config: TrainConfig | InputAwareConfig, *, store: ArtefactStore, device: str, progress: bool) -> str:
    if isinstance(config, InputAwareConfig):
        return get_or_train_input_aware(config, store=store, device=device, progress=progress)[0].key
    return get_or_train(config, store=store, device=device, progress=progress).key


def _trap(config: Any, *, store: ArtefactStore, device: str, progress: bool) -> str:
    from workbench.defenses.trap_replace import get_or_trap

    return get_or_trap(config, store=store, device=device, progress=progress).key


def _replace(trap: Any, config: Any, *, store: ArtefactStore, device: str, progress: bool) -> str:
    from workbench.defenses.trap_replace import get_or_replace, get_or_trap

    trapped = get_or_trap(trap, store=store, device=device, progress=progress)
    return get_or_replace(trapped, config, store=store, device=device, progress=progress).key


def _defend(defence: str, dataset: str, attack: str | None, scale: str, ratio: float, seed: int, *,
            store: ArtefactStore, device: str, progress: bool) -> str:
    from workbench.repro.trap_replace import defend

    return defend(defence, dataset, attack, scale, ratio=ratio, seed=seed, store=store, device=device,
                  progress=progress).key


def _lba_surrogate(dataset: str, scale: str, seed: int, store: ArtefactStore, device: str, progress: bool) -> Any:
    from workbench.defenses.trap_replace import get_or_trap
    from workbench.repro.trap_replace import trap_config

    return get_or_trap(trap_config(dataset, None, scale, reconstruct=False, seed=seed), store=store, device=device,
                       progress=progress)


def _lba_trigger(dataset: str, setting: str, scale: str, seed: int, *, store: ArtefactStore, device: str,
                 progress: bool) -> str:
    from workbench.core.attacks.latent import LBA_LAYERS
    from workbench.repro.presets import TARGETS
    from workbench.repro.trap_replace import PRESETS, lba_trigger, lba_trigger_address

    surrogate = _lba_surrogate(dataset, scale, seed, store, device, progress)
    search = pick(scale, PRESETS).lba_search
    lba_trigger(surrogate, LBA_LAYERS[setting], TARGETS[dataset], seed=seed, store=store, progress=progress,
                search=search)
    return lba_trigger_address(surrogate.key, LBA_LAYERS[setting], TARGETS[dataset], seed=seed, search=search)[1]


def _lba_model(dataset: str, setting: str, scale: str, seed: int, reconstruct: bool, replaced: bool, *,
               store: ArtefactStore, device: str, progress: bool) -> str:
    from workbench.repro.trap_replace import PRESETS, lba_poison_config, replace_config, trap_config

    surrogate = _lba_surrogate(dataset, scale, seed, store, device, progress)
    poison = lba_poison_config(dataset, setting, surrogate, seed=seed, store=store, progress=progress,
                               search=pick(scale, PRESETS).lba_search)
    trap = trap_config(dataset, poison, scale, reconstruct=reconstruct, seed=seed)
    if replaced:
        return _replace(trap, replace_config(scale, seed=seed), store=store, device=device, progress=progress)
    return _trap(trap, store=store, device=device, progress=progress)


def _restore_model(dataset: str, attack: str, scale: str, seed: int, store: ArtefactStore, device: str,
                   progress: bool) -> tuple[Any, Any, Any]:
    """A REStore model's preset, trained model and the defender's / evaluation images of its test split."""
    from workbench.repro.restore import RESTORE_PRESETS, split_images, train_config

    preset = pick(scale, RESTORE_PRESETS)
    trained = get_or_train(train_config(dataset, attack, scale), store=store, device=device, progress=progress)
    return preset, trained, split_images(trained.config.splits().test, preset, seed)


def _diagnose(dataset: str, attack: str, run: Any, scale: str, seed: int, *, store: ArtefactStore, device: str,
              progress: bool) -> str:
    from workbench.repro.restore import diagnosis_address, get_or_diagnose

    preset, trained, images = _restore_model(dataset, attack, scale, seed, store, device, progress)
    get_or_diagnose(trained, images, run, preset, seed=seed, store=store, progress=progress)
    return diagnosis_address(trained.key, run, preset, seed=seed)[1]


def _any_class(run: Any, scale: str, seed: int, *, store: ArtefactStore, device: str, progress: bool) -> str:
    from workbench.repro.restore import any_class_address, get_or_diagnose, get_or_recover_any_class

    preset, trained, images = _restore_model(run.dataset, run.attack, scale, seed, store, device, progress)
    found = get_or_diagnose(trained, images, run, preset, seed=seed, store=store, progress=progress)
    get_or_recover_any_class(trained, images, run, found, preset, seed=seed, store=store)
    return any_class_address(trained.key, run, preset, seed=seed)[1]


def _slow_defences(dataset: str, attack: str, scale: str, seed: int, *, store: ArtefactStore, device: str,
                   progress: bool) -> str:
    from workbench.repro.restore import get_or_evaluate_slow_defences, slow_defences_address

    preset, trained, images = _restore_model(dataset, attack, scale, seed, store, device, progress)
    get_or_evaluate_slow_defences(trained, images, dataset, attack, preset, seed=seed, device=device, store=store,
                                  progress=progress)
    return slow_defences_address(trained.key, attack, preset, seed=seed)[1]


def _inspect(setting: Any, name: str, index: int, method: str, scale: str, per_class: int | None, seed: int, *,
             store: ArtefactStore, device: str, progress: bool) -> str:
    from workbench.repro.lred import LRED_PRESETS, classifier_config, get_or_inspect, inspection_address

    preset = pick(scale, LRED_PRESETS)
    trained = get_or_train(classifier_config(setting, index, scale), store=store, device=device, progress=progress)
    get_or_inspect(trained, setting, name, index, method, preset, per_class=per_class, seed=seed, store=store)
    return inspection_address(trained.key, method, preset, per_class=per_class, seed=seed)[1]


def _evaluate(evaluation: Any, shard: tuple[int, int], bdmae_config: Any, seed: int, *, store: ArtefactStore,
              device: str, progress: bool) -> str:
    from workbench.repro.bdmae import evaluation_address, get_or_evaluate_shard

    get_or_evaluate_shard(evaluation, shard, bdmae_config, seed=seed, device=device, store=store, progress=progress)
    return evaluation_address(evaluation, shard, bdmae_config, seed=seed)[1]


def _fig5(setting: Any, images: int, seed: int, *, store: ArtefactStore, device: str, progress: bool) -> str:
    from workbench.repro.bdmae import fig5_address, get_or_measure_fig5

    get_or_measure_fig5(setting, images, seed=seed, device=device, store=store, progress=progress)
    return fig5_address(setting, images, seed=seed)[1]


def _pretrain(kind: str, stage: Any, *, store: ArtefactStore, device: str, progress: bool) -> str:
    if kind == "mae":
        from workbench.core.mae_training import save_workbench_mae, train_mae

        model, metrics = train_mae(stage, device=device, progress=progress)
        save_workbench_mae(model, stage, metrics, store)
    else:
        from workbench.core.diffusion_training import save_workbench_diffusion, train_diffusion

        model, metrics = train_diffusion(stage, device=device, progress=progress)
        save_workbench_diffusion(model, stage, metrics, store)
    return config_key(stage.to_dict())


# --- estimates --------------------------------------------------------------------------------------------------------

_FORWARD_FLOPS: dict[tuple[str, str, str], float] = {}


def _network_flops(config: TrainConfig) -> float:
    """Counted forward FLOPs of one image through `config`'s network (torch's FlopCounterMode), once per network."""
    from torch.utils.flop_counter import FlopCounterMode

    from workbench.core.training import new_model

    network = (config.model, config.dataset, repr(config.model_options))
    if network not in _FORWARD_FLOPS:
        net = new_model(config).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            net(torch.zeros(1, *config.splits().test.images.shape[1:]))
        _FORWARD_FLOPS[network] = float(counter.get_total_flops())
    return _FORWARD_FLOPS[network]


def _training_resources(config: TrainConfig, *, trained: float, evaluated: float, cost: float = 1.0,
                        batch: int | None = None) -> Resources:
    """Resources of a job that trains on `trained` images and evaluates `evaluated` (each times `cost`, the network's
    relative cost, e.g. a reconstruction head's), with `config`'s network and data."""
    from workbench.core.data import dataset_spec

    spec = dataset_spec(config.dataset)
    images = len(config.splits().train) + len(config.splits().test)
    memory = 1.0 + images * spec.channels * spec.image_size**2 * 5 / 1e9  # uint8 copy + float batches, + the runtime
    flops = _network_flops(config) * cost * (3 * trained + evaluated)
    batches = (trained + evaluated) / (batch or config.batch_size or ASSUMED_BATCH)
    return Resources(gpus=1.0, cpus=1, memory_gb=round(memory, 2), flops=flops, batches=batches)


def _fit_resources(config: TrainConfig, cost: float = 1.0) -> Resources:
    """A training run of `config` over its training split, a 1,000-image monitor (clean and triggered) each epoch
    and the test split at the end."""
    splits = config.splits()
    return _training_resources(config, trained=config.epochs * len(splits.train), cost=cost,
                               evaluated=config.epochs * 2000 + 2 * len(splits.test))


# --- building the graph -----------------------------------------------------------------------------------------------

class _Graph:
    """The jobs of one collection, once each (a model two papers or tables share is one job), dependencies first."""

    def __init__(self, store: ArtefactStore) -> None:
        self.store = store
        self.jobs: dict[str, Job] = {}
        self.paper = ""

    def add(self, job: Job) -> Job:
        known = self.jobs.get(job.id)
        if known is None:
            self.jobs[job.id] = job
            return job
        merged = replace(known, papers=tuple(dict.fromkeys((*known.papers, *job.papers))), goal=known.goal or job.goal)
        self.jobs[job.id] = merged
        return merged

    def job(self, kind: str, key: str | None, label: str, action: Callable[..., str], resources: Resources,
            deps: Iterable[Job] = (), goal: bool = True) -> Job:
        return self.add(Job(kind, key, label, (self.paper,), action, tuple(d.id for d in deps), resources, goal))

    def training(self, label: str, config: TrainConfig | InputAwareConfig, goal: bool = True) -> Job:
        """The job that trains `config`, after the job of its clean surrogate when the attack is label-consistent
        (`prepare_training_data` trains the surrogate first and poisons with PGD against it)."""
        deps = self.surrogate(label, config.train if isinstance(config, InputAwareConfig) else config)
        kind, key, _ = artefact_address(config)
        if isinstance(config, InputAwareConfig):  # the classifier and the generators, trained together
            resources = _fit_resources(config.train, cost=2.0)
        else:
            resources = _fit_resources(config)
        return self.job(kind, key, label, functools.partial(_train, config), resources, deps, goal)

    def surrogate(self, label: str, config: TrainConfig) -> list[Job]:
        """The job of the clean surrogate a label-consistent `config` is poisoned against (none otherwise)."""
        adversarial = config.poison.adversarial if config.poison is not None else None
        if adversarial is None:
            return []
        return [self.training(f"{label} (clean surrogate)", TrainConfig.from_dict(adversarial.surrogate),
                              goal=False)]

    def trap(self, label: str, config: Any) -> Job:
        """T&R stage 1 (normal training when the config does not reconstruct)."""
        from workbench.defenses.trap_replace import trap_address

        if not config.reconstructs:
            return self.training(label, config.train)
        kind, key, _ = trap_address(config)
        resources = _fit_resources(config.train, cost=1.5)  # the reconstruction head: about half the stem again
        return self.job(kind, key, f"{label} stage 1", functools.partial(_trap, config), resources,
                        self.surrogate(label, config.train))

    def replace(self, label: str, trap: Any, config: Any, trap_job: Job) -> Job:
        """T&R stage 2 on the stage-1 artefact of `trap_job`."""
        from workbench.defenses.trap_replace import holdout_for, replace_address

        kind, key, _ = replace_address(trap, trap_job.key, config)
        holdout = len(holdout_for(config, trap.train))
        resources = _training_resources(trap.train, trained=config.epochs * holdout,
                                        evaluated=config.epochs * 1000 + len(trap.train.splits().test), batch=32)
        return self.job(kind, key, f"{label} stage 2 ({holdout} holdout images)",
                        functools.partial(_replace, trap, config), resources, [trap_job])


def _quickstart(graph: _Graph, scale: str) -> None:
    from workbench.repro.presets import quickstart_config

    graph.training("quickstart model", quickstart_config(scale))


def _bdmae(graph: _Graph, scale: str) -> None:
    """Every model of notebook 11's tables, then each table's evaluations (Tables 1, 2, A.2, A.3/A.4, 3) in shards of
    the preset's `shard_images` clean and triggered images, each shard after its model and the tiny MAE (and the
    diffusion model for DiffPure's rows), and Fig. 5's measurement (one job: its diagnostics take medians)."""
    from workbench.core.attacks import make_attack
    from workbench.defenses.bdmae import VARIANTS
    from workbench.repro.bdmae import (
        BDMAETables,
        Evaluation,
        badnets_setting,
        challenging_settings,
        clean_setting,
        evaluation_address,
        fig5_address,
        trigger_variants,
    )

    mae, diffusion = _pretraining(graph)
    tables = BDMAETables(scale)
    models = {}
    for dataset in tables.preset.datasets:
        models[f"{dataset} BadNets"] = badnets_setting(dataset, make_attack("bdmae_badnets_colour"), scale)
        models[f"{dataset} clean"] = clean_setting(dataset, scale)
        for name, attack in trigger_variants().items():
            models[f"{dataset} {name}"] = badnets_setting(dataset, attack, scale, reduced=True)
        models |= {f"{dataset} {name}": setting for name, setting in challenging_settings(dataset, scale).items()}
    for label, setting in models.items():
        graph.training(label, setting.train)
    for label, evaluation in tables.evaluations().items():
        model = graph.training(label, evaluation.setting.train)  # one of the models above: the same job
        for shard in evaluation.shards(tables.preset.shard_images):
            kind, key, _ = evaluation_address(evaluation, shard, tables.preset.bdmae)
            graph.job(kind, key, f"{label} images {shard[0]}-{shard[1]}",
                      functools.partial(_evaluate, evaluation, shard, tables.preset.bdmae, 0),
                      _evaluation_resources(evaluation, shard, tables.preset.bdmae),
                      [model, mae, *([diffusion] if evaluation.diffpure else [])])
    images = tables.fig5_images()
    kind, key, _ = fig5_address(tables.main, images)
    # Fig. 5's twelve BDMAE runs (N_o of Base-i and Base-l, N_r of the full method), as BDMAE rows of one evaluation
    runs = [replace(VARIANTS[v], outer_rounds=n) for v in ("base_i", "base_l") for n in (1, 2, 3, 5)]
    runs += [replace(VARIANTS["full"], refine_steps=n) for n in (0, 2, 5, 10)]
    costs = [_evaluation_resources(Evaluation(tables.main, images, ("BDMAE",)), (0, images), run) for run in runs]
    resources = replace(costs[0], flops=sum(c.flops for c in costs), batches=sum(c.batches for c in costs))
    graph.job(kind, key, "cifar10 BadNets Fig. 5 and score diagnostics",
              functools.partial(_fig5, tables.main, images, 0), resources,
              [graph.training("cifar10 BadNets", tables.main.train), mae])


def _evaluation_resources(evaluation: Any, shard: tuple[int, int], bdmae_config: Any) -> Resources:
    """Resources of a BDMAE evaluation shard: `_defence_resources` on its clean and triggered images."""
    return _defence_resources(evaluation.setting.recipe, evaluation.defences(), 2 * (shard[1] - shard[0]),
                              bdmae_config)


def _defence_resources(config: TrainConfig, defences: Sequence[str], images: int, bdmae_config: Any) -> Resources:
    """Test-time defences `defences` on `images` images of `config`'s model, from each defence's network passes per
    image: rough upper figures (PatchCleanser's second round and BDMAE's refinement stop early on most images)."""
    from workbench.core.diffusion_training import DEFAULT_DIFFUSION
    from workbench.core.mae_training import DEFAULT_MAE
    from workbench.defenses.baselines.diffpure import DiffPure

    masks = bdmae_config.outer_rounds * bdmae_config.inner_masks  # Alg. 1's random masks, one restoration each
    restorations = masks + 2 * bdmae_config.refine_steps + len(bdmae_config.thresholds)  # + Alg. 2, + the fusion
    denoising = round(DiffPure.t_star * _diffusion_steps())  # reverse steps from t* (both samplers by default)
    passes = {  # defence name prefix -> (classifier, MAE, UNet) passes per image
        "Before defense": (1, 0, 0), "Blur": (1, 0, 0), "ShrinkPad": (1, 0, 0),
        "Februus": (4, 1, 0),  # the CAM's forward and backward pass, then the inpainted image
        "PatchCleanser": (2 * 36, 0, 0),  # 36 one-mask images, and a second round where they disagree
        "DiffPure": (1, 0, denoising),
        "BDMAE": (restorations + 1, restorations, 0),
    }
    per_network = (_network_flops(config), _pretraining_flops("mae", DEFAULT_MAE),
                    _pretraining_flops("diffusion", DEFAULT_DIFFUSION))
    counts = [next(p for prefix, p in passes.items() if name.startswith(prefix)) for name in defences]
    flops = images * sum(n * f for count in counts for n, f in zip(count, per_network, strict=True))
    batches = images * sum(sum(count) for count in counts) / ASSUMED_BATCH
    return Resources(gpus=1.0, cpus=1, memory_gb=2.0, flops=flops, batches=batches)


@functools.cache
def _diffusion_steps() -> int:
    from workbench.core.diffusion_training import DEFAULT_DIFFUSION

    return int(DEFAULT_DIFFUSION.new_diffusion().scheduler.config.num_train_timesteps)


def _pretraining(graph: _Graph) -> tuple[Job, Job]:
    """The stages of the tiny MAE's and diffusion model's recipes (BDMAE's restorer, DiffPure's denoiser; REStore's
    Table III compares BDMAE too). Committed under data/assets, so normally cached; a stage runs only when a later
    one is missing."""
    from workbench.core.diffusion_training import DEFAULT_DIFFUSION
    from workbench.core.mae_training import DEFAULT_MAE

    finals = []
    for kind, final in (("mae", DEFAULT_MAE), ("diffusion", DEFAULT_DIFFUSION)):
        previous: list[Job] = []
        for number, stage in enumerate(final.stages(), start=1):
            flops = _pretraining_flops(kind, stage) * 3 * stage.steps * stage.batch_size
            resources = Resources(gpus=1.0, cpus=1, memory_gb=2.0, flops=flops, batches=stage.steps)
            previous = [graph.job(kind, config_key(stage.to_dict()), f"tiny {kind} stage {number}",
                                  functools.partial(_pretrain, kind, stage), resources, previous,
                                  goal=stage is final)]
        finals += previous
    mae, diffusion = finals
    return mae, diffusion


@functools.cache
def _pretraining_flops(kind: str, stage: Any) -> float:
    """Counted FLOPs of one training image's forward pass through the tiny MAE (75 % masked) or diffusion UNet."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    if kind == "mae":
        from workbench.core.mae import MaskedAutoencoderViT, random_token_masks

        net = MaskedAutoencoderViT(stage.arch).eval()
        x = torch.zeros(1, 3, stage.arch.img_size, stage.arch.img_size)
        mask = random_token_masks(1, stage.arch.grid**2, stage.mask_ratio, torch.Generator().manual_seed(0))
        with counter, torch.no_grad():
            net(x, mask)
    else:
        unet = stage.new_diffusion().unet.eval()
        size = int(unet.config.sample_size)
        with counter, torch.no_grad():
            unet(torch.zeros(1, int(unet.config.in_channels), size, size), torch.zeros(1, dtype=torch.long))
    return float(counter.get_total_flops())


def _restore(graph: _Graph, scale: str) -> None:
    """Every model of notebooks 20-21, their importance-splitting runs, and Table III's Februus and BDMAE rows of
    each model with a PI run (after the model and the tiny MAE)."""
    from workbench.core.data import dataset_spec
    from workbench.defenses.bdmae import BDMAEConfig
    from workbench.repro.restore import (
        BACKDOORED,
        RESTORE_PRESETS,
        SLOW_DEFENCES,
        Run,
        any_class_address,
        any_class_runs,
        diagnosis_address,
        slow_defences_address,
        train_config,
    )

    preset = pick(scale, RESTORE_PRESETS)
    models = {(dataset, attack): graph.training(f"{dataset} {attack}", train_config(dataset, attack, scale))
              for dataset, attacks in preset.attacks.items() for attack in attacks}
    walkthrough = (Run("cifar10", "badnets"), Run("cifar10", "benign"))  # notebook 20's defaults
    for run in dict.fromkeys((*preset.runs, *walkthrough)):
        model = models[run.dataset, run.attack]
        config = train_config(run.dataset, run.attack, scale)
        classes = len(run.classes) if run.classes is not None else dataset_spec(run.dataset).num_classes
        # importance splitting: at most J_max levels of n particles, T moves each, every query on |X_test^cl| images
        queries = classes * preset.splitting["max_levels"] * preset.splitting["particles"] * (
            preset.splitting["passes"] + 1) * preset.per_set
        resources = _training_resources(config, trained=0, evaluated=queries, batch=preset.per_set)
        kind, key, _ = diagnosis_address(model.key, run, preset)
        scope = "all classes" if run.classes is None else f"classes {list(run.classes)}"
        graph.job(kind, key, f"{run.dataset} {run.attack} {run.setup} {run.output} splitting, {scope}",
                  functools.partial(_diagnose, run.dataset, run.attack, run, scale, 0), resources, [model])
    for run in any_class_runs(preset):  # App. J (Fig. 12b): one run over all classes with that diagnosis's setup
        kind, key, _ = diagnosis_address(models[run.dataset, run.attack].key, run, preset)
        diagnosis = graph.jobs[f"{kind}/{key}"]
        kind, key, _ = any_class_address(models[run.dataset, run.attack].key, run, preset)
        graph.job(kind, key, f"{run.dataset} {run.attack} splitting over all classes at once (App. J)",
                  functools.partial(_any_class, run, scale, 0), diagnosis.resources,
                  [models[run.dataset, run.attack], diagnosis])
    mae, _ = _pretraining(graph)
    for dataset, attack in dict.fromkeys((r.dataset, r.attack) for r in preset.runs
                                         if r.setup == "PI" and r.attack in BACKDOORED):
        model = models[dataset, attack]
        kind, key, _ = slow_defences_address(model.key, attack, preset)
        resources = _defence_resources(train_config(dataset, attack, scale), list(SLOW_DEFENCES),
                                       2 * preset.comparable_images, BDMAEConfig())
        graph.job(kind, key, f"{dataset} {attack} Table III Februus and BDMAE",
                  functools.partial(_slow_defences, dataset, attack, scale, 0), resources, [model, mae])


def _lred(graph: _Graph, scale: str) -> None:
    """Every classifier of notebooks 30-31 and the detections of notebook 31's tables: each method of Table 2 on
    each group's classifiers, RED-A on Table 4's attacked and clean ones."""
    from workbench.repro.lred import GROUPS, LRED_PRESETS, METHODS, OTHER_DATASETS, classifier_config

    preset = pick(scale, LRED_PRESETS)
    for group in dict.fromkeys((*preset.groups, "L-1")):  # "L-1" #0: notebook 30's default
        for index in range(preset.models_per_group if group in preset.groups else 1):
            model = graph.training(f"{group} #{index}", classifier_config(GROUPS[group], index, scale))
            for method in METHODS if group in preset.groups else ():
                _detection(graph, model, GROUPS[group], group, index, method, scale)
    for dataset in preset.other_datasets:  # Table 4: one attacked and one clean classifier per dataset
        for kind, setting in (("attacked", OTHER_DATASETS[dataset]), ("clean", OTHER_DATASETS[dataset].clean())):
            model = graph.training(f"{dataset} {kind}", classifier_config(setting, 0, scale))
            _detection(graph, model, setting, dataset, 0, "RED-A", scale, per_class=1 if dataset == "gtsrb" else None)


def _detection(graph: _Graph, model: Job, setting: Any, name: str, index: int, method: str, scale: str,
               per_class: int | None = None) -> Job:
    """One L-RED detector's run on one classifier, after its training."""
    from workbench.core.data import dataset_spec
    from workbench.repro.lred import LRED_PRESETS, classifier_config, inspection_address, method_settings

    preset = pick(scale, LRED_PRESETS)
    config = classifier_config(setting, index, scale)
    classes = dataset_spec(config.dataset).num_classes
    images = per_class or method_settings(method, preset)[1]
    # the work's upper bound: Alg. 1 until ||v|| passes max_norm (a step adds at most delta), every problem on its
    # source images: K targets x (K - 1) classes (RED-A/U), or K (K - 1) pairs x one class (RED-P)
    steps = min(preset.detection.max_iterations, math.ceil(preset.detection.max_norm / preset.detection.step))
    problems = classes * (classes - 1)
    resources = _training_resources(config, trained=steps * problems * images, evaluated=0, batch=problems * images)
    resources = replace(resources, gpu_seconds=_paper_detection_seconds(method, config, images, problems))
    kind, key, _ = inspection_address(model.key, method, preset, per_class=per_class)
    return graph.job(kind, key, f"{name} #{index} {method}",
                     functools.partial(_inspect, setting, name, index, method, scale, per_class, 0), resources,
                     [model])


def _paper_detection_seconds(method: str, config: TrainConfig, images: int, problems: int) -> float:
    """A detection's GPU seconds scaled from [L-RED] Table 3 (seconds per classifier and method, ResNet-18 on
    CIFAR-10 at the paper's settings, one RTX 2080 Ti: an older GPU than the planning figures assume, so the estimate
    leans high): the method's mean over the seven attack groups (RED-U, absent there, taken as RED-A), times this
    network's forward FLOPs over the paper's ResNet-18, this run's images per class over the paper's, and its
    problems over CIFAR-10's 90. It assumes the paper's iterations, i.e. its delta and stopping rule (the `gpu` and
    `paper` presets use them; the `smoke` and `cpu` presets stop far earlier, so their estimates are high)."""
    from workbench.repro.lred import GROUPS, LRED_PRESETS, classifier_config, method_settings
    from workbench.repro.paper_numbers import LRED_TABLE3

    measured = LRED_TABLE3["RED-A" if method == "RED-U" else method]
    paper_network = _network_flops(classifier_config(GROUPS["G-1"], 0, "paper"))
    paper_images = method_settings(method, LRED_PRESETS["paper"])[1]
    return (sum(measured.values()) / len(measured) * _network_flops(config) / paper_network * images / paper_images
            * problems / 90)


#: notebook 40's default attack
TR_WALKTHROUGH_ATTACK = "l2-Invisible"


def _trap_replace(graph: _Graph, scale: str) -> None:
    """Every model notebook 41's tables (with the preset's rows) and notebook 40 load, table by table as
    `TRTables` asks for them."""
    from workbench.core.training import new_model
    from workbench.repro.trap_replace import (
        POISON_RATIO,
        PRESETS,
        base_recipe,
        replace_config,
        trap_config,
    )

    preset = pick(scale, PRESETS)

    def stages(attack: str | None, holdout_size: int | None = None, **changes: Any) -> tuple[Job, Job]:
        trap = trap_config("cifar10", attack, scale, **changes)
        label = f"cifar10 {attack or 'clean'} " + " ".join(f"{k}={v}" for k, v in changes.items())
        first = graph.trap(label.strip(), trap)
        return first, graph.replace(label.strip(), trap, replace_config(scale, holdout_size=holdout_size), first)

    defences = ("No defense", *preset.baselines, "T&R")
    gtsrb_baselines = tuple(a for a in preset.baseline_attacks if a in preset.gtsrb_attacks)
    for dataset, attacks, baseline_attacks in (("cifar10", preset.attacks, preset.baseline_attacks),
                                               ("gtsrb", preset.gtsrb_attacks, gtsrb_baselines)):  # Tables 1, 2
        for attack in attacks:
            for defence in defences:
                if defence in ("No defense", "T&R") or attack in baseline_attacks:
                    _defence(graph, defence, dataset, attack, scale)
    for attack in dict.fromkeys((*preset.ablation_attacks, preset.detail_attack, TR_WALKTHROUGH_ATTACK)):
        stages(attack, reconstruct=False)  # Table 4, Fig. 2 and notebook 40: both stages with and without
        stages(attack)
    default_split = new_model(base_recipe("cifar10", scale)).default_split
    for split in (default_split, *preset.split_points) if preset.split_points else ():  # Table 5
        for attack in preset.split_attacks:
            stages(attack, split=split)
    for ratio in (POISON_RATIO, *preset.ratios) if preset.ratios else ():  # Table 6 (run when it has ratios)
        for attack in preset.ratio_attacks:
            for defence in ("T&R", "I-BAU"):
                _defence(graph, defence, "cifar10", attack, scale, ratio)
    for setting in preset.lba_settings:  # Table 7
        _lba(graph, setting, scale)
    for rec_weight, tv_weight in ((0.0, 0.1), (10.0, 0.1), *preset.lambdas):  # Table 8, Fig. 4
        stages(preset.detail_attack, rec_weight=rec_weight, tv_weight=tv_weight)
    holdout = len(trap_config("cifar10", preset.detail_attack, scale).train.splits().holdout)
    for size in (s for s in preset.holdout_sizes if s <= holdout):  # Table 9
        stages(preset.detail_attack, holdout_size=size)
    for defence in preset.clean_defences:  # Table 10
        _defence(graph, defence, "cifar10", None, scale)
    for attack in preset.dp_attacks:  # Table 11
        _defence(graph, "DP", "cifar10", attack, scale)


def _defence(graph: _Graph, defence: str, dataset: str, attack: str | None, scale: str,
             ratio: float | None = None) -> Job:
    """The job(s) of `defend(defence, dataset, attack, scale, ratio=ratio)`."""
    from workbench.repro.trap_replace import (
        HOLDOUT_BASELINES,
        POISON_RATIO,
        PRESETS,
        defence_address,
        replace_config,
        trap_config,
    )

    ratio = POISON_RATIO if ratio is None else ratio
    label = f"{dataset} {attack or 'clean'}" + (f" ratio {ratio}" if ratio != POISON_RATIO else "")
    plain = trap_config(dataset, attack, scale, reconstruct=False, ratio=ratio)
    if defence == "No defense":
        return graph.trap(f"{label} no defence", plain)
    if defence == "T&R":
        trap = trap_config(dataset, attack, scale, ratio=ratio)
        return graph.replace(f"{label} T&R", trap, replace_config(scale), graph.trap(f"{label} T&R", trap))
    kind, key, _ = defence_address(defence, dataset, attack, scale, ratio=ratio)
    preset = pick(scale, PRESETS)
    recipe = plain.train
    train, holdout = len(recipe.splits().train), preset.holdout_size or len(recipe.splits().holdout)
    if defence in HOLDOUT_BASELINES:
        deps = [graph.trap(f"{label} no defence", plain)]
    else:
        deps = graph.surrogate(label, recipe)
    # trained images of each baseline: its epochs (NAD: teacher and student, with attention maps; I-BAU: the inner
    # and outer passes of each round; ANP: a perturbed and a masked pass per iteration; DP-SGD: per-sample gradients)
    trained = {"FT": lambda: preset.finetune.epochs * holdout,
               "NAD": lambda: (preset.nad.teacher_epochs + preset.nad.epochs) * holdout * 2,
               "ANP": lambda: preset.anp.iterations * preset.anp.batch_size * 2,
               "I-BAU": lambda: preset.ibau.rounds * holdout * 3,
               "ABL": lambda: (preset.abl.isolate_epochs + preset.abl.finetune_epochs
                               + preset.abl.unlearn_epochs) * train,
               "DP": lambda: recipe.epochs * train * 2}[defence]()
    resources = _training_resources(recipe, trained=trained, evaluated=2 * len(recipe.splits().test))
    return graph.job(kind, key, f"{label} {defence}",
                     functools.partial(_defend, defence, dataset, attack, scale, ratio, 0), resources, deps)


def _lba(graph: _Graph, setting: str, scale: str) -> None:
    """Table 7's LBA-n: its trigger, optimised against the clean model, then the poisoned models trained with it:
    their keys are known once the trigger is (`collect` reads it from the store when it is there)."""
    from workbench.core.attacks.latent import LBA_LAYERS
    from workbench.defenses.trap_replace import replace_address, trap_address
    from workbench.repro.presets import TARGETS
    from workbench.repro.trap_replace import (
        PRESETS,
        lba_poison,
        lba_trigger_address,
        replace_config,
        stored_lba_trigger,
        trap_config,
    )

    search = pick(scale, PRESETS).lba_search
    clean = trap_config("cifar10", None, scale, reconstruct=False)
    surrogate = graph.trap("cifar10 clean no defence", clean)
    kind, key, identity = lba_trigger_address(surrogate.key, LBA_LAYERS[setting], TARGETS["cifar10"], search=search)
    resources = _training_resources(clean.train, trained=search.steps * search.batch_size, evaluated=0)
    trigger_job = graph.job(kind, key, f"{setting} trigger", functools.partial(_lba_trigger, "cifar10", setting,
                                                                               scale, 0), resources, [surrogate])
    found = graph.store.load(kind, key, identity, warn=False)
    poison = lba_poison("cifar10", setting, stored_lba_trigger(found, search)) if found is not None else None
    for reconstruct, replaced in ((False, False), (False, True), (True, False), (True, True)):
        trap = trap_config("cifar10", poison, scale, reconstruct=reconstruct) if poison is not None else None
        name = f"{setting} {'T&R' if reconstruct else 'no reconstruction'}"
        key = None
        if trap is not None:
            key = trap_address(trap)[1]
            if replaced:
                key = replace_address(trap, key, replace_config(scale))[1]
        kind = "replaced" if replaced else ("trap" if reconstruct else "models")
        resources = _fit_resources(clean.train, cost=1.5 if reconstruct else 1.0)
        graph.job(kind, key, f"{name}{' stage 2' if replaced else ''}",
                  functools.partial(_lba_model, "cifar10", setting, scale, 0, reconstruct, replaced), resources,
                  [trigger_job])


#: paper -> how its jobs are collected at a scale (the same recipes the notebooks' `repro` tables use)
PAPER_JOBS: dict[str, Callable[[_Graph, str], None]] = {
    "quickstart": _quickstart, "bdmae": _bdmae, "restore": _restore, "lred": _lred, "trap_replace": _trap_replace,
}


def collect(papers: Iterable[str], scale: str, store: ArtefactStore | None = None) -> list[Job]:
    """Every job of `papers` at `scale`, once each, dependencies first. `store` (default: the cache) is read for
    the keys that depend on other jobs' outputs (LBA's models)."""
    graph = _Graph(store or ArtefactStore())
    for paper in [check_name("paper with jobs", paper, PAPER_JOBS) for paper in papers]:
        graph.paper = paper
        PAPER_JOBS[paper](graph, scale)
    return list(graph.jobs.values())


def plan(jobs: Iterable[Job], store: ArtefactStore | None = None) -> list[Job]:
    """The jobs to run, dependencies first: every goal whose artefact `store` (default: the cache) lacks, and the
    missing jobs those need (a job whose key waits on a dependency is never cached yet)."""
    store = store or ArtefactStore()
    jobs = list(jobs)
    by_id = {job.id: job for job in jobs}
    missing = {job.id for job in jobs if job.key is None or not store.contains(job.kind, job.key)}
    needed: set[str] = set()
    stack = [job.id for job in jobs if job.goal and job.id in missing]
    while stack:
        current = stack.pop()
        if current not in needed:
            needed.add(current)
            stack += [dep for dep in by_id[current].deps if dep in missing]
    return [job for job in jobs if job.id in needed]


def describe(jobs: Sequence[Job], todo: Sequence[Job], scale: str) -> str:
    """Every job of a collection with its status, key, dependencies and resources, then the estimated GPU-hours of
    what is to run and of the whole graph (`jobs plan`)."""
    import pandas as pd

    waiting = {job.id for job in todo}
    rows = [{"status": "to run" if job.id in waiting else ("cached" if job.key else "not needed"), "job": job.id,
             "what": job.label, "papers": ",".join(job.papers), "after": " ".join(job.deps) or "-",
             "gpus": job.resources.gpus, "cpus": job.resources.cpus, "memory GB": job.resources.memory_gb,
             "GPU-hours": round(job.resources.gpu_hours, 3)} for job in jobs]
    table = pd.DataFrame(rows).to_string(index=False, max_colwidth=60)
    left = sum(job.resources.gpu_hours for job in todo)
    total = sum(job.resources.gpu_hours for job in jobs)
    papers = dict.fromkeys(paper for job in jobs for paper in job.papers)
    per_paper = ", ".join(f"{paper} {sum(j.resources.gpu_hours for j in jobs if paper in j.papers):.2f}"
                          for paper in papers)
    return (f"{table}\n\n{len(jobs)} jobs at {scale} scale, {len(todo)} to run: estimated {left:.2f} GPU-hours to run, "
            f"{total:.2f} for the whole graph (each paper's: {per_paper}), on one modern GPU (an estimate from "
            f"counted FLOPs at an assumed "
            f"{ASSUMED_GPU_FLOPS / 1e12:.0f} TFLOP/s and {1000 * ASSUMED_GPU_SECONDS_PER_BATCH:.0f} ms per batch; "
            "`bench train` measures a real one)")


# --- running ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    """How every executor runs a job: where the cache is, the device, torch's CPU threads (the same number on
    every engine, so that CPU results are bit-identical whichever engine ran them), progress bars."""

    root: str
    read_only_roots: tuple[str, ...]
    device: str
    threads: int
    progress: bool

    def store(self) -> ArtefactStore:
        return ArtefactStore(self.root, list(self.read_only_roots))


def execute(job: Job, settings: Settings) -> str:
    """Run one job in this process and return its artefact key; what every engine calls. Logs its start, end and
    failure to `<cache>/.jobs/events.jsonl`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    start = time.time()
    _log(settings, "start", job)
    try:
        key = job.action(store=settings.store(), device=settings.device, progress=settings.progress)
    except BaseException as error:
        _log(settings, "failed", job, error=f"{type(error).__name__}: {error}"[:500])
        raise
    finally:
        torch.set_num_threads(threads)
    _log(settings, "done", job, seconds=round(time.time() - start, 2))
    if job.key is not None and key != job.key:  # both come from the same address functions: a bug, not a user error
        raise RuntimeError(f"job {job.id} made artefact {key}: the job's key is out of date")
    return key


def event_log(root: str | Path) -> Path:
    """The JSON-lines log of every job started, done or failed on the cache at `root`."""
    return Path(root) / ".jobs" / "events.jsonl"


def _log(settings: Settings, event: str, job: Job, **fields: Any) -> None:
    path = event_log(settings.root)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.time(), "event": event, "job": job.id, "label": job.label,
                       "host": socket.gethostname(), "pid": os.getpid(), **fields})
    with open(path, "a", encoding="utf-8") as log:  # one short append: whole lines even with many writers
        log.write(line + "\n")


#: executor -> the engine options it takes (`workbench.repro.engines`)
EXECUTORS: dict[str, tuple[str, ...]] = {
    "inline": (), "ray": ("address", "workers", "retries"),
    "slurm": ("cluster", "folder", "timeout_min", "partition", "workers"),
}


def check_run_options(executor: str, threads: int | None, engine_options: dict[str, Any]) -> None:
    """Refuse an unknown executor, an option it does not take, or a count that is not a positive integer (retries:
    non-negative), before any planning."""
    check_name("executor", executor, EXECUTORS)
    check_positive_int(threads, "threads", optional=True)
    foreign = sorted(set(engine_options) - set(EXECUTORS[executor]))
    if foreign:
        raise WorkbenchError(f"--executor {executor} does not take {', '.join(foreign)}; it takes "
                             f"{', '.join(EXECUTORS[executor]) or 'no engine options'}")
    for name in ("workers", "timeout_min"):
        check_positive_int(engine_options.get(name), name, optional=True)
    if engine_options.get("retries") is not None:
        check_non_negative(engine_options["retries"], "retries", integer=True)


def run(jobs: Sequence[Job], *, executor: str = "inline", store: ArtefactStore | None = None, device: str = "auto",
        threads: int | None = None, progress: bool = True, **engine_options: Any) -> list[str]:
    """Run what `plan` leaves and return the ids of the jobs run.

    Args:
        executor: "inline" (one after the other in this process: what tests and CI use), "ray" (a Ray cluster:
            `address`, `workers`, `retries`) or "slurm" (submitit: `cluster` "slurm" or "local", `folder`,
            `timeout_min`, `partition`); the engines live in `workbench.repro.engines`.
        threads: torch's CPU threads per job (default: this process's); every engine uses the same number, so the
            artefacts' bytes do not depend on the engine.
    """
    check_run_options(executor, threads, engine_options)
    store = store or ArtefactStore()
    threads = threads or torch.get_num_threads()
    resolve_device(device)  # an unusable device fails here, before any job starts
    settings = Settings(str(store.root), tuple(str(r) for r in store.read_only_roots), device, threads, progress)
    todo = plan(jobs, store)
    if not todo:
        return []
    if executor == "inline":
        for job in todo:
            execute(job, settings)
        return [job.id for job in todo]
    from workbench.repro import engines

    return engines.ENGINES[executor](todo, settings, **engine_options)
