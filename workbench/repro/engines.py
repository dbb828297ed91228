"""The engines that run the reproduction's job graph beyond this process (issue 26): Ray and Slurm (submitit).

The workbench only describes jobs (`workbench.repro.jobs`); the engines schedule, place and retry them. Every
engine calls the same `jobs.execute(job, settings)` in its workers, which pins torch's CPU threads and writes the
result into the shared cache, so the artefacts' keys and bytes are the same whichever engine ran them. Both are
optional extras: `pip install -e ".[distributed]"`.

    ray:   ENGINES["ray"](todo, settings, address=None, workers=None, retries=1)
    slurm: ENGINES["slurm"](todo, settings, cluster="slurm", folder=..., timeout_min=..., partition=None)
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from workbench.core.validation import WorkbenchError, check_name, check_non_negative, check_positive_int
from workbench.repro.jobs import Job, Settings, execute


def _import(module: str, executor: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise WorkbenchError(f"--executor {executor} needs {module.split('.')[0]}: pip install -e \".[distributed]\" "
                             f"({error})") from error


def _forwarded_environment() -> dict[str, str]:
    """The workbench's settings (cache, datasets, scale, ...) for workers that do not inherit this environment."""
    return {name: value for name, value in os.environ.items() if name.startswith("WORKBENCH_")}


def _reason(error: BaseException) -> str:
    """The last line of a failed job's error (an engine wraps the job's own exception and its traceback)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1][:300]}" if lines else type(error).__name__


def _levels(todo: Sequence[Job]) -> list[list[Job]]:
    """`todo` (dependencies first) in waves: every job after the wave of its last dependency in `todo`."""
    wave: dict[str, int] = {}
    for job in todo:
        wave[job.id] = 1 + max((wave[d] for d in job.deps if d in wave), default=-1)
    return [[job for job in todo if wave[job.id] == level] for level in range(max(wave.values(), default=-1) + 1)]


def _execute_after(job: Job, settings: Settings, *dependencies: str) -> str:
    """A Ray task: `execute` once the tasks of `dependencies` are done (Ray resolves them before it starts)."""
    return execute(job, settings)


def run_ray(todo: Sequence[Job], settings: Settings, *, address: str | None = None, workers: int | None = None,
            retries: int = 1) -> list[str]:
    """Run `todo` as Ray tasks, each after the tasks of its dependencies.

    Args:
        address: a running cluster to join ("auto" or "host:port"); None starts a local one for this run.
        workers: jobs at once on the local cluster (default: the machine's cores over `settings.threads`); a job
            takes `settings.threads` of Ray's CPUs (so a joined cluster runs no more jobs on a node than its cores
            allow) and, on a CUDA device, one GPU.
        retries: how often Ray reruns a job whose worker died (a finished job is never rerun: its artefact is
            published before the task returns).
    """
    check_positive_int(workers, "workers", optional=True)
    check_non_negative(retries, "retries", integer=True)
    if address is not None and workers is not None:
        raise WorkbenchError("--workers sizes a local Ray cluster; with --address the cluster has its own")
    ray = _import("ray", "ray")
    started = not ray.is_initialized()
    if started:
        slots = workers or max(1, (os.cpu_count() or 1) // settings.threads)  # a job always fits in a local cluster
        ray.init(address=address, num_cpus=None if address else slots * settings.threads,
                 include_dashboard=False, log_to_driver=settings.progress,
                 runtime_env={"env_vars": _forwarded_environment()})
    try:
        gpus = 1 if settings.device.startswith("cuda") else 0
        task = ray.remote(_execute_after)
        refs: dict[str, Any] = {}
        for job in todo:
            refs[job.id] = task.options(num_cpus=max(job.resources.cpus, settings.threads),
                                        num_gpus=job.resources.gpus * gpus,
                                        max_retries=retries, name=job.label[:100]).remote(
                job, settings, *(refs[d] for d in job.deps if d in refs))
        failures = []
        for job in todo:
            try:
                ray.get(refs[job.id])
            except Exception as error:  # noqa: BLE001 - every failed job is reported together below
                failures.append(f"{job.id} ({job.label}): {_reason(error)}")
        if failures:
            raise WorkbenchError(f"{len(failures)} of {len(todo)} jobs failed (finished ones are cached; rerun to do "
                                 "the rest): " + "; ".join(failures))
    finally:
        if started:
            ray.shutdown()
    return [job.id for job in todo]


class _SubmititJob:
    """A job as submitit runs it: `checkpoint` requeues it after a timeout or preemption (submitit's
    `Checkpointable` protocol); the rerun loads every artefact that was finished and computes the rest."""

    def __init__(self, job: Job, settings: Settings) -> None:
        self.job, self.settings = job, settings

    def __call__(self) -> str:
        return execute(self.job, self.settings)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        submitit = _import("submitit", "slurm")
        return submitit.helpers.DelayedSubmission(self)


def run_slurm(todo: Sequence[Job], settings: Settings, *, cluster: str = "slurm", folder: str | Path | None = None,
              timeout_min: int = 24 * 60, partition: str | None = None, workers: int | None = None) -> list[str]:
    """Run `todo` through submitit: each wave of jobs whose dependencies are done is one job array.

    Args:
        cluster: "slurm", or "local" (submitit's local executor: subprocesses on this machine, for tests).
        folder: submitit's logs and pickled jobs (default: `<cache>/.jobs/submitit`).
        timeout_min: each job's time limit; a job that reaches it is requeued and resumes from the cache.
        partition: the Slurm partition.
        workers: at most this many jobs at once (Slurm: the array's parallelism, default unlimited; local: default
            the cores over `settings.threads`, since the local executor starts every job it is given at once).
    """
    check_name("submitit cluster", cluster, ("slurm", "local"))
    check_positive_int(timeout_min, "timeout_min")
    check_positive_int(workers, "workers", optional=True)
    if cluster == "local" and workers is None:
        workers = max(1, (os.cpu_count() or 1) // settings.threads)
    submitit = _import("submitit", "slurm")
    folder = Path(folder) if folder is not None else Path(settings.root) / ".jobs" / "submitit"
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    gpus = 1 if settings.device.startswith("cuda") else 0
    executor.update_parameters(timeout_min=timeout_min, gpus_per_node=gpus, cpus_per_task=settings.threads,
                               mem_gb=max(job.resources.memory_gb for job in todo), name="workbench-jobs",
                               **({"slurm_partition": partition} if partition else {}),
                               **({"slurm_array_parallelism": workers} if cluster == "slurm" and workers else {}))
    step = workers if cluster == "local" else None
    for wave in _levels(todo):
        failures = []
        for part in (wave[i:i + step] for i in range(0, len(wave), step)) if step else [wave]:
            failures += _run_array(executor, part, settings)
        if failures:
            raise WorkbenchError(f"{len(failures)} jobs failed (finished ones are cached; rerun to do the rest): "
                                 + "; ".join(failures))
    return [job.id for job in todo]


def _run_array(executor: Any, jobs: Sequence[Job], settings: Settings) -> list[str]:
    """Submit `jobs` as one job array, wait for it and return what failed."""
    with executor.batch():
        submitted = [executor.submit(_SubmititJob(job, settings)) for job in jobs]
    failures = []
    for job, handle in zip(jobs, submitted, strict=True):
        try:
            handle.result()
        except Exception as error:  # noqa: BLE001 - every failed job is reported together
            failures.append(f"{job.id} ({job.label}): {_reason(error)}; log {handle.paths.stderr}")
    return failures


ENGINES: dict[str, Callable[..., list[str]]] = {"ray": run_ray, "slurm": run_slurm}
