"""The defence matrix: cells stored and reused, the same BDMAE labels as notebook 11, defences that cannot apply
reported instead of failing, BackdoorBench records as subjects, the CLI, the heat map and the explorer."""

import dataclasses
import json

import pandas as pd
import pytest
import torch

from tests.test_backdoorbench import write_record
from tests.test_widgets import control, outputs, shown
from workbench.core.attacks import make_attack
from workbench.core.mae import MAERestorer
from workbench.core.mae_training import load_workbench_mae
from workbench.core.preact_resnet import PreActResNet18
from workbench.core.query import QueryModel
from workbench.core.validation import WorkbenchError
from workbench.defenses.bdmae import BDMAE
from workbench.defenses.registered import RestoreSettings
from workbench.repro import matrix as matrix_module
from workbench.repro.bdmae import BDMAE_PRESETS, badnets_setting, evaluation_images
from workbench.repro.cli import main
from workbench.repro.matrix import (
    MATRIX_PRESETS,
    SUBJECTS,
    Cell,
    NotApplicable,
    PurificationCell,
    load_subjects,
    record_subject,
    run_cell,
    run_matrix,
)
from workbench.viz.matrix import matrix_figure
from workbench.widgets.matrix import matrix_explorer

SMOKE = MATRIX_PRESETS["smoke"]


@pytest.fixture(scope="module")
def badnets():
    """The smoke-scale BDMAE main-setting model as a matrix subject (trained once, then cached)."""
    return SUBJECTS["cifar10-badnets"](SMOKE, "smoke", 0, "cpu")


def test_bdmae_labels_equal_notebook_11s_on_the_same_images(badnets, tmp_path):
    cell = run_cell(badnets, "bdmae", SMOKE, tmp_path)
    # notebook 11's computation: its draw of main_images, BDMAE with its preset, one call per image set
    setting = badnets_setting("cifar10", make_attack("bdmae_badnets_colour"), "smoke")
    trained, attack = setting.load(device="cpu")
    x_clean, _, x_bd, _ = evaluation_images(setting.recipe.splits().test, attack, setting.target,
                                            BDMAE_PRESETS["smoke"].main_images, 0)
    restorer = MAERestorer(load_workbench_mae(device="cpu"))
    config = BDMAE_PRESETS["smoke"].bdmae
    clean = BDMAE(QueryModel(trained.model, "label"), restorer, config).purify(x_clean, seed=0).labels
    triggered = BDMAE(QueryModel(trained.model, "label"), restorer, config).purify(x_bd, seed=0).labels
    count = SMOKE.images
    assert isinstance(cell, PurificationCell)
    assert list(cell.clean_labels) == clean[:count].tolist()
    assert list(cell.triggered_labels) == triggered[:count].tolist()


def test_cells_are_stored_and_reused_until_a_setting_changes(badnets, tmp_path, monkeypatch):
    first = run_cell(badnets, "blur", SMOKE, tmp_path)
    assert (tmp_path / "cells" / "cifar10-badnets" / "blur.json").is_file()
    assert (tmp_path / "cells" / "cifar10-badnets" / "blur.safetensors").is_file()

    def no_compute(*args, **kwargs):
        raise AssertionError("a stored cell was recomputed")

    monkeypatch.setattr(matrix_module, "create", no_compute)
    assert run_cell(badnets, "blur", SMOKE, tmp_path) == first  # read back as the same typed cell
    changed = SMOKE.__class__(**{**SMOKE.__dict__, "configs": {**SMOKE.configs, "blur": {"sigma": 1.0}}})
    with pytest.raises(AssertionError, match="recomputed"):
        run_cell(badnets, "blur", changed, tmp_path)


class HoldoutOracle(torch.nn.Module):
    """Labels an image by its nearest holdout image: a classifier every class of the holdout has clean images for.
    The smoke-scale model calls most holdout images its target on some CPUs, and REStore's diagnosis then finds
    no clean set (a `NotApplicable` cell); this test is about the plumbing between the two REStore cells."""

    input_shape = (3, 32, 32)
    num_classes = 10

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__()
        self.images, self.labels = images.flatten(1), labels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nearest = torch.cdist(x.flatten(1), self.images).argmin(dim=1)
        return torch.nn.functional.one_hot(self.labels[nearest], self.num_classes).float() * 10


