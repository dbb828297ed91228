"""The reproduction as a job graph (issue 26, first slice): the classifier trainings the papers' notebooks request,
each a job named by the artefact cache's content address, with the jobs whose artefacts it loads.

    jobs = collect(["quickstart", "restore", "lred"], "smoke")
    for job in plan(jobs):            # the jobs whose artefacts are not cached yet, dependencies first
        print(job.id, job.label)
    run(jobs)                         # train them (the inline executor); the notebooks then only load

What this slice covers: quickstart's model, BDMAE's models (main, clean, the trigger variants and Table 3's IAB,
LC and Blended; LC after its clean surrogate), REStore's Table I models and L-RED's classifiers (every attack group,
Table 4's attacked and clean ones). Not yet: T&R's models, the L-RED walkthrough's own choice of classifier (a
notebook parameter), importance-splitting runs, detections and evaluations, cost estimates, and the Ray / Slurm
executors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from workbench.core.artefacts import ArtefactStore
from workbench.core.attacks.input_aware import InputAwareConfig
from workbench.core.scales import pick
from workbench.core.training import TrainConfig, artefact_address, get_or_train, get_or_train_input_aware
from workbench.core.validation import check_name


@dataclass(frozen=True)
class Job:
    """One cached unit of work.

    Attributes:
        kind: the artefact kind it writes ("models", or "iab" for an input-aware attack's classifier and generators).
        key: the artefact's content address (the cache's key: the same job is never done twice).
        identity: what the key hashes (the recipe and a fingerprint of the data it trains on).
        label: what it is, for people ("cifar10 badnets", "L-1 #3").
        papers: the papers whose notebooks load it.
        config: the recipe it trains (an `InputAwareConfig` for IAB).
        deps: ids of the jobs whose artefacts it loads (a label-consistent attack's clean surrogate).
    """

    kind: str
    key: str
    identity: dict[str, Any]
    label: str
    papers: tuple[str, ...]
    config: TrainConfig | InputAwareConfig
    deps: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.key}"


def _training_jobs(label: str, config: TrainConfig | InputAwareConfig, paper: str) -> list[Job]:
    """The job that trains `config`, after the job of its clean surrogate when the attack is label-consistent
    (`prepare_training_data` trains the surrogate first and poisons with PGD against it)."""
    jobs = []
    poison = config.poison if isinstance(config, TrainConfig) else None
    adversarial = poison.adversarial if poison is not None else None
    if adversarial is not None:
        jobs = _training_jobs(f"{label} (clean surrogate)", TrainConfig.from_dict(adversarial.surrogate), paper)
    kind, key, identity = artefact_address(config)
    return [*jobs, Job(kind, key, identity, label, (paper,), config, tuple(job.id for job in jobs[-1:]))]


def _quickstart(scale: str | None) -> list[tuple[str, TrainConfig]]:
    from workbench.repro.presets import quickstart_config

    return [("quickstart model", quickstart_config(scale))]


def _bdmae(scale: str | None) -> list[tuple[str, TrainConfig | InputAwareConfig]]:
    from workbench.core.attacks import make_attack
    from workbench.repro.bdmae import (
        BDMAE_PRESETS,
        badnets_setting,
        challenging_settings,
        clean_setting,
        trigger_variants,
    )

    found = []
    for dataset in pick(scale, BDMAE_PRESETS).datasets:
        found += [(f"{dataset} BadNets", badnets_setting(dataset, make_attack("bdmae_badnets_colour"), scale).train),
                  (f"{dataset} clean", clean_setting(dataset, scale).train)]
        found += [(f"{dataset} {name}", badnets_setting(dataset, attack, scale, reduced=True).train)
                  for name, attack in trigger_variants().items()]
        found += [(f"{dataset} {name}", setting.train)
                  for name, setting in challenging_settings(dataset, scale).items()]
    return found


def _restore(scale: str | None) -> list[tuple[str, TrainConfig]]:
    from workbench.repro.restore import RESTORE_PRESETS, train_config

    return [(f"{dataset} {attack}", train_config(dataset, attack, scale))
            for dataset, attacks in pick(scale, RESTORE_PRESETS).attacks.items() for attack in attacks]


def _lred(scale: str | None) -> list[tuple[str, TrainConfig]]:
    from workbench.repro.lred import GROUPS, LRED_PRESETS, OTHER_DATASETS, classifier_config

    preset = pick(scale, LRED_PRESETS)
    groups = [(f"{group} #{index}", classifier_config(GROUPS[group], index, scale))
              for group in preset.groups for index in range(preset.models_per_group)]
    table4 = [(f"{dataset} {kind}", classifier_config(setting, 0, scale))  # one attacked and one clean per dataset
              for dataset in preset.other_datasets
              for kind, setting in (("attacked", OTHER_DATASETS[dataset]), ("clean", OTHER_DATASETS[dataset].clean()))]
    return groups + table4


#: paper -> the (label, recipe) of every classifier its notebooks train at a scale (the same calls the notebooks'
#: `repro` tables make: `quickstart_config`, BDMAE's settings of every table, REStore's `train_config` over its
#: preset's attacks, L-RED's `classifier_config` over its groups)
PAPER_JOBS: dict[str, Callable[[str | None], list[tuple[str, TrainConfig | InputAwareConfig]]]] = {
    "quickstart": _quickstart, "bdmae": _bdmae, "restore": _restore, "lred": _lred,
}


def collect(papers: Iterable[str], scale: str | None) -> list[Job]:
    """Every job of `papers` at `scale`, once each (a model two papers share is one job), dependencies first."""
    papers = [check_name("paper with jobs", paper, PAPER_JOBS) for paper in papers]
    found: dict[str, Job] = {}
    for paper in papers:
        for label, config in PAPER_JOBS[paper](scale):
            for job in _training_jobs(label, config, paper):
                known = found.get(job.id)
                found[job.id] = job if known is None else Job(
                    known.kind, known.key, known.identity, known.label,
                    tuple(dict.fromkeys((*known.papers, *job.papers))), known.config, known.deps)
    return list(found.values())


def plan(jobs: Iterable[Job], store: ArtefactStore | None = None) -> list[Job]:
    """The jobs whose artefact `store` (default: the cache) does not hold, dependencies before the jobs that need
    them."""
    store = store or ArtefactStore()
    return [job for job in jobs if store.load(job.kind, job.key, job.identity, warn=False) is None]


def run(jobs: Iterable[Job], *, executor: str = "inline", store: ArtefactStore | None = None, device: str = "auto",
        progress: bool = True) -> list[str]:
    """Run the jobs `plan` leaves, in order, and return their ids. `executor="inline"` trains them one after the
    other in this process (what tests and CI use)."""
    check_name("executor", executor, ("inline",))
    store = store or ArtefactStore()
    done = []
    for job in plan(jobs, store):
        if isinstance(job.config, InputAwareConfig):
            trained, _ = get_or_train_input_aware(job.config, store=store, device=device, progress=progress)
        else:
            trained = get_or_train(job.config, store=store, device=device, progress=progress)
        if trained.key != job.key:  # both come from artefact_address: a difference is a bug, not a user error
            raise RuntimeError(f"job {job.id} trained artefact {trained.key}: the job's key is out of date")
        done.append(job.id)
    return done
