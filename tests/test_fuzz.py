"""Issue 25's fuzz suite: generated bad inputs at the public entry points (hypothesis).

Every case must end in a `WorkbenchError` whose one-line message names the argument that was wrong; a bad input
that gets through (a result) or fails inside torch (another exception) fails the test. Covered:
- every registered defence (`workbench.defenses.available()`): every numeric setting of its constructor and of its
  config dataclass, given NaN, infinities, a negative number, a string or a list;
- every registered defence's entry point (`detect`, `purify`, `repair`, `train`) given corrupted images (wrong rank,
  channels, size or dtype, NaN, values outside [0, 1], an empty batch) or corrupted labels (wrong length, out of
  range, floating point, two-dimensional);
- `workbench.core`: the metrics, `QueryModel`, a wrapped model, PGD, the MAE restorer, SSIM, every registered
  attack preset (corrupted images) and attack family (every numeric setting), `TrainConfig`'s numeric fields, the
  artefact store's names;
- the command line: every option and name of every command given generated bad values ends with exit code 2 and
  a message naming it, before any work, never a traceback;
- every widget given nothing to show.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.core.artefacts import ArtefactStore
from workbench.core.attacks import ATTACK_FAMILIES, ATTACK_PRESETS, PoisonConfig, make_attack
from workbench.core.attacks.adversarial import pgd_perturb
from workbench.core.attacks.latent import mean_latent
from workbench.core.classifier import wrap
from workbench.core.data import load_splits
from workbench.core.mae import MAEArchitecture, MAERestorer, MaskedAutoencoderViT
from workbench.core.metrics import (
    attack_success_rate,
    backdoor_accuracy,
    clean_accuracy,
    confusion_matrix,
    patch_position_asr,
    predict_labels,
)
from workbench.core.models import build_model
from workbench.core.query import QueryModel
from workbench.core.runtime import make_generator
from workbench.core.training import TrainConfig
from workbench.core.validation import WorkbenchError
from workbench.defenses import available, create, describe, lred, restore, trap_replace
from workbench.defenses.baselines.februus import class_activation_map
from workbench.defenses.bdmae import ssim_map
from workbench.repro.cli import main
from workbench.widgets.bdmae import trigger_score_explorer
from workbench.widgets.lred import annealing_player, detection_view
from workbench.widgets.matrix import matrix_explorer
from workbench.widgets.restore import tau_rho_explorer, trigger_gallery
from workbench.widgets.trap_replace import feature_scatter_explorer, reconstruction_viewer

FUZZ = settings(max_examples=40, deadline=None, database=None,  # no .hypothesis/ folder in the checkout
                suppress_health_check=[HealthCheck.function_scoped_fixture])
NOT_NUMBERS = (math.nan, math.inf, -math.inf, "1", [1])
MAE32 = MAEArchitecture(img_size=32, patch_size=4, in_chans=3, embed_dim=16, depth=1, num_heads=2,
                        decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def _numeric_settings(name: str) -> list[str]:
    """The numeric keyword settings of a registered defence: its constructor's and its config dataclass's."""
    cls = describe(name).factory
    defaults = {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
                if p.default is not inspect.Parameter.empty}
    config_class = getattr(cls, "config_class", None)
    if dataclasses.is_dataclass(config_class):
        defaults.update({f.name: f.default for f in dataclasses.fields(config_class)
                         if f.default is not dataclasses.MISSING})
    return sorted(k for k, v in defaults.items() if isinstance(v, (int, float)) and not isinstance(v, bool))


DEFENCE_SETTINGS = [(name, setting) for name in available() for setting in _numeric_settings(name)]
RESTORE_DATA = {"clean_images": torch.rand(4, 3, 32, 32), "clean_labels": torch.arange(4)}


def _refused(call: Callable[[], object], argument: str | tuple[str, ...]) -> None:
    """`call()` raises a one-line WorkbenchError naming `argument` (or one of several names)."""
    with pytest.raises(WorkbenchError) as info:
        call()
    message = str(info.value)
    names = (argument,) if isinstance(argument, str) else argument
    assert "\n" not in message and any(n in message for n in names), message


@pytest.mark.parametrize(("name", "setting"), DEFENCE_SETTINGS)
@settings(max_examples=8, deadline=None, database=None)
@given(bad=st.sampled_from((*NOT_NUMBERS, -1)))
def test_defence_settings_refuse_non_numbers(name: str, setting: str, bad: Any) -> None:
    if bad == -1 and setting == "seed":
        return  # any integer is a seed
    extra = RESTORE_DATA if name == "restore" else {}
    _refused(lambda: create(name, **extra, **{setting: bad}), setting)


# --- entry points with corrupted inputs -------------------------------------------------------------------------

def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lenet5", in_channels=3, num_classes=10, image_size=32).eval()


MODEL = _model()
IMAGES = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
LABELS = torch.arange(10)

IMAGE_CORRUPTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "one image without batch dimension": lambda x: x[0],
    "one channel": lambda x: x[:, :1],
    "16x16 pixels": lambda x: x[:, :, :16, :16],
    "uint8": lambda x: (x * 255).to(torch.uint8),
    "0..255 floats": lambda x: x * 255,
    "negative values": lambda x: x - 0.5,
    "a NaN": lambda x: x.clone().index_put_((torch.tensor([0]),), torch.tensor(math.nan)),
    "empty batch": lambda x: x[:0],
}
LABEL_CORRUPTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "one label": lambda y: y[:1],
    "out of range": lambda y: y + 12,
    "negative": lambda y: y - 20,
    "floating point": lambda y: y.float(),
    "two-dimensional": lambda y: y[:, None],
}


def _entry_point(name: str, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], object]:
    kind = describe(name).kind
    if kind == "detector":
        return lambda: create(name).detect(MODEL, images, labels)
    if kind == "purifier":
        if name == "restore":
            return lambda: create(name, clean_images=images, clean_labels=labels).purify(MODEL, IMAGES)
        return lambda: create(name).purify(MODEL, images)
    if kind == "repair":
        return lambda: create(name).repair(MODEL, (images, labels))
    return lambda: create(name).train(MODEL, (images, labels))


@FUZZ
@given(name=st.sampled_from(available()), corruption=st.sampled_from(list(IMAGE_CORRUPTIONS)))
def test_entry_points_refuse_corrupted_images(name: str, corruption: str) -> None:
    images = IMAGE_CORRUPTIONS[corruption](IMAGES)
    _refused(_entry_point(name, images, LABELS[:len(images)] if images.ndim == 4 else LABELS), ("images", "holdout"))


LABELLED = [name for name in available() if describe(name).kind != "purifier" or name == "restore"]


@FUZZ
@given(name=st.sampled_from(LABELLED), corruption=st.sampled_from(list(LABEL_CORRUPTIONS)))
def test_entry_points_refuse_corrupted_labels(name: str, corruption: str) -> None:
    _refused(_entry_point(name, IMAGES, LABEL_CORRUPTIONS[corruption](LABELS)), "labels")


# --- workbench.core ------------------------------------------------------------------------------------------------

@FUZZ
@given(corruption=st.sampled_from(list(IMAGE_CORRUPTIONS)),
       metric=st.sampled_from(["clean_accuracy", "backdoor_accuracy", "attack_success_rate", "query"]))
def test_metrics_and_queries_refuse_corrupted_images(corruption: str, metric: str) -> None:
    images = IMAGE_CORRUPTIONS[corruption](IMAGES)
    labels = LABELS[:len(images)] if images.ndim == 4 else LABELS
    calls = {"clean_accuracy": lambda: clean_accuracy(MODEL, images, labels),
             "backdoor_accuracy": lambda: backdoor_accuracy(MODEL, images, labels),
             "attack_success_rate": lambda: attack_success_rate(MODEL, images, 0),
             "query": lambda: QueryModel(MODEL, "logits").logits(images)}
    _refused(calls[metric], "images")


@FUZZ
@given(corruption=st.sampled_from(list(LABEL_CORRUPTIONS)))
def test_metrics_refuse_corrupted_labels(corruption: str) -> None:
    labels = LABEL_CORRUPTIONS[corruption](LABELS)
    _refused(lambda: clean_accuracy(MODEL, IMAGES, labels), "labels")
    _refused(lambda: confusion_matrix(LABELS, labels, 10), ("true", "predicted"))


@FUZZ
@given(target=st.sampled_from([True, -1, 10, 12, 1.5, "0", None]))
def test_attack_success_rate_refuses_bad_targets(target: Any) -> None:
    _refused(lambda: attack_success_rate(MODEL, IMAGES, target), "target")


@FUZZ
@given(preset=st.sampled_from(sorted(ATTACK_PRESETS)), corruption=st.sampled_from(list(IMAGE_CORRUPTIONS)))
def test_attacks_refuse_corrupted_images(preset: str, corruption: str) -> None:
    images = IMAGE_CORRUPTIONS[corruption](IMAGES)
    if corruption in ("one channel", "16x16 pixels", "empty batch"):
        return  # valid inputs for an attack (it adapts to the image's size and channels)
    _refused(lambda: make_attack(preset)(images), "images")


TRAIN_NUMBERS = [f.name for f in dataclasses.fields(TrainConfig)
                 if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)]


@FUZZ
@given(field=st.sampled_from(TRAIN_NUMBERS), bad=st.sampled_from(NOT_NUMBERS))
def test_train_config_refuses_non_numbers(field: str, bad: Any) -> None:
    _refused(lambda: TrainConfig("cifar10", "lenet5", **{field: bad}), field)


@FUZZ
@given(name=st.sampled_from(["", ".", "..", "../x", "/abs", "a/b", "a\\b", "a\0b"]),
       which=st.sampled_from(["kind", "key"]))
def test_artefact_store_names_stay_inside_their_folder(tmp_path_factory: pytest.TempPathFactory, name: str,
                                                       which: str) -> None:
    store = ArtefactStore(tmp_path_factory.mktemp("store"), read_only_roots=[])
    address = {"kind": "models", "key": "0123abcd"} | {which: name}
    _refused(lambda: store.save(address["kind"], address["key"], {"w": torch.zeros(1)}, {}, {}),
             f"artefact {which}")


@pytest.mark.parametrize(("argv", "argument"), [
    (["bench", "bdmae", "--batch", "0"], "batch"),
    (["bench", "bdmae", "--batch", "-3"], "batch"),
    (["bench", "bdmae", "--loop-images", "0"], "loop_images"),
    (["matrix", "--scale", "smoke", "--defences", "no-such-defence"], "no-such-defence"),
    (["matrix", "no-such-model", "--scale", "smoke"], "no-such-model"),
    (["reproduce", "no-such-paper", "--scale", "smoke"], "no-such-paper"),
    (["bench", "bdmae", "--device", "tpu"], "device"),
])
def test_cli_refuses_bad_arguments_with_a_message(argv: list[str], argument: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and argument in error and "Traceback" not in error


NOT_POSITIVE = st.integers(max_value=0).map(str) | st.sampled_from(["1.5", "x", "", "nan", "1e3"])
UNKNOWN = st.text(alphabet="abcdefghij-", min_size=1, max_size=8).map(lambda text: "no-such-" + text)
BAD_DEVICES = st.sampled_from(["tpu", "gpu", "cuda:x", "", "CPU"]) | UNKNOWN
CLI_OPTIONS: dict[str, tuple[list[str], Any]] = {  # the command before the bad value, and the bad values
    "bench --batch": (["bench", "bdmae", "--batch"], NOT_POSITIVE),
    "bench --loop-images": (["bench", "bdmae", "--loop-images"], NOT_POSITIVE),
    "bench --device": (["bench", "bdmae", "--device"], BAD_DEVICES),
    "bench train --batch": (["bench", "train", "--batch"], NOT_POSITIVE),
    "bench train --models": (["bench", "train", "--models"], UNKNOWN),
    "bench train --steps": (["bench", "train", "--steps"], NOT_POSITIVE),
    "bench train --device": (["bench", "train", "--device"], BAD_DEVICES),
    "mae --device": (["mae", "--device"], BAD_DEVICES),
    "diffusion --device": (["diffusion", "--device"], BAD_DEVICES),
    "matrix --device": (["matrix", "--scale", "smoke", "--device"], BAD_DEVICES),
    "matrix --seed": (["matrix", "--scale", "smoke", "--seed"], st.sampled_from(["1.5", "x", "", "nan"])),
    "matrix --scale": (["matrix", "--scale"], UNKNOWN),
    "matrix --defences": (["matrix", "--scale", "smoke", "--defences"], UNKNOWN),
    "matrix models": (["matrix", "--scale", "smoke"], UNKNOWN),
    "reproduce papers": (["reproduce", "--scale", "smoke"], UNKNOWN),
    "reproduce --scale": (["reproduce", "--scale"], UNKNOWN),
    "datasets --root": (["datasets", "--root"], UNKNOWN.map(lambda name: f"/nonexistent/{name}")),
    "jobs papers": (["jobs", "plan", "--scale", "smoke"], UNKNOWN),
    "jobs --executor": (["jobs", "run", "--scale", "smoke", "--executor"], UNKNOWN),
    "jobs --device": (["jobs", "run", "quickstart", "--scale", "smoke", "--device"], BAD_DEVICES),
    "jobs --threads": (["jobs", "run", "--scale", "smoke", "--threads"], NOT_POSITIVE),
    "jobs --workers": (["jobs", "run", "--scale", "smoke", "--executor", "ray", "--workers"], NOT_POSITIVE),
    "jobs --retries": (["jobs", "run", "--scale", "smoke", "--executor", "ray", "--retries"],
                       st.integers(max_value=-1).map(str) | st.sampled_from(["1.5", "x", ""])),
    "jobs --timeout-min": (["jobs", "run", "--scale", "smoke", "--executor", "slurm", "--timeout-min"], NOT_POSITIVE),
    "jobs --cluster": (["jobs", "run", "--scale", "smoke", "--executor", "slurm", "--cluster"], UNKNOWN),
    "jobs --partition": (["jobs", "run", "--scale", "smoke", "--partition"], st.sampled_from(["gpu", "a100"])),
}


@pytest.mark.parametrize("option", list(CLI_OPTIONS))
@settings(max_examples=5, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_cli_option_refuses_bad_values(option: str, data: st.DataObject,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Every command-line option and name given a bad value exits with code 2 and a message naming the option or
    the value (argparse's own for types and choices, the workbench's `error: ...` for the rest), before any work."""
    command, values = CLI_OPTIONS[option]
    bad = data.draw(values, label="value")
    capsys.readouterr()
    try:
        code = main([*command, bad])
    except SystemExit as exit_:  # argparse refused the type or choice
        code = exit_.code
    error = capsys.readouterr().err
    assert code == 2, (option, bad, error)
    assert "Traceback" not in error and (option.split()[-1].lstrip("-") in error or (bad and bad in error)), error


