"""The reproduction as a job graph (issue 26): keys, dependencies, resources, plan and the inline executor."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest
import torch

from tests.conftest import needs_real_data
from workbench.core.artefacts import ArtefactStore, NotCached
from workbench.core.runtime import assets_root, cache_root
from workbench.core.training import TrainConfig, artefact_address, get_or_train
from workbench.repro.bdmae import BDMAETables, EvaluatedShard, get_or_evaluate_shard
from workbench.repro.cli import main
from workbench.repro.jobs import collect, event_log, plan, run
from workbench.repro.paper_numbers import LRED_TABLE3
from workbench.repro.presets import quickstart_config
from workbench.repro.restore import RESTORE_PRESETS
from workbench.repro.runner import reproduce
from workbench.repro.trap_replace import defence_address

pytestmark = needs_real_data


def _empty(tmp_path, name: str = "cache") -> ArtefactStore:
    return ArtefactStore(tmp_path / name, read_only_roots=[])


def test_job_keys_are_the_cache_keys_and_shared_models_are_one_job() -> None:
    jobs = collect(["quickstart", "restore", "lred", "quickstart"], "smoke")
    assert len({job.id for job in jobs}) == len(jobs)
    training = [job for job in jobs if job.kind == "models"]
    # 1 quickstart + 4 REStore Table I + L-RED's 2 smoke groups, notebook 30's L-1 #0 and Table 4's two
    assert len(training) == 10
    for job in training:
        assert artefact_address(job.action.args[0])[1] == job.key
    runs = [job for job in jobs if job.kind == "restore"]
    assert len(runs) == len(RESTORE_PRESETS["smoke"].runs)  # notebook 20's two runs are among notebook 21's
    ids = [job.id for job in jobs]
    for job in runs:  # each importance-splitting run after the training of its model
        assert len(job.deps) == 1 and ids.index(job.deps[0]) < ids.index(job.id)
    assert {paper for job in jobs for paper in job.papers} == {"quickstart", "restore", "lred"}


def test_bdmae_shares_the_quickstart_model_and_its_lc_model_waits_for_the_clean_one() -> None:
    jobs = collect(["quickstart", "bdmae"], "smoke")
    order = [job.id for job in jobs]
    by_label = {job.label: job for job in jobs}
    assert by_label["quickstart model"].papers == ("quickstart", "bdmae")
    lc, clean = by_label["cifar10 LC"], by_label["cifar10 clean"]
    assert lc.deps == (clean.id,) and order.index(clean.id) < order.index(lc.id)
    assert clean.action.args[0] == TrainConfig.from_dict(lc.action.args[0].poison.adversarial.surrogate)
    assert by_label["cifar10 IAB"].kind == "iab" and not by_label["cifar10 IAB"].deps
    stages = [job for job in jobs if job.kind == "mae"]  # the tiny MAE's stages, each after the one before
    assert [job.goal for job in stages] == [False] * (len(stages) - 1) + [True]
    assert all(later.deps == (earlier.id,) for earlier, later in itertools.pairwise(stages))


def test_bdmae_evaluations_are_shard_jobs_after_their_model_and_the_tiny_mae() -> None:
    jobs = collect(["bdmae"], "smoke")
    by_id = {job.id: job for job in jobs}
    tables = BDMAETables("smoke", device="cpu")
    evaluations = tables.evaluations()
    assert {label.split(" cifar10")[0] for label in evaluations} == {"Table 1", "Table 2", "Table A.2",
                                                                     "Table A.3/A.4", "Table 3"}
    shards = [job for job in jobs if job.kind == "evaluations"]
    size = tables.preset.shard_images
    assert len(shards) == sum(len(e.shards(size)) for e in evaluations.values()) + 1  # and Fig. 5's
    assert [job.label for job in shards if job.label.startswith("Table 2")] == ["Table 2 cifar10 images 0-4",
                                                                                "Table 2 cifar10 images 4-8"]
    for job in shards:
        kinds = sorted(by_id[dep].kind for dep in job.deps)
        model = "iab" if " IAB " in job.label else "models"
        assert kinds == sorted([model, "mae", *(["diffusion"] if job.label.startswith("Table 1") else [])]), job.label
        assert job.resources.flops > 0


def test_restore_table3_slow_rows_and_app_j_are_jobs_after_what_they_load() -> None:
    jobs = collect(["restore"], "smoke")
    by_id, by_label = {job.id: job for job in jobs}, {job.label: job for job in jobs}
    for dataset in ("mnist", "cifar10"):
        slow = by_label[f"{dataset} badnets Table III Februus and BDMAE"]
        assert sorted(by_id[dep].kind for dep in slow.deps) == ["mae", "models"]
        any_class = by_label[f"{dataset} badnets splitting over all classes at once (App. J)"]
        assert sorted(by_id[dep].kind for dep in any_class.deps) == ["models", "restore"]


def test_a_bdmae_evaluation_gives_each_image_the_same_labels_in_any_shard(tmp_path) -> None:
    """Shards are independent jobs: image n draws from (seed, n) in whichever shard it falls (ShrinkPad's offsets,
    BDMAE's masks), so two shards give the labels of one, and a loaded shard is the computed one."""
    tables = BDMAETables("smoke", device="cpu")
    evaluation = replace(tables.table2_evaluation("cifar10"), only=("Before defense", "ShrinkPad", "BDMAE"))
    store = ArtefactStore(tmp_path / "scratch", read_only_roots=[cache_root() / "artefacts", assets_root()])
    config = tables.preset.bdmae

    def shard(images: tuple[int, int]) -> EvaluatedShard:
        return get_or_evaluate_shard(evaluation, images, config, store=store, device="cpu")

    whole, parts = shard((0, 8)), [shard(images) for images in evaluation.shards(3)]
    assert len(parts) == 3 and len(whole.defences) == len(evaluation.defences()) == 4
    for name, predicted in whole.defences.items():
        for side in ("clean", "triggered"):
            assert torch.equal(getattr(predicted, side), torch.cat([getattr(p.defences[name], side) for p in parts]))
        assert (predicted.queries is None) == name.startswith("Februus")
    again = shard((0, 3))  # loaded now
    assert all(torch.equal(again.defences[n].triggered, parts[0].defences[n].triggered) for n in again.defences)


def test_trap_and_replace_jobs_are_the_tables_artefacts() -> None:
    jobs = {job.id: job for job in collect(["trap_replace"], "smoke")}
    for defence in ("No defense", "NAD", "ANP", "ABL", "I-BAU", "DP", "T&R"):  # Table 1 at smoke: BadNet-Grid
        kind, key, _ = defence_address(defence, "cifar10", "BadNet-Grid", "smoke")
        assert f"{kind}/{key}" in jobs, defence
    replaced = jobs["replaced/" + defence_address("T&R", "cifar10", "BadNet-Grid", "smoke")[1]]
    assert replaced.deps and jobs[replaced.deps[0]].kind == "trap"  # stage 2 after its stage 1
    nad = jobs["nad/" + defence_address("NAD", "cifar10", "BadNet-Grid", "smoke")[1]]
    assert nad.deps == ("models/" + defence_address("No defense", "cifar10", "BadNet-Grid", "smoke")[1],)
    for job in jobs.values():
        assert job.resources.gpus == 1 and job.resources.cpus == 1
        assert job.resources.memory_gb > 1 and job.resources.flops > 0 and job.resources.gpu_hours > 0


def test_lba_models_get_their_keys_once_their_trigger_is_cached(tmp_path) -> None:
    store = _empty(tmp_path)
    jobs = collect(["trap_replace"], "smoke", store)
    lba = [job for job in jobs if job.label.startswith("LBA-12") and job.kind != "lba_triggers"]
    trigger = next(job for job in jobs if job.kind == "lba_triggers")
    assert len(lba) == 4 and all(job.key is None and job.deps == (trigger.id,) for job in lba)
    needed = [job.id for job in plan(jobs, store)]
    assert needed.index(trigger.deps[0]) < needed.index(trigger.id) < min(needed.index(job.id) for job in lba)
    assert run([job for job in jobs if job.id in (trigger.id, *trigger.deps)], store=store, device="cpu",
               progress=False) == [*trigger.deps, trigger.id]
    resolved = [job for job in collect(["trap_replace"], "smoke", store) if job.label in {j.label for j in lba}]
    assert len(resolved) == 4 and all(job.key is not None for job in resolved)


def test_plan_runs_an_earlier_pretraining_stage_only_when_a_later_one_is_missing(tmp_path) -> None:
    stages = [job for job in collect(["bdmae"], "smoke") if job.kind == "mae"]
    assert plan(stages, _empty(tmp_path)) == stages  # nothing stored: every stage, first to last
    committed = ArtefactStore(tmp_path / "cache", read_only_roots=[assets_root()])
    assert plan(stages, committed) == []  # the committed final stage: nothing to run


def test_a_plan_after_an_inline_run_is_empty_and_nothing_is_redone(tmp_path) -> None:
    store = _empty(tmp_path)
    jobs = [job for job in collect(["restore"], "smoke") if job.label == "mnist benign"]  # LeNet-5: seconds
    assert len(jobs) == 1 and plan(jobs, store) == jobs
    assert run(jobs, store=store, device="cpu", progress=False) == [job.id for job in jobs]
    assert plan(jobs, store) == []
    assert run(jobs, store=store, device="cpu", progress=False) == []
    events = [json.loads(line) for line in event_log(store.root).read_text().splitlines()]
    assert [(e["event"], e["job"]) for e in events] == [("start", jobs[0].id), ("done", jobs[0].id)]
    with pytest.raises(Exception, match="executor"):
        run(jobs, executor="dask", store=store)


def test_a_cache_only_store_refuses_to_train(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("WORKBENCH_CACHE_ONLY", "1")
    with pytest.raises(NotCached, match="jobs run"):
        get_or_train(quickstart_config("smoke"), device="cpu", progress=False)
    assert not (tmp_path / "artefacts" / "models").exists()
    # an explicit folder is not the shared cache: it computes (e.g. REStore's rerun-and-compare check)
    assert not ArtefactStore(tmp_path / "scratch").cache_only


def test_jobs_plan_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "plan", "quickstart", "trap_replace", "--scale", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "jobs at smoke scale" in out and "GPU-hours" in out and "trap/" in out and "replaced/" in out
    assert main(["jobs", "run", "quickstart", "--scale", "smoke", "--executor", "dask"]) == 2
    assert "executor" in capsys.readouterr().err


@pytest.mark.parametrize("scale", ["paper", "gpu"])
def test_large_scales_plan_with_their_estimated_gpu_hours(scale: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "plan", "--scale", scale]) == 0
    out = capsys.readouterr().out
    total = float(out.split(" for the whole graph")[0].rsplit(", ", 1)[1].split(" ")[0])
    assert total > 1 and f"jobs at {scale} scale" in out


def test_lred_detections_are_estimated_from_the_papers_measured_seconds() -> None:
    """At the paper's settings a ResNet-18 CIFAR-10 detection takes [L-RED] Table 3's mean time for its method; a
    smaller network on fewer images, proportionally less."""
    detections = {job.label: job for job in collect(["lred"], "paper") if job.kind == "lred"}
    for method in ("RED-A", "RED-P", "RED-A'"):
        seconds = LRED_TABLE3[method].values()
        assert detections[f"G-1 #0 {method}"].resources.gpu_hours * 3600 == pytest.approx(sum(seconds) / len(seconds))
    assert detections["G-1 #0 RED-U"].resources.gpu_hours == detections["G-1 #0 RED-A"].resources.gpu_hours
    smoke = next(job for job in collect(["lred"], "smoke") if job.label == "G-1 #0 RED-A")
    assert 0 < smoke.resources.gpu_hours < detections["G-1 #0 RED-A"].resources.gpu_hours / 10


def test_reproduce_after_the_jobs_ran_trains_nothing(tmp_path, isolated_cache,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The acceptance in small: the quickstart's jobs into an empty cache, then `reproduce quickstart` with a
    cache-only store (WORKBENCH_CACHE_ONLY=1, which the notebook kernel inherits): it runs through, and an empty
    cache makes the same notebook fail on the first thing it would train."""
    store = ArtefactStore()
    jobs = collect(["quickstart"], "smoke", store)
    assert run(jobs, store=store, device="cpu", progress=False) == [job.id for job in jobs]
    monkeypatch.setenv("WORKBENCH_CACHE_ONLY", "1")
    _, runs = reproduce(["quickstart"], scale="smoke", output_dir=tmp_path / "out", progress=False)
    assert [run.ok for run in runs] == [True], runs
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "empty"))
    _, runs = reproduce(["quickstart"], scale="smoke", output_dir=tmp_path / "out", progress=False)
    assert not runs[0].ok and "NotCached" in runs[0].error
