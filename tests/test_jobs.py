"""The reproduction's classifier trainings as jobs (issue 26, first slice): keys, dependencies, plan and run."""

from __future__ import annotations

import pytest

from tests.conftest import needs_real_data
from workbench.core.artefacts import ArtefactStore
from workbench.core.training import TrainConfig, artefact_address
from workbench.repro.cli import main
from workbench.repro.jobs import collect, plan, run

pytestmark = needs_real_data


def test_job_keys_are_the_cache_keys_and_shared_models_are_one_job() -> None:
    jobs = collect(["quickstart", "restore", "lred", "quickstart"], "smoke")
    # 1 quickstart + 4 REStore Table I + 2 L-RED groups + Table 4's attacked and clean classifier
    assert len({job.id for job in jobs}) == len(jobs) == 9
    for job in jobs:
        kind, key, identity = artefact_address(job.config)
        assert (job.kind, job.key, job.identity) == (kind, key, identity)
    assert {paper for job in jobs for paper in job.papers} == {"quickstart", "restore", "lred"}


def test_bdmae_shares_the_quickstart_model_and_its_lc_model_waits_for_the_clean_one() -> None:
    jobs = collect(["quickstart", "bdmae"], "smoke")
    order = [job.id for job in jobs]
    by_label = {job.label: job for job in jobs}
    # the main BadNets model (= quickstart's), clean, six trigger variants, IAB, LC, Blended (LC's surrogate = clean)
    assert len(jobs) == 11 and by_label["quickstart model"].papers == ("quickstart", "bdmae")
    lc, clean = by_label["cifar10 LC"], by_label["cifar10 clean"]
    assert lc.deps == (clean.id,) and order.index(clean.id) < order.index(lc.id)
    assert clean.config == TrainConfig.from_dict(lc.config.poison.adversarial.surrogate)
    assert by_label["cifar10 IAB"].kind == "iab" and not by_label["cifar10 IAB"].deps


def test_a_plan_after_an_inline_run_is_empty_and_nothing_is_redone(tmp_path) -> None:
    store = ArtefactStore(tmp_path, read_only_roots=[])
    jobs = collect(["quickstart"], "smoke")
    assert plan(jobs, store) == jobs
    assert run(jobs, store=store, device="cpu", progress=False) == [job.id for job in jobs]
    assert plan(jobs, store) == []
    assert run(jobs, store=store, device="cpu", progress=False) == []
    with pytest.raises(Exception, match="executor"):
        run(jobs, executor="ray", store=store)


def test_jobs_plan_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "plan", "quickstart", "--scale", "smoke"]) == 0
    assert "jobs at smoke scale are not cached" in capsys.readouterr().out
    assert main(["jobs", "plan", "trap_replace", "--scale", "smoke"]) == 2  # not a paper with jobs yet
    assert "trap_replace" in capsys.readouterr().err
