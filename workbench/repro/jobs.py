"""The reproduction as a job graph (issue 26, first slice): the classifier trainings the papers' notebooks request,
each a job named by the artefact cache's content address, with the jobs whose artefacts it loads.

    jobs = collect(["quickstart", "restore", "lred"], "smoke")
    for job in plan(jobs):            # the jobs whose artefacts are not cached yet, dependencies first
        print(job.id, job.label)
    run(jobs)                         # train them (the inline executor); the notebooks then only load

What this slice covers: quickstart's model, REStore's Table I models (their clean surrogates first where an attack
is label-consistent) and L-RED's classifiers of every attack group. Not yet: BDMAE's and T&R's models, L-RED's
Table 4 classifiers of the other datasets, importance-splitting runs, detections and evaluations, cost estimates,
and the Ray / Slurm executors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from workbench.core.artefacts import ArtefactStore
from workbench.core.scales import pick
from workbench.core.training import TrainConfig, artefact_address, get_or_train
from workbench.core.validation import check_name


@dataclass(frozen=True)
class Job:
    """One cached unit of work.

    Attributes:
        kind: the artefact kind it writes ("models").
        key: the artefact's content address (the cache's key: the same job is never done twice).
        identity: what the key hashes (the recipe and a fingerprint of the data it trains on).
        label: what it is, for people ("cifar10 badnets", "L-1 #3").
        papers: the papers whose notebooks load it.
        config: the recipe it trains.
        deps: ids of the jobs whose artefacts it loads (a label-consistent attack's clean surrogate).
    """

    kind: str
    key: str
    identity: dict[str, Any]
    label: str
    papers: tuple[str, ...]
    config: TrainConfig
    deps: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.key}"


def _training_jobs(label: str, config: TrainConfig, paper: str) -> list[Job]:
    """The job that trains `config`, after the job of its clean surrogate when the attack is label-consistent
    (`prepare_training_data` trains the surrogate first and poisons with PGD against it)."""
    jobs = []
    adversarial = config.poison.adversarial if config.poison is not None else None
    if adversarial is not None:
        jobs = _training_jobs(f"{label} (clean surrogate)", TrainConfig.from_dict(adversarial.surrogate), paper)
    kind, key, identity = artefact_address(config)
    return [*jobs, Job(kind, key, identity, label, (paper,), config, tuple(job.id for job in jobs[-1:]))]


def _quickstart(scale: str | None) -> list[tuple[str, TrainConfig]]:
    from workbench.repro.presets import quickstart_config

    return [("quickstart model", quickstart_config(scale))]


def _restore(scale: str | None) -> list[tuple[str, TrainConfig]]:
    from workbench.repro.restore import RESTORE_PRESETS, train_config

    return [(f"{dataset} {attack}", train_config(dataset, attack, scale))
            for dataset, attacks in pick(scale, RESTORE_PRESETS).attacks.items() for attack in attacks]


def _lred(scale: str | None) -> list[tuple[str, TrainConfig]]:
    from workbench.repro.lred import GROUPS, LRED_PRESETS, classifier_config

    preset = pick(scale, LRED_PRESETS)
    return [(f"{group} #{index}", classifier_config(GROUPS[group], index, scale))
            for group in preset.groups for index in range(preset.models_per_group)]


#: paper -> the (label, recipe) of every classifier its notebooks train at a scale (the same calls the notebooks'
#: `repro` tables make: `quickstart_config`, REStore's `train_config` over its preset's attacks, L-RED's
#: `classifier_config` over its groups)
PAPER_JOBS: dict[str, Callable[[str | None], list[tuple[str, TrainConfig]]]] = {
    "quickstart": _quickstart, "restore": _restore, "lred": _lred,
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
        trained = get_or_train(job.config, store=store, device=device, progress=progress)
        if trained.key != job.key:  # both come from artefact_address: a difference is a bug, not a user error
            raise RuntimeError(f"job {job.id} trained artefact {trained.key}: the job's key is out of date")
        done.append(job.id)
    return done