def test_restores_purifier_starts_from_the_diagnosis_of_the_same_run(badnets, tmp_path, monkeypatch):
    oracle = HoldoutOracle(badnets.holdout.float_images(), badnets.holdout.labels)
    badnets = dataclasses.replace(badnets, model=oracle, fingerprint="holdout-oracle")
    found = {}
    detection = run_cell(badnets, "restore-diagnosis", SMOKE, tmp_path, found=found)
    assert found["restore-diagnosis"].suspect == detection.target

    def no_second_diagnosis(*args, **kwargs):
        raise AssertionError("REStore diagnosed the model again")

    monkeypatch.setattr(RestoreSettings, "diagnose", no_second_diagnosis)
    cell = run_cell(badnets, "restore", SMOKE, tmp_path, found=found)
    assert cell.queries_per_image == 1 and 0 <= cell.ASR <= 100


def test_a_defence_that_cannot_apply_is_reported_not_raised(tmp_path):
    record = write_record(tmp_path / "rec", PreActResNet18(10).state_dict())
    subject = record_subject(record.path, SMOKE)
    assert subject.backdoored and subject.target == 0 and len(subject.triggered_images) == 3
    cell = run_cell(subject, "februus", SMOKE, tmp_path / "m")  # the record's PreAct-ResNet18 declares layer4
    assert isinstance(cell, PurificationCell) and 0 <= cell.ASR <= 100
    subject.model.cam_layer = None  # a wrapped model that does not say where its feature map is
    cell = run_cell(subject, "februus", SMOKE, tmp_path / "n")
    assert isinstance(cell, NotApplicable) and "name the CAM layer" in cell.reason
    assert Cell.from_stored(json.loads((tmp_path / "n" / "cells" / subject.name / "februus.json").read_text())) == cell


def test_unknown_subjects_and_defences_are_refused_before_any_work(badnets, tmp_path):
    with pytest.raises(Exception, match="unknown subject 'cifar10-badnet'"):
        load_subjects(["cifar10-badnet"], SMOKE, "smoke")
    with pytest.raises(Exception, match="unknown defence 'blurr'"):
        run_matrix([badnets], SMOKE, tmp_path, defences=["blurr"])
    with pytest.raises(WorkbenchError, match="'abl' is a training-time defence"):
        run_matrix([badnets], SMOKE, tmp_path, defences=["blur", "abl"])
    assert not (tmp_path / "cells").exists()


def test_cli_writes_three_tables_and_the_heat_map(tmp_path, capsys):
    assert main(["matrix", "cifar10-badnets", "--scale", "smoke", "--defences", "red-a-prime", "blur",
                 "fine-tuning", "--output", str(tmp_path), "--device", "cpu"]) == 0
    for kind in ("detectors", "purifiers", "repairs"):
        table = pd.read_csv(tmp_path / f"{kind}.csv")
        assert "cifar10-badnets" in set(table["model"])
    purifiers = pd.read_csv(tmp_path / "purifiers.csv")
    assert list(purifiers["defence"]) == ["no defence", "blur"]
    detections = pd.read_csv(tmp_path / "detectors.csv")  # the undefended ASR beside the truth it is scored against
    assert detections["model ASR"].tolist() == purifiers.loc[purifiers["defence"] == "no defence", "ASR"].tolist()
    assert "heat map:" in capsys.readouterr().out
    cell = json.loads((tmp_path / "cells" / "cifar10-badnets" / "red-a-prime.json").read_text())
    assert cell["kind"] == "detector" and len(cell["class_scores"]) == 10


def test_heat_map_and_explorer_show_every_kind(badnets, tmp_path):
    cells = [run_cell(badnets, name, SMOKE, tmp_path) for name in ("red-a-prime", "blur", "fine-tuning")]
    matrix = run_matrix([badnets], SMOKE, tmp_path, defences=["red-a-prime", "blur", "fine-tuning"], progress=False)
    figure = matrix_figure(matrix.detections, matrix.purifications, matrix.repairs)
    assert [ax.get_xlabel() for ax in figure.axes[:3]] == ["defence"] * 3
    explorer = matrix_explorer(cells, tmp_path)
    [out] = outputs(explorer)
    pictures = set()
    for defence in ("red-a-prime", "blur", "fine-tuning"):
        control(explorer, "defence").value = defence
        bundle = shown(out) if defence != "fine-tuning" else out.outputs[0]["data"]  # a repair: its numbers
        pictures.add(bundle.get("image/png", bundle.get("text/html")))
    assert len(pictures) == 3  # a different view for each kind
    assert "CA" in bundle["text/html"]


def test_mnist_subject_draws_triggered_images_from_the_source_classes():
    subject = SUBJECTS["mnist-lred"](SMOKE, "smoke", 0, "cpu")
    assert subject.clean_images.shape[1:] == (1, 28, 28)
    assert set(subject.triggered_labels.tolist()) <= {4, 6, 9} and subject.target == 8
    assert torch.all(subject.holdout.labels < 10)
