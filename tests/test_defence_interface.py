"""The one-interface-per-kind layer on models the workbench did not build: a torchvision ResNet-18 for CIFAR-10, a
43-class GTSRB model and a 1-channel 28 px MNIST model, each through `workbench.defenses.create(name)`."""

import json

import pytest
import torch
import torch.nn as nn
import torchvision

import workbench
from workbench.core.validation import WorkbenchError
from workbench.defenses import Detection, Purification, Repair, Training, available, create

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
FAST = {  # every defence at its smallest, so the test checks the plumbing, not the paper's numbers
    "red-a": {"max_iterations": 5, "step": 0.05, "images_per_class": 2},
    "restore-diagnosis": {"alpha": 0.05, "per_set": 3,
                          "splitting": {"particles": 16, "survivors": 8, "passes": 1, "max_levels": 2}},
    "bdmae": {"outer_rounds": 1, "inner_masks": 1, "refine_steps": 1},
    "shrinkpad": {}, "blur": {},
    "fine-tuning": {"epochs": 1, "batch_size": 16},
    "head-replacement": {"epochs": 1, "batch_size": 16},
}


def cifar_resnet18() -> nn.Module:
    """torchvision's ResNet-18 with the usual CIFAR stem (3 x 3 first convolution, no max-pool)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    return net


def small_cnn(channels: int, classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, classes))


def images_of(classes: int, channels: int, size: int, per_class: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return torch.rand(len(labels), channels, size, size, generator=gen), labels


def test_registry_lists_every_kind_and_refuses_unknown_names():
    assert {"red-a", "red-a-prime", "red-u", "red-p", "restore-diagnosis"} <= set(available("detector"))
    assert {"bdmae", "restore", "blur", "shrinkpad", "patchcleanser", "februus"} <= set(available("purifier"))
    assert {"fine-tuning", "nad", "anp", "i-bau", "head-replacement"} <= set(available("repair"))
    assert set(available("training")) == {"trap-and-replace", "abl", "dp-sgd"}
    with pytest.raises(WorkbenchError, match="unknown defence 'bdmea'"):
        create("bdmea")
    with pytest.raises(WorkbenchError, match=r"bad configuration for defence 'fine-tuning'.*'epoch'"):
        create("fine-tuning", epoch=1)  # a misspelt field


def test_wrap_checks_the_declared_class_count():
    with pytest.raises(WorkbenchError, match="outputs 10 logits per image but num_classes=43"):
        workbench.wrap(cifar_resnet18(), num_classes=43, input_size=32)


@pytest.mark.parametrize("case", ["gtsrb-43", "mnist-grey"])
def test_every_kind_runs_on_a_foreign_model(case, tmp_path):
    channels, size, classes = (3, 32, 43) if case == "gtsrb-43" else (1, 28, 10)
    model = workbench.wrap(small_cnn(channels, classes), num_classes=classes, input_size=size, in_channels=channels)
    x, y = images_of(classes, channels, size)
    # a class-sorted slice holds one class: the class count comes from the model, so it is refused, not shrunk
    with pytest.raises(WorkbenchError, match="class 1 has 0 images"):
        create("red-a", **FAST["red-a"]).detect(model, x[y == 0], y[y == 0])
    found = create("red-a", **FAST["red-a"]).detect(model, x, y)
    assert isinstance(found, Detection) and found.class_scores.shape == (classes,) and 0 <= found.target < classes
    test = x[:4]
    for name in ("bdmae", "shrinkpad", "blur"):
        purified = create(name, **FAST[name]).purify(model, test)
        assert isinstance(purified, Purification) and purified.labels.shape == (4,)
        assert purified.images.shape == test.shape and purified.queries >= 4
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for name, config in (("fine-tuning", {}), ("head-replacement", {"split": "3"})):
        repaired = create(name, **FAST[name], **config).repair(model, (x, y))
        assert isinstance(repaired, Repair) and repaired.holdout_images == len(x)
        assert repaired.model(test).shape == (4, classes)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the input is untouched
    repaired.save(tmp_path / "repair")
    found.save(tmp_path / "detection")
    assert json.loads((tmp_path / "detection" / "result.json").read_text())["target"] == found.target
    assert (tmp_path / "repair" / "model.safetensors").stat().st_size > 0


@pytest.mark.parametrize("case", ["gtsrb-43", "mnist-grey"])
def test_restore_diagnoses_and_purifies_a_foreign_model(case):
    """REStore's clean sets need images the model classifies correctly: the untrained model's own labels."""
    channels, size, classes = (3, 32, 43) if case == "gtsrb-43" else (1, 28, 10)
    model = workbench.wrap(small_cnn(channels, classes), num_classes=classes, input_size=size, in_channels=channels)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(60, channels, size, size, generator=gen) * torch.rand(60, channels, 1, 1, generator=gen)
    y = model(x).argmax(1)
    assert len(y.unique()) >= 2  # the clean set of each class needs another class's images
    settings = {**FAST["restore-diagnosis"], "per_set": 1}
    diagnosis = create("restore-diagnosis", **settings).detect(model, x, y)
    assert diagnosis.queries > 0 and diagnosis.class_scores.shape == (classes,) and 0 <= diagnosis.target < classes
    restored = create("restore", clean_images=x, clean_labels=y, **settings).purify(model, x[:4])
    assert restored.labels.shape == (4,) and restored.details["recovery_queries"] > 0
    assert restored.queries == 4  # recovery is paid once, outside the batch's count


def test_a_torchvision_resnet18_detects_purifies_and_repairs():
    model = workbench.wrap(cifar_resnet18(), num_classes=10, input_size=32, mean=CIFAR_MEAN, std=CIFAR_STD)
    x, y = images_of(10, 3, 32, per_class=2)
    found = create("red-a", max_iterations=2, step=0.05, images_per_class=1).detect(model, x, y)
    assert found.class_scores.shape == (10,) and found.queries is None
    assert create("blur").purify(model, x[:3]).labels.shape == (3,)


def test_head_replacement_keeps_the_stem_and_resets_the_head():
    model = workbench.wrap(cifar_resnet18(), num_classes=10, input_size=32, mean=CIFAR_MEAN, std=CIFAR_STD)
    x, y = images_of(10, 3, 32, per_class=2)
    repaired = create("head-replacement", split="layer4", epochs=1, batch_size=8).repair(model, (x, y)).model
    old, new = model.state_dict(), repaired.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old if k.startswith(("model.conv1", "model.layer3")))
    assert not torch.equal(old["model.fc.weight"], new["model.fc.weight"])
    assert not torch.equal(old["model.layer4.0.conv1.weight"], new["model.layer4.0.conv1.weight"])


def test_white_box_methods_refuse_a_query_model():
    model = workbench.wrap(small_cnn(3, 10), num_classes=10, input_size=32)
    x, y = images_of(10, 3, 32)
    with pytest.raises(WorkbenchError, match="white-box"):
        create("red-a").detect(workbench.core.query.QueryModel(model), x, y)


TRAINING = {  # one short epoch per phase: the test checks that any architecture trains, not the papers' numbers
    "trap-and-replace": {"replace": {"epochs": 1, "batch_size": 16}},
    "abl": {"isolate_epochs": 1, "finetune_epochs": 1, "unlearn_epochs": 1, "isolation_ratio": 0.1},
    "dp-sgd": {},
}


@pytest.mark.parametrize("case", ["gtsrb-43", "mnist-grey"])
def test_training_time_defences_train_any_architecture(case, tmp_path):
    channels, size, classes = (3, 32, 43) if case == "gtsrb-43" else (1, 28, 10)
    model = workbench.wrap(small_cnn(channels, classes), num_classes=classes, input_size=size, in_channels=channels)
    x, y = images_of(classes, channels, size, per_class=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for name, config in TRAINING.items():
        split = {"split": "3"} if name == "trap-and-replace" else {}  # the second convolution's input
        trainer = create(name, training={"epochs": 1, "batch_size": 16}, **config, **split)
        trained = trainer.train(model, (x, y), clean_holdout=(x[::2], y[::2]), seed=3)
        assert isinstance(trained, Training) and trained.train_images == len(x) and trained.method == name
        assert trained.model(x[:4]).shape == (4, classes)
        assert trained.details["training"]["seed"] == 3 and trained.details["training"]["epochs"] == 1
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the input is untouched
        trained.save(tmp_path / name)
        assert (tmp_path / name / "model.safetensors").stat().st_size > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in trained.model.modules())  # DP-SGD: GroupNorm instead
    with pytest.raises(WorkbenchError, match="needs clean_holdout"):
        create("trap-and-replace", split="3", training={"epochs": 1}).train(model, (x, y))
    with pytest.raises(WorkbenchError, match=r"unknown training settings \['epoch'\]"):
        create("abl", training={"epoch": 1})
    with pytest.raises(WorkbenchError, match="lr must be"):
        create("dp-sgd", training={"lr": -1})


def test_trap_and_replace_traps_then_replaces_a_torchvision_resnet18_head():
    """T&R on torchvision's module names: stage 1 trains everything with the reconstruction head on layer4's input;
    stage 2 re-trains layer4 + fc only, so the stem is the stage-1 stem, bit for bit."""
    model = workbench.wrap(cifar_resnet18(), num_classes=10, input_size=32, mean=CIFAR_MEAN, std=CIFAR_STD)
    x, y = images_of(10, 3, 32, per_class=2)
    trained = create("trap-and-replace", split="layer4", training={"epochs": 1, "batch_size": 10},
                     replace={"epochs": 1, "batch_size": 10}).train(model, (x, y), clean_holdout=(x, y))
    trapped, replaced, initial = trained.result.state_dict(), trained.model.state_dict(), model.state_dict()
    stem = [k for k in replaced if k.startswith(("model.conv1", "model.layer1", "model.layer3"))]
    assert stem and all(torch.equal(trapped[k], replaced[k]) for k in stem)
    assert not torch.equal(initial["model.layer3.0.conv1.weight"], trapped["model.layer3.0.conv1.weight"])
    assert not torch.equal(trapped["model.fc.weight"], replaced["model.fc.weight"])
    assert trained.details["split"] == "layer4" and len(trained.details["history"]["replace"]) == 1


def test_cam_and_nad_take_a_torchvision_resnet18_layer_by_name():
    model = workbench.wrap(cifar_resnet18(), num_classes=10, input_size=32, mean=CIFAR_MEAN, std=CIFAR_STD)
    x, y = images_of(10, 3, 32, per_class=2)
    with pytest.raises(WorkbenchError, match="name the CAM layer"):
        create("februus").purify(model, x[:2])
    purified = create("februus", layer="layer4").purify(model, x[:2])
    assert purified.images.shape == (2, 3, 32, 32) and purified.details["layer"] == "layer4"
    declared = workbench.wrap(cifar_resnet18(), num_classes=10, input_size=32, cam_layer="layer4")
    assert create("februus").purify(declared, x[:2]).labels.shape == (2,)
    with pytest.raises(WorkbenchError, match="no module named 'layer9'"):
        workbench.wrap(cifar_resnet18(), num_classes=10, input_size=32, cam_layer="layer9")
    repaired = create("nad", teacher_epochs=1, epochs=1, batch_size=10).repair(model, (x, y))
    assert repaired.details["stages"] == ("layer2", "layer3", "layer4")  # the deepest spatial groups