def _attack_numbers() -> list[tuple[str, str]]:
    """(family, numeric field) of every registered attack family."""
    return [(family, f.name) for family, cls in sorted(ATTACK_FAMILIES.items()) for f in dataclasses.fields(cls)
            if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)]


@pytest.mark.parametrize(("family", "field"), _attack_numbers())
@settings(max_examples=6, deadline=None, database=None)
@given(bad=st.sampled_from(NOT_NUMBERS))
def test_attack_settings_refuse_non_numbers(family: str, field: str, bad: Any) -> None:
    _refused(lambda: make_attack(family, **{field: bad}), field)


CORE_IMAGE_FUNCTIONS: dict[str, Callable[[torch.Tensor], object]] = {
    "predict_labels": lambda x: predict_labels(MODEL, x),
    "patch_position_asr": lambda x: patch_position_asr(MODEL, x, torch.ones(3, 3, 3), 0),
    "pgd_perturb": lambda x: pgd_perturb(MODEL, x, LABELS[:len(x)], epsilon=0.03, steps=1),
    "MAERestorer.restore": lambda x: MAERestorer(MaskedAutoencoderViT(MAE32)).restore(
        x, torch.ones(len(x), 64, dtype=torch.bool)),
    "ssim_map": lambda x: ssim_map(x, x),
    "wrap(...) queried": lambda x: QueryModel(wrap(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(10)),
                                                   num_classes=10, input_size=32)).labels(x),
}


