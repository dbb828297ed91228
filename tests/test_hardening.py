"""Issue 25's bad inputs, verbatim: each one that used to return a silently wrong result (or fail deep inside torch)
now ends in a one-line `WorkbenchError` naming the argument, or in a correct result."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from workbench.core.artefacts import ArtefactStore, config_key
from workbench.core.attacks import SIG, WaNet
from workbench.core.attacks.input_aware import InputAware
from workbench.core.mae import MAEArchitecture, MAERestorer, MaskedAutoencoderViT
from workbench.core.metrics import attack_success_rate, clean_accuracy, confusion_matrix
from workbench.core.models import build_model
from workbench.core.query import QueryModel
from workbench.core.training import TrainConfig
from workbench.core.validation import WorkbenchError
from workbench.defenses.bdmae import BDMAE, BDMAEConfig
from workbench.defenses.lred import detect
from workbench.defenses.restore import Purifier, TriggerEstimate, calibrate_alpha, select_purifier
from workbench.repro.results import record_table
from workbench.repro.runner import reproduce

MAE16 = MAEArchitecture(img_size=16, patch_size=4, in_chans=3, embed_dim=16, depth=1, num_heads=2,
                        decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lenet5", in_channels=3, num_classes=10, image_size=32).eval()


MODEL = _model()
X = torch.rand(20, 3, 32, 32, generator=torch.Generator().manual_seed(0))
Y = torch.arange(20) % 10
ESTIMATE = TriggerEstimate(mean=torch.full((3, 32, 32), 0.1), snr=torch.full((3, 32, 32), 3.0))


def _training_config(**changes: object) -> TrainConfig:
    return TrainConfig("cifar10", "lenet5", **changes)


CASES: dict[str, tuple[Callable[[], object], str]] = {
    "momentum 1.5": (lambda: _training_config(momentum=1.5), "momentum"),
    "weight decay -1": (lambda: _training_config(weight_decay=-1), "weight_decay"),
    "lr inf": (lambda: _training_config(lr=math.inf), "lr"),
    "MAE batch size -1": (lambda: MAERestorer(MaskedAutoencoderViT(MAE16), batch_size=-1), "batch_size"),
    "SIG cycles NaN": (lambda: SIG(cycles=math.nan), "cycles"),
    "WaNet strength NaN": (lambda: WaNet(strength=math.nan), "strength"),
    "BDMAE threshold above 1": (lambda: BDMAEConfig(thresholds=(1.5, 0.5)), "thresholds"),
    "BDMAE threshold NaN": (lambda: BDMAEConfig(thresholds=(math.nan,)), "thresholds"),
    "BDMAE beta0 < 0": (lambda: BDMAEConfig(beta0=-0.1), "beta0"),
    "BDMAE mask ratio masks no token": (
        lambda: BDMAE(QueryModel(MODEL), MAERestorer(MaskedAutoencoderViT(MAE16)), BDMAEConfig(mask_ratio=0.01)
                      ).purify(X[:2]), "mask_ratio"),
    "BDMAE empty batch": (
        lambda: BDMAE(QueryModel(MODEL), MAERestorer(MaskedAutoencoderViT(MAE16))).purify(X[:0]), "images"),
    "calibrate_alpha one label": (lambda: calibrate_alpha(QueryModel(MODEL), "PI", X, Y[:1]), "labels"),
    "select_purifier one label": (lambda: select_purifier(QueryModel(MODEL), ESTIMATE, X, Y[:1]), "labels"),
    "Purifier one channel": (lambda: Purifier("subtract", 0.5, ESTIMATE.weights(), ESTIMATE.mean)(X[:, :1]),
                             "channel"),
    "Purifier uint8": (lambda: Purifier("subtract", 0.5, ESTIMATE.weights(), ESTIMATE.mean)(
        (X * 255).to(torch.uint8)), "dtype"),
    "Purifier 0..255": (lambda: Purifier("subtract", 0.5, ESTIMATE.weights(), ESTIMATE.mean)(X * 255), "[0, 1]"),
    "Purifier NaN": (lambda: Purifier("subtract", 0.5, ESTIMATE.weights(), ESTIMATE.mean)(X * math.nan), "NaN"),
    "ASR target True": (lambda: attack_success_rate(MODEL, X, True), "target"),
    "ASR target 12": (lambda: attack_success_rate(MODEL, X, 12), "target"),
    "confusion matrix out of range": (lambda: confusion_matrix(torch.tensor([0, 11]), torch.tensor([0, 1]), 10),
                                      "predicted"),
    "L-RED num_classes 5 on 10 classes": (lambda: detect(MODEL, X, Y, num_classes=5), "num_classes"),
    "clean accuracy of one image": (lambda: clean_accuracy(MODEL, X[0], Y), "shape (N, C, H, W)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_naming_the_argument(case: str) -> None:
    call, argument = CASES[case]
    with pytest.raises(WorkbenchError) as info:
        call()
    message = str(info.value)
    assert argument in message and "\n" not in message


def test_float64_images_are_converted_not_refused() -> None:
    """Documented conversion: float64 images are evaluated as float32 (the model's dtype)."""
    assert clean_accuracy(MODEL, X.double(), Y) == clean_accuracy(MODEL, X, Y)


def test_a_restorer_that_returns_nan_is_an_error_not_an_unpurified_image() -> None:
    class NaNRestorer(MAERestorer):
        def predict(self, x: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
            return torch.full_like(x, math.nan)

    defence = BDMAE(QueryModel(MODEL), NaNRestorer(MaskedAutoencoderViT(MAE16)))
    with pytest.raises(WorkbenchError, match="the restorer returned NaN"):
        defence.purify(X[:2])


def test_names_that_become_paths_stay_inside_their_folder(tmp_path: Path) -> None:
    table = pd.DataFrame({"a": [1]})
    with pytest.raises(WorkbenchError, match="notebook must be a plain file name"):
        record_table(table, notebook="../../x", name="t", results_dir=tmp_path / "results")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep__me.json").write_text("{}")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results").symlink_to(outside)  # a results folder that leads out of the output folder
    with pytest.raises(WorkbenchError, match="outside"):
        reproduce(["quickstart"], scale="smoke", output_dir=tmp_path / "out", progress=False)
    assert (outside / "keep__me.json").is_file()  # nothing deleted there


def test_iab_generators_that_do_not_fit_are_an_error(isolated_cache: Path) -> None:
    identity = {"iab": "generators of another width"}
    key = config_key(identity)
    ArtefactStore().save("iab", key, {"pattern.weight": torch.zeros(1), "mask.weight": torch.zeros(1)}, identity, {})
    with pytest.raises(WorkbenchError, match="retrain them with get_or_train_input_aware"):
        InputAware(artefact_key=key, channels=3, generator_width=16).mask(X[:1])
