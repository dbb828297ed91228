"""The trainer: augmentation, loss goes down, configs validate, and the cache never trains twice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import needs_real_data
from workbench.core import training
from workbench.core.artefacts import ArtefactStore, config_key
from workbench.core.attacks import PoisonConfig, make_attack
from workbench.core.data import ImageDataset
from workbench.core.training import TrainConfig, augment_batch, get_or_train, new_model, train_classifier
from workbench.core.validation import WorkbenchError
from workbench.repro.restore import train_config


def test_crop_is_a_shift_of_the_padded_image_and_flip_mirrors() -> None:
    x = torch.rand(6, 3, 8, 8)
    out = augment_batch(x, "crop", torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(6):
        windows = [padded[i, :, r:r + 8, c:c + 8] for r in range(9) for c in range(9)]
        assert any(torch.equal(out[i], w) for w in windows)
    flipped = augment_batch(x, "crop_flip", torch.Generator().manual_seed(0))
    mirrored = [torch.equal(flipped[i], out[i].flip(-1)) and not torch.equal(out[i], out[i].flip(-1))
                for i in range(6)]
    assert any(mirrored) and not all(mirrored)  # same crops (same seed), some of them mirrored
    assert torch.equal(augment_batch(x, "none", torch.Generator()), x)


def test_tiny_training_run_lowers_the_loss() -> None:
    # two classes that differ only in brightness: learnable in a few steps
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(256) % 2
    images = (torch.rand(256, 3, 32, 32, generator=gen) * 100 + 30 + 100 * labels.view(-1, 1, 1, 1)).to(torch.uint8)
    data = ImageDataset("cifar10", images, labels, ("dark", "bright"))
    config = TrainConfig(dataset="cifar10", model="resnet_small", epochs=5, batch_size=32, lr=0.05, augment="none",
                         schedule="constant", label_smoothing=0.0)
    model = new_model(config)
    history = train_classifier(model, data, config, monitor=(images.float() / 255, labels), progress=False)
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    assert history[-1]["ca"] > 0.9


def test_config_validation_and_round_trip() -> None:
    config = TrainConfig(dataset="cifar10", model="wrn16_1",
                         poison=PoisonConfig(make_attack("tr_sig"), target=0, ratio=0.1, clean_label=True,
                                             ratio_of="candidates"))
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config_key(config.to_dict()) != config_key(TrainConfig(dataset="cifar10", model="wrn16_1").to_dict())
    # numbers typed as int or float, and dict options in any order, give the same key
    a = TrainConfig(dataset="cifar10", model="resnet_small", lr=1, model_options={"widths": [8, 8, 16, 16]})
    b = TrainConfig(dataset="cifar10", model="resnet_small", lr=1.0, model_options={"widths": (8, 8, 16, 16)})
    assert a == b and hash(a) == hash(b) and config_key(a.to_dict()) == config_key(b.to_dict())
    for kwargs, fragment in (({"model": "vgg"}, "unknown model 'vgg'"), ({"dataset": "svhn"}, "unknown dataset"),
                             ({"epochs": 0}, "epochs must be a positive integer"),
                             ({"lr": -1}, "lr must be a finite number > 0"),
                             ({"augment": "mixup"}, "unknown augmentation 'mixup'")):
        with pytest.raises(WorkbenchError, match=fragment):
            TrainConfig(**{"dataset": "cifar10", "model": "lenet5", **kwargs})


def test_same_config_never_trains_twice(tiny_mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtefactStore(tmp_path / "store", read_only_roots=[])
    config = TrainConfig(dataset="cifar10", model="resnet_small", epochs=1, batch_size=32, lr=0.01,
                         poison=PoisonConfig(make_attack("bdmae_badnets_colour"), target=0, ratio=0.1))
    first = get_or_train(config, store=store, progress=False)
    assert not first.loaded and first.metrics["poisoned_images"] == 19  # 10 % of 190 (200 minus 5 % holdout)
    assert {"test_ca", "test_asr", "history"} <= set(first.metrics)

    def must_not_train(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained although the artefact exists")

    monkeypatch.setattr(training, "train_classifier", must_not_train)
    second = get_or_train(config, store=store, progress=False)
    assert second.loaded and second.metrics == first.metrics
    x = torch.rand(4, 3, 32, 32)
    assert torch.allclose(second.model(x), first.model(x), atol=1e-6)

    weights = Path(second.path) / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # truncated: detected, so training happens again
    with pytest.raises(AssertionError, match="trained although"), pytest.warns(UserWarning, match="damaged"):
        get_or_train(config, store=store, progress=False)


def test_anchored_loss_is_eq_10_on_poisoned_images_only() -> None:
    from workbench.core.training import _anchored_loss
    config = TrainConfig(dataset="cifar10", model="lenet5", label_smoothing=0.0, logit_anchor=0.25,
                         poison=PoisonConfig(make_attack("bdmae_badnets_colour"), target=3, ratio=0.1))
    logits = torch.tensor([[2.0, 0, 0, 0], [0, 0, 0, 1.0], [0, 3.0, 0, 0], [0, 0, 1.0, 0]], requires_grad=True)
    y = torch.tensor([0, 3, 3, 2])  # image 2 is poisoned (relabelled to 3); image 1 is the only clean anchor
    poisoned = torch.tensor([False, False, True, False])
    loss, memo = _anchored_loss(logits, y, poisoned, config, torch.Generator().manual_seed(0), None)
    ce = torch.nn.functional.cross_entropy(logits.detach(), y, reduction="none")
    mse = ((logits[2] - logits[1]) ** 2).mean().detach()
    expected = (ce[0] + ce[1] + 0.75 * ce[2] + 0.25 * mse + ce[3]) / 4
    assert torch.allclose(loss, expected) and torch.equal(memo, logits[1].detach())
    loss.backward()
    assert logits.grad[1].abs().sum() > 0  # from its own CE only: the anchor's logits are detached
    # a batch without a clean target-class image reuses the memoised anchor
    again, _ = _anchored_loss(logits.detach()[[0, 2]], y[[0, 2]], poisoned[[0, 2]], config, torch.Generator(), memo)
    assert torch.allclose(again, (ce[0] + 0.75 * ce[2] + 0.25 * mse) / 2)


def test_restore_adaptive_settings_validate_and_keep_other_keys() -> None:
    from workbench.core.attacks import AllClassesPoison
    badnets = PoisonConfig(make_attack("bdmae_badnets_colour"), target=3, ratio=0.05)
    plain = TrainConfig(dataset="cifar10", model="lenet5", poison=badnets)
    assert "logit_anchor" not in plain.to_dict() and "all_classes_poison" not in plain.to_dict()
    for config in (TrainConfig(dataset="cifar10", model="lenet5", poison=badnets, logit_anchor=0.05),
                   TrainConfig(dataset="cifar10", model="lenet5", all_classes_poison=AllClassesPoison(seed=2))):
        assert TrainConfig.from_dict(config.to_dict()) == config
        assert config_key(config.to_dict()) != config_key(plain.to_dict())
    with pytest.raises(WorkbenchError, match="not both"):
        TrainConfig(dataset="cifar10", model="lenet5", poison=badnets, all_classes_poison=AllClassesPoison())
    with pytest.raises(WorkbenchError, match="needs a poison-label"):
        TrainConfig(dataset="cifar10", model="lenet5", logit_anchor=0.05)
    with pytest.raises(WorkbenchError, match=r"\[0, 1\)"):
        TrainConfig(dataset="cifar10", model="lenet5", poison=badnets, logit_anchor=1.0)


def test_adaptive_attacks_train(tiny_mirror: Path, tmp_path: Path) -> None:
    from workbench.core.attacks import AllClassesPoison
    store = ArtefactStore(tmp_path / "store", read_only_roots=[])
    every = get_or_train(TrainConfig(dataset="cifar10", model="lenet5", epochs=1, batch_size=32,
                                     all_classes_poison=AllClassesPoison(ratio=0.2)), store=store, progress=False)
    assert len(every.metrics["test_asr_per_class"]) == 10
    assert every.metrics["poisoned_images"] == 10 * round(0.2 * 190 / 10)  # 20 % of 190, split evenly
    anchored = get_or_train(TrainConfig(dataset="cifar10", model="lenet5", epochs=1, batch_size=32, logit_anchor=0.05,
                                        poison=PoisonConfig(make_attack("bdmae_badnets_colour"), target=3, ratio=0.1)),
                            store=store, progress=False)
    assert anchored.metrics["poisoned_images"] == 19 and "test_asr" in anchored.metrics


def test_a_diverging_training_stops_and_caches_nothing(tiny_mirror: Path, tmp_path: Path) -> None:
    """Issue 25: lr = 1e6 used to cache a model with NaN weights (test CA 10 %)."""
    store = ArtefactStore(tmp_path / "store", read_only_roots=[])
    config = TrainConfig(dataset="cifar10", model="resnet_small", epochs=2, batch_size=32, lr=1e6)
    with pytest.raises(training.TrainingDiverged, match=r"diverged in epoch 1 .*lr=1000000"):
        get_or_train(config, store=store, progress=False)
    assert not list((tmp_path / "store").glob("models/*"))  # no artefact, no temporary folder


def test_an_empty_training_set_is_refused() -> None:
    config = TrainConfig(dataset="cifar10", model="lenet5")
    empty = ImageDataset("cifar10", torch.zeros(0, 32, 32, 3, dtype=torch.uint8), torch.zeros(0, dtype=torch.long),
                         tuple(str(k) for k in range(10)))
    with pytest.raises(WorkbenchError, match=r"train is empty"):
        train_classifier(new_model(config), empty, config, progress=False)


def test_stale_weights_are_retrained_but_other_errors_are_not_swallowed(tiny_mirror: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Only weights that do not fit the architecture count as stale; e.g. a missing CUDA device is an error of its
    own (it used to be reported as "weights do not fit", and the model retrained)."""
    store = ArtefactStore(tmp_path / "store", read_only_roots=[])
    config = TrainConfig(dataset="cifar10", model="lenet5", epochs=1, batch_size=32)
    first = get_or_train(config, store=store, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(WorkbenchError, match="no CUDA device"):
            get_or_train(config, store=store, device="cuda", progress=False)
    real_new_model = training.new_model
    monkeypatch.setattr(training, "new_model", lambda c: real_new_model(TrainConfig("cifar10", "resnet_small")))
    with pytest.warns(UserWarning, match="do not fit the current lenet5 code"):
        retrained = get_or_train(config, store=store, progress=False)
    assert not retrained.loaded and retrained.path == first.path


@needs_real_data
def test_a_training_killed_after_an_epoch_resumes_there_with_the_weights_of_an_uninterrupted_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = train_config("mnist", "badnets", "smoke")  # LeNet-5, two epochs
    whole = get_or_train(config, store=ArtefactStore(tmp_path / "whole", read_only_roots=[]), device="cpu",
                         progress=False)
    store = ArtefactStore(tmp_path / "killed", read_only_roots=[])
    save_epoch = training._save_epoch

    def save_then_die(*args, **kwargs):  # the process dies right after epoch 1's state is written
        save_epoch(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_epoch", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        get_or_train(config, store=store, device="cpu", progress=False)
    monkeypatch.undo()
    checkpoint = store.checkpoint("models", whole.key)
    assert checkpoint.is_file() and store.load_by_key("models", whole.key) is None
    resumed = get_or_train(config, store=store, device="cpu", progress=False)
    assert not checkpoint.exists()  # the published artefact superseded it
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert [(r.loss, r.ca) for r in resumed.summary.history] == [(r.loss, r.ca) for r in whole.summary.history]