@FUZZ
@given(function=st.sampled_from(list(CORE_IMAGE_FUNCTIONS)), corruption=st.sampled_from(list(IMAGE_CORRUPTIONS)))
def test_core_image_functions_refuse_corrupted_images(function: str, corruption: str) -> None:
    images = IMAGE_CORRUPTIONS[corruption](IMAGES)
    if function in ("ssim_map", "MAERestorer.restore") and corruption in ("one channel", "empty batch", "16x16 pixels"):
        return  # valid for these (any channel count and size: the MAE resizes; an empty batch, an empty result)
    _refused(lambda: CORE_IMAGE_FUNCTIONS[function](images), ("images", "x"))


ATTACK = make_attack("bdmae_badnets_colour")
CORE_SETTINGS: dict[str, tuple[Callable[[Any], object], str]] = {
    "PoisonConfig ratio": (lambda bad: PoisonConfig(ATTACK, target=0, ratio=bad), "ratio"),
    "PoisonConfig target": (lambda bad: PoisonConfig(ATTACK, target=bad, ratio=0.1), "target"),
    "PoisonConfig noise_ratio": (lambda bad: PoisonConfig(ATTACK, target=0, ratio=0.1, noise_ratio=bad),
                                 "noise_ratio"),
    "PoisonConfig seed": (lambda bad: PoisonConfig(ATTACK, target=0, ratio=0.1, seed=bad), "seed"),
    "QueryModel batch_size": (lambda bad: QueryModel(MODEL, batch_size=bad), "batch_size"),
    "QueryModel num_classes": (lambda bad: QueryModel(MODEL, num_classes=bad), "num_classes"),
    "MAERestorer batch_size": (lambda bad: MAERestorer(MaskedAutoencoderViT(MAE32), batch_size=bad), "batch_size"),
    "wrap num_classes": (lambda bad: wrap(torch.nn.Linear(2, 2), num_classes=bad, input_size=32), "num_classes"),
    "wrap input_size": (lambda bad: wrap(torch.nn.Linear(2, 2), num_classes=10, input_size=bad), "input_size"),
    "build_model num_classes": (lambda bad: build_model("lenet5", in_channels=3, num_classes=bad, image_size=32),
                                "num_classes"),
    "load_splits holdout_fraction": (lambda bad: load_splits("cifar10", holdout_fraction=bad), "holdout_fraction"),
    "load_splits train_size": (lambda bad: load_splits("cifar10", train_size=bad), "train_size"),
    "make_generator seed": (lambda bad: make_generator(bad), "seed"),
}


