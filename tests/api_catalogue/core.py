"""Fuzz catalogue entries for `workbench.core` (see tests/api_catalogue/__init__.py)."""

from __future__ import annotations

import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel

from tests.api_catalogue import Example, dataset, images, labels, model
from workbench.core import (
    artefacts,
    backdoorbench,
    classifier,
    data,
    diffusion,
    diffusion_training,
    mae,
    mae_training,
    metrics,
    models,
    preact_resnet,
    pretraining,
    query,
    runtime,
    scales,
    storage,
    training,
    validation,
)
from workbench.core.attacks import (
    input_aware,
    patches,
    poisoning,
)

MAE32 = mae.MAEArchitecture(img_size=32, patch_size=4, in_chans=3, embed_dim=16, depth=1, num_heads=2,
                            decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
MICRO_UNET = (("sample_size", 16), ("in_channels", 3), ("out_channels", 3), ("layers_per_block", 1),
              ("block_out_channels", (8, 16)), ("norm_num_groups", 4),
              ("down_block_types", ("DownBlock2D", "DownBlock2D")), ("up_block_types", ("UpBlock2D", "UpBlock2D")))


def _store() -> artefacts.ArtefactStore:
    return artefacts.ArtefactStore(tempfile.mkdtemp(prefix="fuzz-store-"), read_only_roots=[])


def _recipe(**settings: object) -> training.TrainConfig:
    """A LeNet-5 recipe on 40 CIFAR-10 images, one epoch."""
    return training.TrainConfig("cifar10", "lenet5", train_size=40, test_size=20, epochs=1, batch_size=20,
                                **settings)


def _checkpoint() -> Path:
    """A checkpoint file `save_checkpoint` wrote for the recipe {"epochs": 2}."""
    path = Path(tempfile.mkdtemp()) / "state.pt"
    storage.save_checkpoint(path, {"epochs": 2}, {"epochs": 1}, torch.Generator(), torch.device("cpu"))
    return path


def _attack() -> patches.BadNets:
    return patches.BadNets(size=3)


def _diffusion() -> diffusion.Diffusion:
    torch.manual_seed(0)
    return diffusion.Diffusion(UNet2DModel(**dict(MICRO_UNET)).eval(),
                               DDPMScheduler(num_train_timesteps=1000), 1.0)


def _mae() -> mae.MaskedAutoencoderViT:
    torch.manual_seed(0)
    return mae.MaskedAutoencoderViT(MAE32).eval()


def _saved_mae_folder() -> str:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-mae-")) / "mae.pth"
    torch.save({"model": _mae().state_dict()}, folder)
    return str(folder)


def _saved_diffusion_folder() -> str:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-diffusion-"))
    unet = UNet2DModel(**dict(MICRO_UNET))
    unet.save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    return str(folder)


def _optimizer_for(net: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(net.parameters(), lr=0.01)


def _saved_artefact() -> artefacts.Artefact:
    store = _store()
    return store.save("models", "0123abcd", {"w": torch.zeros(2)}, {"a": 1}, {})


def _resumable() -> dict[str, object]:
    net = torch.nn.Linear(2, 1)
    return {"model": net, "optimizer": _optimizer_for(net), "steps": 2, "lr_at": lambda step: 0.01,
            "batch_loss": lambda: net(torch.ones(1, 2)).sum(), "replay": lambda: None,
            "state_file": Path(tempfile.mkdtemp()) / "state.safetensors", "recipe": {"a": 1}, "desc": "fuzz",
            "progress": False, "every": 1}


def _backdoorbench_record() -> str:
    """A BackdoorBench v2 record folder (a PreAct-ResNet-18's `attack_result.pt`, no poisoned test set)."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-bb-")) / "record"
    folder.mkdir()
    torch.manual_seed(0)
    torch.save({"model_name": "preactresnet18", "num_classes": 10,
                "model": preact_resnet.PreActResNet18(10).state_dict(), "data_path": "./data/cifar10",
                "img_size": (32, 32, 3), "clean_data": "cifar10", "bd_test": None}, folder / "attack_result.pt")
    return str(folder / "attack_result.pt")


def _generator() -> input_aware.TriggerGenerator:
    torch.manual_seed(0)
    return input_aware.TriggerGenerator(3, 3, width=4)


def _input_aware_config() -> input_aware.InputAwareConfig:
    return input_aware.InputAwareConfig(train=_recipe(), mask_epochs=1, generator_width=4)


def _input_aware_training() -> dict[str, object]:
    net = model()
    return {"config": _input_aware_config(), "classifier": net, "train_images": images(20),
            "train_labels": labels(20), "augment": lambda x, gen: x, "optimizer": _optimizer_for(net),
            "lr_at": lambda step: 0.01, "device": torch.device("cpu"), "progress": False}


def _splits() -> data.DataSplits:
    return data.load_splits("cifar10", train_size=40, test_size=20)


def _poisoned() -> poisoning.PoisonedDataset:
    return poisoning.poison_dataset(dataset(), poisoning.PoisonConfig(_attack(), target=0, ratio=0.1))


def _head(net: torch.nn.Module) -> list[torch.nn.Module]:
    return classifier.head_modules(net, net.default_split)


def _enter_capture(model: torch.nn.Module, name: str, at: str = "input") -> list[torch.Tensor]:
    """`capture` is a context manager: its checks run when the block is entered."""
    with classifier.capture(model, name, at=at) as recorded:
        model(images(2))
    return recorded


EXAMPLES: dict[str, Example] = {
    # --- artefacts
    "core.artefacts.config_key": Example(artefacts.config_key, lambda: {"config": {"a": 1}}),
    "core.artefacts.Artefact": Example(artefacts.Artefact, lambda: {
        "key": "k", "tensors": {}, "config": {}, "metrics": {}, "path": Path(".")}, record=True),
    "core.artefacts.ArtefactStore": Example(artefacts.ArtefactStore, lambda: {
        "root": tempfile.mkdtemp(), "read_only_roots": []}),
    "core.artefacts.get_or_compute": Example(artefacts.get_or_compute, lambda: {
        "store": _store(), "kind": "models", "key": "0123abcd", "identity": {"a": 1},
        "compute": lambda: (1, {"w": torch.zeros(1)}, {}), "restore": lambda found: 1},
        components=("kind", "key"), skip=("compute", "restore")),  # callables: the caller's own code
    "core.artefacts.restore_state": Example(artefacts.restore_state, lambda: {
        "module": torch.nn.Linear(2, 1), "tensors": torch.nn.Linear(2, 1).state_dict(), "fits": "a linear layer"}),
    # --- BackdoorBench records
    "core.backdoorbench.PoisonedTestSet": Example(backdoorbench.PoisonedTestSet, lambda: {
        "paths": [], "labels": torch.zeros(0, dtype=int), "bd_labels": torch.zeros(0, dtype=int),
        "original_index": torch.zeros(0, dtype=int), "image_size": (3, 32, 32)}, record=True),
    "core.backdoorbench.BackdoorBenchRecord": Example(backdoorbench.BackdoorBenchRecord, lambda: {
        "model": classifier.wrap(model(), num_classes=10, input_size=32), "model_name": "lenet5", "num_classes": 10,
        "dataset": "cifar10", "image_size": (3, 32, 32), "poisoned_test": None}, record=True),
    "core.backdoorbench.load_backdoorbench": Example(backdoorbench.load_backdoorbench, lambda: {
        "path": _backdoorbench_record()}, paths=("path",)),
    # --- classifiers
    "core.classifier.WrappedClassifier": Example(classifier.WrappedClassifier, lambda: {
        "model": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)),
        "normalize": models.Normalize((0.5,) * 3, (0.5,) * 3), "input_shape": (3, 32, 32), "num_classes": 10}),
    "core.classifier.wrap": Example(classifier.wrap, lambda: {
        "model": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)), "num_classes": 10,
        "input_size": 32}),
    "core.classifier.input_shape_of": Example(classifier.input_shape_of, lambda: {"model": model()}),
    "core.classifier.num_classes_of": Example(classifier.num_classes_of, lambda: {"model": model(),
                                                                                  "num_classes": 10}),
    "core.classifier.check_model_images": Example(classifier.check_model_images, lambda: {
        "model": model(), "images": images(2)}, images=("images",)),
    "core.classifier.check_classifier": Example(classifier.check_classifier, lambda: {
        "model": model(), "images": images(), "labels": labels(), "num_classes": 10},
        images=("images",), labels=("labels",)),
    "core.classifier.resolve_split": Example(classifier.resolve_split, lambda: {"model": model(), "split": "fc1"},
                                             names=("split",)),
    "core.classifier.capture": Example(_enter_capture, lambda: {"model": model(), "name": "fc1"},
                                       names=("name", "at"), public=classifier.capture),
    "core.classifier.head_modules": Example(classifier.head_modules, lambda: {"model": model(), "split": "fc1"},
                                            names=("split",)),
    "core.classifier.FrozenStem": Example(classifier.FrozenStem, lambda: (lambda net: {
        "model": net, "head": _head(net)})(model())),
    # --- data
    "core.data.DatasetSpec": Example(data.DatasetSpec, lambda: {
        "name": "x", "channels": 3, "image_size": 32, "class_names": ("a",), "mean": (0.5,) * 3, "std": (0.5,) * 3,
        "mirror_format": "npz"}, record=True),
    "core.data.dataset_spec": Example(data.dataset_spec, lambda: {"name": "cifar10"}, names=("name",),
                                      mentions={"name": ("dataset",)}),
    "core.data.ImageDataset": Example(data.ImageDataset, lambda: {
        "name": "cifar10", "images": dataset().images, "labels": labels(20), "class_names": tuple("abcdefghij")},
        labels=("labels",)),
    "core.data.load_split": Example(data.load_split, lambda: {"name": "mnist", "split": "test"},
                                    names=("name", "split"), mentions={"name": ("dataset",)}),
    "core.data.DataSplits": Example(data.DataSplits, lambda: {
        "train": dataset(), "holdout": dataset(), "test": dataset(), "train_indices": torch.arange(20),
        "holdout_indices": torch.arange(20), "test_indices": torch.arange(20)}, record=True),
    "core.data.stratified_subset": Example(data.stratified_subset, lambda: {
        "labels": labels(20), "size": 10, "generator": torch.Generator()}, labels=("labels",),
        valid={"labels": ("too few", "out of range")}),  # any number of labels of any classes
    "core.data.load_splits": Example(data.load_splits, lambda: {"name": "cifar10", "train_size": 40,
                                                                "test_size": 20}, names=("name",),
                                     mentions={"name": ("dataset",)}),
    "core.data.describe_datasets": Example(data.describe_datasets),
    "core.data.check_dataset_names": Example(data.check_dataset_names, lambda: {"names": ("mnist", "cifar10")},
                                             names=("names",), mentions={"names": ("datasets",)}),
    # --- diffusion
    "core.diffusion.Diffusion": Example(diffusion.Diffusion, lambda: {
        "unet": _diffusion().unet, "scheduler": DDPMScheduler(num_train_timesteps=1000)}),
    "core.diffusion.load_diffusion": Example(diffusion.load_diffusion, lambda: {"folder": _saved_diffusion_folder()},
                                             paths=("folder",)),
    "core.diffusion_training.DiffusionTrainConfig": Example(diffusion_training.DiffusionTrainConfig,
                                                            names=("datasets",), signed=("seed", "split_seed")),
    "core.diffusion_training.train_diffusion": Example(diffusion_training.train_diffusion, lambda: {
        "config": diffusion_training.DiffusionTrainConfig(unet=MICRO_UNET, steps=2, batch_size=4, warmup_steps=1),
        "device": "cpu", "progress": False}, names=("device",)),
    "core.diffusion_training.held_out_denoising_error": Example(diffusion_training.held_out_denoising_error, lambda: {
        "diffusion": _diffusion(), "images": 4}, names=("dataset",), signed=("seed", "split_seed")),
    "core.diffusion_training.load_workbench_diffusion": Example(diffusion_training.load_workbench_diffusion, lambda: {
        "device": "cpu"}, names=("device",)),
    "core.diffusion_training.save_workbench_diffusion": Example(diffusion_training.save_workbench_diffusion, lambda: {
        "diffusion": _diffusion(), "config": diffusion_training.DiffusionTrainConfig(unet=MICRO_UNET),
        "metrics": {}, "store": _store()}),
    # --- MAE
    "core.mae.MAEArchitecture": Example(mae.MAEArchitecture, lambda: {
        "img_size": 32, "patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2, "decoder_embed_dim": 16,
        "decoder_depth": 1, "decoder_num_heads": 2}),
    "core.mae.MaskedAutoencoderViT": Example(mae.MaskedAutoencoderViT, lambda: {"arch": MAE32}),
    "core.mae.random_token_masks": Example(mae.random_token_masks, lambda: {
        "n": 2, "num_tokens": 64, "ratio": 0.5, "generator": torch.Generator()}),
    "core.mae.MAERestorer": Example(mae.MAERestorer, lambda: {"mae": _mae()}),
    "core.mae.load_official_mae": Example(mae.load_official_mae, lambda: {"path": _saved_mae_folder(),
                                                                          "arch": MAE32}, paths=("path",)),
    "core.mae.neighbours4": Example(mae.neighbours4, lambda: {"grid": 4}),
    "core.mae_training.MAETrainConfig": Example(mae_training.MAETrainConfig, names=("datasets",),
                                                signed=("seed", "split_seed")),
    "core.mae_training.training_images": Example(mae_training.training_images, lambda: {"datasets": ("mnist",)},
                                                 names=("datasets",), signed=("split_seed",)),
    "core.mae_training.train_mae": Example(mae_training.train_mae, lambda: {
        "config": mae_training.MAETrainConfig(arch=MAE32, datasets=("mnist",), steps=2, batch_size=4,
                                              warmup_steps=1), "device": "cpu", "progress": False},
        names=("device",)),
    "core.mae_training.held_out_evaluation": Example(mae_training.held_out_evaluation, lambda: {
        "mae": _mae(), "datasets": ("mnist",), "images": 4, "examples": 2}, names=("datasets",),
        signed=("seed", "split_seed")),
    "core.mae_training.load_workbench_mae": Example(mae_training.load_workbench_mae, lambda: {"device": "cpu"},
                                                    names=("device",)),
    "core.mae_training.save_workbench_mae": Example(mae_training.save_workbench_mae, lambda: {
        "mae": _mae(), "config": mae_training.MAETrainConfig(arch=MAE32), "metrics": {}, "store": _store()}),
    # --- metrics
    "core.metrics.predict_labels": Example(metrics.predict_labels, lambda: {"classifier": model(), "x": images()},
                                           images=("x",)),
    "core.metrics.clean_accuracy": Example(metrics.clean_accuracy,
                                           lambda: {"classifier": model(), "x": images(), "y": labels()},
                                           images=("x",), labels=("y",)),
    "core.metrics.backdoor_accuracy": Example(metrics.backdoor_accuracy, lambda: {
        "classifier": model(), "x_triggered": images(), "y_true": labels()},
        images=("x_triggered",), labels=("y_true",)),
    "core.metrics.attack_success_rate": Example(metrics.attack_success_rate, lambda: {
        "classifier": model(), "x_triggered": images(), "target": 0}, images=("x_triggered",)),
    "core.metrics.confusion_matrix": Example(metrics.confusion_matrix,
                                             lambda: {"predicted": labels(), "true": labels(), "num_classes": 10},
                                             labels=("predicted", "true")),
    "core.metrics.patch_position_asr": Example(metrics.patch_position_asr, lambda: {
        "classifier": model(), "x": images(2), "patch": torch.ones(3, 3, 3), "target": 0},
        images=("x",), tensors=("patch",)),
    # --- models
    "core.models.Normalize": Example(models.Normalize, lambda: {"mean": (0.5,) * 3, "std": (0.25,) * 3}),
    "core.models.StagedClassifier": Example(models.StagedClassifier, lambda: {
        "normalize": models.Normalize((0.5,) * 3, (0.5,) * 3),
        "stages": OrderedDict(stem=torch.nn.Flatten(), head=torch.nn.Linear(3 * 32 * 32, 10)),
        "default_split": "head", "input_shape": (3, 32, 32), "feature_split": "head"},
        names=("default_split", "feature_split")),
    "core.models.set_dropout": Example(models.set_dropout, lambda: {"module": torch.nn.Dropout(0.1), "p": 0.5}),
    "core.models.build_model": Example(models.build_model, lambda: {
        "name": "lenet5", "in_channels": 3, "num_classes": 10, "image_size": 32}, names=("name",),
        mentions={"name": ("model",)}),
    "core.preact_resnet.PreActResNet18": Example(preact_resnet.PreActResNet18),
    # --- pretraining
    "core.pretraining.load_pretrained": Example(
        pretraining.load_pretrained, lambda: {"kind": "diffusion", "config": diffusion_training.DiffusionTrainConfig(),
                                              "name": "diffusion model", "command": "make assets"},
        components=("kind",)),
    "core.pretraining.check_recipe": Example(pretraining.check_recipe, lambda: {
        "config": mae_training.MAETrainConfig(arch=MAE32)}),
    "core.pretraining.warmup_cosine": Example(pretraining.warmup_cosine, lambda: {
        "step": 3, "lr": 0.1, "warmup_steps": 2, "steps": 10}),
    "core.pretraining.run_resumable": Example(pretraining.run_resumable, _resumable,
                                              skip=("lr_at", "batch_loss", "replay")),  # the caller's own code
    # --- query access
    "core.query.QueryModel": Example(query.QueryModel, lambda: {"model": model(), "access": "logits",
                                                                "num_classes": 10},
                                     names=("access",)),
    # --- runtime
    "core.runtime.resolve_device": Example(runtime.resolve_device, lambda: {"device": "cpu"}, names=("device",)),
    "core.runtime.make_generator": Example(runtime.make_generator, lambda: {"seed": 0}, names=("device",)),
    "core.runtime.child_seed": Example(runtime.child_seed, lambda: {"parent": 0, "stream": "data_order"},
                                       names=("stream",), signed=("parent",)),
    "core.runtime.image_generators": Example(runtime.image_generators, lambda: {"seed": 0, "first_index": 0,
                                                                                "count": 2}),
    "core.runtime.cache_root": Example(runtime.cache_root),
    "core.runtime.assets_root": Example(runtime.assets_root),
    "core.runtime.figures_root": Example(runtime.figures_root),
    # --- scales
    "core.scales.resolve_scale": Example(scales.resolve_scale, lambda: {"scale": "smoke"}, names=("scale",)),
    "core.scales.pick": Example(scales.pick, lambda: {"scale": "smoke", "presets": {"smoke": 1, "cpu": 2,
                                                                                    "paper": 3}},
                                names=("scale",)),
    "core.scales.with_overrides": Example(scales.with_overrides, lambda: {"preset": _recipe(), "epochs": 2}),
    # --- storage: any path the caller chooses is valid (they write and hash the caller's own files)
    "core.storage.atomic_write": Example(storage.atomic_write, lambda: {
        "path": Path(tempfile.mkdtemp()) / "f", "write": lambda tmp: tmp.write_text("x")}),
    "core.storage.fsync_path": Example(storage.fsync_path, lambda: {"path": Path(tempfile.mkdtemp())}),
    "core.storage.current_umask": Example(storage.current_umask),
    "core.storage.atomic_write_bytes": Example(storage.atomic_write_bytes, lambda: {
        "path": Path(tempfile.mkdtemp()) / "f", "data": b"x"}),
    "core.storage.canonical_json": Example(storage.canonical_json, lambda: {"obj": {"b": 1, "a": [1.5]}}),
    "core.storage.atomic_write_json": Example(storage.atomic_write_json, lambda: {
        "path": Path(tempfile.mkdtemp()) / "f.json", "obj": {"a": 1}}),
    "core.storage.sha256_file": Example(storage.sha256_file, lambda: {"path": __file__}, paths=("path",)),
    "core.storage.sha256_text": Example(storage.sha256_text, lambda: {"text": "x"}),
    "core.storage.save_checkpoint": Example(storage.save_checkpoint, lambda: {
        "path": Path(tempfile.mkdtemp()) / "state.pt", "recipe": {"epochs": 2}, "state": {"epochs": 1},
        "generator": torch.Generator(), "device": torch.device("cpu")}),
    "core.storage.delete_checkpoint": Example(storage.delete_checkpoint, lambda: {
        "path": Path(tempfile.mkdtemp()) / "state.pt"}),
    "core.storage.checkpoint_part": Example(storage.checkpoint_part, lambda: {
        "path": Path(tempfile.mkdtemp()) / "state.pt", "part": "isolate"}, components=("part",)),
    "core.storage.load_checkpoint": Example(storage.load_checkpoint, lambda: {
        "path": _checkpoint(), "recipe": {"epochs": 2}, "generator": torch.Generator(),
        "device": torch.device("cpu")}, paths=("path",)),
    # --- training
    "core.training.TrainConfig": Example(training.TrainConfig, lambda: {"dataset": "cifar10", "model": "lenet5"},
                                         names=("dataset", "model", "optimizer", "schedule", "augment"),
                                         signed=("seed", "split_seed")),
    "core.training.EpochRecord": Example(training.EpochRecord, lambda: {"epoch": 1, "loss": 0.5, "seconds": 1.0},
                                         record=True),
    "core.training.TrainingSummary": Example(training.TrainingSummary, lambda: {"ca": 0.5}, record=True),
    "core.training.TrainedModel": Example(training.TrainedModel, lambda: {
        "model": model(), "config": _recipe(), "key": "k", "metrics": {}, "path": ".", "loaded": False},
        record=True),
    "core.training.new_model": Example(training.new_model, lambda: {"config": _recipe()}),
    "core.training.check_training_images": Example(training.check_training_images, lambda: {
        "train": dataset(), "model": model()}, datasets=("train",)),
    "core.training.augment_batch": Example(training.augment_batch, lambda: {
        "x": images(2), "mode": "crop_flip", "gen": torch.Generator()}, images=("x",), names=("mode",),
        valid={"x": ("empty batch", "wrong size", "wrong channels")},  # any batch of images: no model here
        mentions={"mode": ("augmentation",)}),
    "core.training.train_classifier": Example(training.train_classifier, lambda: {
        "model": model(), "train": dataset(), "config": _recipe(), "device": "cpu", "progress": False},
        datasets=("train",), names=("device",)),
    "core.training.artefact_identity": Example(training.artefact_identity, lambda: {
        "config": _recipe(), "splits": _splits()}),
    "core.training.artefact_address": Example(training.artefact_address, lambda: {"config": _recipe()}),
    "core.training.TrainingData": Example(training.TrainingData, lambda: {
        "splits": _splits(), "train": dataset(), "poisoned_indices": torch.tensor([0]),
        "monitor": (images(2), labels(2)), "monitor_backdoor": None}, record=True),
    "core.training.prepare_training_data": Example(training.prepare_training_data, lambda: {
        "config": _recipe(), "store": _store(), "device": "cpu", "progress": False, "monitor_size": 10},
        names=("device",)),
    "core.training.test_metrics": Example(training.test_metrics, lambda: {
        "model": model(), "config": _recipe(), "splits": _splits()}),
    "core.training.get_or_train": Example(training.get_or_train, lambda: {
        "config": _recipe(), "store": _store(), "device": "cpu", "progress": False, "monitor_size": 10},
        names=("device",)),
    "core.training.get_or_train_input_aware": Example(training.get_or_train_input_aware, lambda: {
        "config": _input_aware_config(), "store": _store(), "device": "cpu", "progress": False},
        names=("device",)),
    # --- validation (the checks themselves)
    "core.validation.check_name": Example(validation.check_name, lambda: {"kind": "dataset", "name": "a",
                                                                          "known": ["a", "b"]}, names=("name",),
                                          mentions={"name": ("dataset",)}),
    "core.validation.check_images": Example(validation.check_images, lambda: {"x": images(2), "channels": 3,
                                                                              "size": 32}, images=("x",),
                                            valid={"x": ("empty batch",)}),  # an empty batch is a valid batch
    "core.validation.check_tensor": Example(validation.check_tensor, lambda: {
        "value": torch.zeros(2, 3), "name": "logits", "ndim": 2}, tensors=("value",),
        mentions={"value": ("logits",)}, valid={"ndim": ("list",)}),  # a list of allowed ranks
    "core.validation.check_labels": Example(validation.check_labels, lambda: {"labels": labels(), "count": 10,
                                                                              "num_classes": 10},
                                            labels=("labels",)),
    "core.validation.check_class": Example(validation.check_class, lambda: {"value": 3, "num_classes": 10},
                                           mentions={"value": ("class",)}),
    "core.validation.check_fraction": Example(validation.check_fraction, lambda: {"value": 0.5, "name": "ratio"},
                                              mentions={"value": ("ratio",)}),
    "core.validation.check_positive": Example(validation.check_positive, lambda: {"value": 0.5, "name": "lr"},
                                              mentions={"value": ("lr",)}),
    "core.validation.check_positive_int": Example(validation.check_positive_int, lambda: {"value": 2,
                                                                                          "name": "steps"},
                                                  mentions={"value": ("steps",)}),
    "core.validation.check_non_negative": Example(validation.check_non_negative, lambda: {"value": 2,
                                                                                          "name": "epochs"},
                                                  mentions={"value": ("epochs",)},
                                                  valid={"value": ("fraction",)}),  # any number unless integer=True
    "core.validation.check_seed": Example(validation.check_seed, lambda: {"value": 2},
                                          valid={"value": ("negative",)}, mentions={"value": ("seed",)}),
    "core.validation.check_path_component": Example(validation.check_path_component, lambda: {
        "value": "models", "name": "kind"}, components=("value",), mentions={"value": ("kind",)}),
    "core.validation.check_inside": Example(validation.check_inside, lambda: {
        "path": "/tmp/a/b", "folder": "/tmp/a", "name": "results"}, mentions={"path": ("results",)}),
}