@FUZZ
@given(case=st.sampled_from(list(CORE_SETTINGS)), bad=st.sampled_from(NOT_NUMBERS))
def test_core_settings_refuse_non_numbers(case: str, bad: Any) -> None:
    build, argument = CORE_SETTINGS[case]
    _refused(lambda: build(bad), argument)


# --- the methods' own entry functions (below the registered interface) ----------------------------------------------

SETUP = restore.RestoreSetup("PI", 0.2)
TINY_SPLITTING = {"particles": 4, "survivors": 2, "passes": 1, "max_levels": 2}
DEFENCE_FUNCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], object]] = {
    "lred.detect": lambda x, y: lred.detect(MODEL, x, y, num_classes=10),
    "lred.estimate_patterns": lambda x, y: lred.estimate_patterns(MODEL, x, y, torch.tensor([0]),
                                                                  torch.ones(1, 10, dtype=torch.bool)),
    "lred.detection_images": lambda x, y: lred.detection_images(x, y, 1, 10),
    "restore.clean_sets": lambda x, y: restore.clean_sets(QueryModel(MODEL), x, y, [0], per_set=1),
    "restore.calibrate_alpha": lambda x, y: restore.calibrate_alpha(QueryModel(MODEL), "PI", x, y),
    "restore.diagnose": lambda x, y: restore.diagnose(
        QueryModel(MODEL, "probs"), x, y, SETUP, classes=[0], per_set=1,
        config=restore.splitting_config(SETUP, (3, 32, 32), **TINY_SPLITTING)),
    "restore.recovered_asr": lambda x, y: restore.recovered_asr(QueryModel(MODEL), SETUP, torch.zeros(2, 3, 32, 32),
                                                                x, y, 0),
    "restore.select_purifier": lambda x, y: restore.select_purifier(QueryModel(MODEL), ESTIMATE, x, y),
    "restore.estimate_trigger": lambda x, y: restore.estimate_trigger(SETUP, torch.zeros(2, 3, 32, 32), x),
    "trap_replace.stem_features": lambda x, y: trap_replace.stem_features(MODEL, x),
    "trap_replace.scatters_by_source": lambda x, y: trap_replace.scatters_by_source(MODEL, x, y, x, 0),
    "februus.class_activation_map": lambda x, y: class_activation_map(MODEL, x),
    "latent.mean_latent": lambda x, y: mean_latent(MODEL, x, MODEL.default_split),
}
ESTIMATE = restore.TriggerEstimate(mean=torch.full((3, 32, 32), 0.1), snr=torch.full((3, 32, 32), 3.0))


@FUZZ
@given(function=st.sampled_from(list(DEFENCE_FUNCTIONS)), corruption=st.sampled_from(list(IMAGE_CORRUPTIONS)))
def test_defence_functions_refuse_corrupted_images(function: str, corruption: str) -> None:
    if function == "lred.detection_images" and corruption in ("one channel", "16x16 pixels", "uint8"):
        return  # valid: it only draws from the caller's set (uint8 is its documented conversion)
    images = IMAGE_CORRUPTIONS[corruption](IMAGES)
    labels = LABELS[:len(images)] if images.ndim == 4 else LABELS
    _refused(lambda: DEFENCE_FUNCTIONS[function](images, labels), ("images", "x", "clean"))


@FUZZ
@given(function=st.sampled_from([f for f in DEFENCE_FUNCTIONS if not f.endswith(("stem_features", "activation_map",
                                                                                "mean_latent", "estimate_trigger"))]),
       corruption=st.sampled_from(list(LABEL_CORRUPTIONS)))
def test_defence_functions_refuse_corrupted_labels(function: str, corruption: str) -> None:
    _refused(lambda: DEFENCE_FUNCTIONS[function](IMAGES, LABEL_CORRUPTIONS[corruption](LABELS)), ("labels", "y"))


# --- widgets -------------------------------------------------------------------------------------------------------

CLASSES = [str(k) for k in range(10)]
WIDGETS_WITH_NOTHING_TO_SHOW: dict[str, Callable[[], object]] = {
    "trigger_score_explorer": lambda: trigger_score_explorer({}, {}, CLASSES),
    "annealing_player": lambda: annealing_player({}, CLASSES),
    "detection_view": lambda: detection_view({}, CLASSES),
    "matrix_explorer": lambda: matrix_explorer([], "."),
    "tau_rho_explorer": lambda: tau_rho_explorer({}, CLASSES),
    "trigger_gallery": lambda: trigger_gallery({}),
    "feature_scatter_explorer": lambda: feature_scatter_explorer([]),
    "reconstruction_viewer": lambda: reconstruction_viewer({}, {}),
}


@pytest.mark.parametrize("widget", list(WIDGETS_WITH_NOTHING_TO_SHOW))
def test_widgets_refuse_empty_collections(widget: str) -> None:
    """A widget given nothing to show says so (the control it cannot fill, or the argument), never IndexError."""
    _refused(WIDGETS_WITH_NOTHING_TO_SHOW[widget], ("no options for the", "give at least one"))
