"""Fuzz catalogue entries for `workbench.core.attacks` (see tests/api_catalogue/__init__.py)."""

from __future__ import annotations

import torch

from tests.api_catalogue import Example, dataset, images, labels, model
from tests.api_catalogue.core import _attack, _generator, _input_aware_training, _recipe
from workbench.core.attacks import (
    additive,
    adversarial,
    base,
    blending,
    functional,
    input_aware,
    latent,
    patches,
    poisoning,
    warping,
)


def _patch() -> torch.Tensor:
    """A 3 x 3 x 3 patch holding 0s and 1s (so any negative shift or scaling leaves [0, 1])."""
    return patches.BDMAE_CHECKERBOARD.repeat(3, 1, 1)


EXAMPLES: dict[str, Example] = {
    # --- attacks
    "core.attacks.additive.Additive": Example(additive.Additive, lambda: {"amplitude": 0.1, "size": 3, "row": 0,
                                                                          "col": 0, "channel": 0},
                                              names=("pattern",), signed=("seed", "row", "col")),
    "core.attacks.additive.Smooth": Example(additive.Smooth),
    "core.attacks.adversarial.pgd_perturb": Example(adversarial.pgd_perturb, lambda: {
        "model": model(), "x": images(4), "y": labels(4), "epsilon": 0.03, "steps": 1, "step_size": 0.01},
        images=("x",), labels=("y",)),
    "core.attacks.base.Attack": Example(base.Attack),
    "core.attacks.base.register_preset": Example(base.register_preset, lambda: {"name": "fuzz", "note": "n"}),
    "core.attacks.base.make_attack": Example(base.make_attack, lambda: {"name": "badnets"}, names=("name",),
                                             mentions={"name": ("attack",)}),  # "unknown attack 'x'; choose..."
    "core.attacks.base.attack_from_dict": Example(base.attack_from_dict, lambda: {"data": _attack().to_dict()}),
    "core.attacks.base.resolve_position": Example(base.resolve_position, lambda: {
        "value": -4, "extent": 32, "size": 3, "what": "row"}, signed=("value",), mentions={"value": ("row",)}),
    "core.attacks.blending.Blended": Example(blending.Blended, lambda: {"size": 8, "row": 0, "col": 0},
                                             signed=("seed", "row", "col")),
    "core.attacks.blending.SIG": Example(blending.SIG, names=("mode",)),
    "core.attacks.functional.stamp_patch": Example(functional.stamp_patch, lambda: {
        "x": images(2), "patch": _patch(), "top": 0, "left": 0}, images=("x", "patch"),
        valid={"x": ("wrong size", "empty batch"),  # any image size the patch fits in; an empty batch stays empty
               "patch": ("wrong channels", "wrong size")}),  # these slice the patch's h / w: any rectangle fits
    "core.attacks.functional.stamp_patch_at": Example(functional.stamp_patch_at, lambda: {
        "x": images(2), "patch": _patch(), "tops": torch.tensor([0, 1]), "lefts": torch.tensor([0, 1])},
        images=("x", "patch"), tensors=("tops", "lefts"),
        valid={"x": ("wrong size",),  # any image size the patches fit in (here every size >= 4)
               "patch": ("wrong channels", "wrong size")}),  # these slice the patch's h / w: any rectangle fits
    "core.attacks.functional.blend": Example(functional.blend, lambda: {
        "x": images(2), "pattern": images(1)[0], "alpha": 0.2}, images=("x", "pattern"),
        valid={"x": ("empty batch",)}),  # a pixel-wise blend maps an empty batch to an empty batch
    "core.attacks.functional.add_clipped": Example(functional.add_clipped, lambda: {
        "x": images(2), "delta": torch.full((3, 32, 32), 0.1)}, images=("x",), tensors=("delta",),
        valid={"x": ("empty batch",),  # a pixel-wise sum maps an empty batch to an empty batch
               "delta": ("extra dimension",)}),  # (1, C, H, W) broadcasts to the images exactly as (C, H, W)
    "core.attacks.functional.sine_wave": Example(functional.sine_wave, lambda: {
        "height": 32, "width": 32, "fx": 6.0, "fy": 0.0},
        signed=("fx", "fy")),  # a negative frequency is the same wave running the other way (a tilted wave)
    "core.attacks.functional.wanet_grid": Example(functional.wanet_grid, lambda: {
        "height": 32, "width": 32, "control_size": 4, "strength": 0.5, "generator": torch.Generator()}),
    "core.attacks.functional.warp": Example(functional.warp, lambda: {
        "x": images(2), "grid": functional.wanet_grid(32, 32, 4, 0.5, torch.Generator())},
        images=("x",), tensors=("grid",),
        valid={"x": ("wrong channels", "empty batch")}),  # the warp moves pixels of any channel count, any batch
    "core.attacks.input_aware.TriggerGenerator": Example(input_aware.TriggerGenerator, lambda: {
        "channels": 3, "out_channels": 3, "width": 4}),
    "core.attacks.input_aware.make_pattern": Example(input_aware.make_pattern, lambda: {
        "generator": _generator(), "x": images(2)}, images=("x",),
        valid={"x": ("wrong size",)}),  # fully convolutional: sides that are multiples of 4 work, others refused
    "core.attacks.input_aware.make_mask": Example(input_aware.make_mask, lambda: {
        "generator": _generator(), "x": images(2)}, images=("x",),
        valid={"x": ("wrong size",)}),  # fully convolutional: sides that are multiples of 4 work, others refused
    "core.attacks.input_aware.stamp": Example(input_aware.stamp, lambda: {
        "x": images(2), "pattern": images(2), "mask": images(2)[:, :1]},
        images=("x", "pattern", "mask"), valid={"mask": ("wrong channels",)}),  # one mask channel, or C
    "core.attacks.input_aware.diversity_loss": Example(input_aware.diversity_loss, lambda: {
        "x": images(2), "x_other": images(2).flip(0), "out": images(2), "out_other": images(2).flip(0)},
        images=("x", "x_other", "out", "out_other"),  # any finite outputs: the loss is a ratio of RMS distances
        valid={"out": ("0..255 floats", "negative values"), "out_other": ("0..255 floats", "negative values")}),
    "core.attacks.input_aware.sparsity_loss": Example(input_aware.sparsity_loss, lambda: {
        "mask": images(2)[:, :1], "density": 0.032}, images=("mask",),
        valid={"mask": ("wrong channels", "wrong size")}),  # an element-wise mean over masks of any shape
    "core.attacks.input_aware.InputAwareConfig": Example(input_aware.InputAwareConfig, lambda: {
        "train": _recipe()}),
    "core.attacks.input_aware.InputAware": Example(input_aware.InputAware),
    "core.attacks.input_aware.train_generators_and_classifier": Example(
        input_aware.train_generators_and_classifier, lambda: {  # a dataset's uint8 images, as the docstring says
            **_input_aware_training(), "train_images": (images(20) * 255).round().to(torch.uint8)},
        images=("train_images",), labels=("train_labels",),
        valid={"train_images": ("uint8", "0..255 floats")},  # uint8 is the documented input: on uint8 these
        # corruptions wrap around to other uint8 pixels
        skip=("augment", "optimizer", "lr_at", "device")),  # built by the library's own caller, not user data
    "core.attacks.latent.PatchTrigger": Example(latent.PatchTrigger, lambda: {"values": (1,) * 108},
                                                signed=("row", "col")),
    "core.attacks.latent.LatentInjection": Example(latent.LatentInjection, lambda: {"layer": "fc1"}),
    "core.attacks.latent.latent_distance": Example(latent.latent_distance, lambda: {
        "features": torch.rand(4, 8), "labels": labels(4), "poisoned": torch.tensor([True, False, True, False]),
        "target": 0, "memo": None}, labels=("labels",), tensors=("features", "poisoned"),
        valid={"labels": ("out of range",)}),  # the class count is not known here: labels are compared with target
    "core.attacks.latent.mean_latent": Example(latent.mean_latent, lambda: {
        "model": model(), "images": images(4), "layer": "fc1"}, images=("images",), names=("layer",)),
    "core.attacks.latent.TriggerSearch": Example(latent.TriggerSearch, signed=("row", "col")),
    "core.attacks.latent.optimise_latent_trigger": Example(latent.optimise_latent_trigger, lambda: {
        "model": model(), "sources": images(4), "target_images": images(4).flip(0), "layer": "fc1",
        "search": latent.TriggerSearch(steps=1, batch_size=4), "progress": False},
        images=("sources", "target_images"), names=("layer",)),
    "core.attacks.patches.BadNets": Example(patches.BadNets, lambda: {"row": 0, "col": 0}, names=("pattern",),
                                            signed=("seed", "row", "col")),
    "core.attacks.patches.DynamicBadNets": Example(patches.DynamicBadNets, names=("pattern",),
                                                   signed=("seed", "position_seed")),
    "core.attacks.patches.per_class_triggers": Example(patches.per_class_triggers, lambda: {
        "num_classes": 10, "image_size": 32}),
    "core.attacks.poisoning.AdversarialStep": Example(poisoning.AdversarialStep, lambda: {"surrogate": {}}),
    "core.attacks.poisoning.PoisonConfig": Example(poisoning.PoisonConfig, lambda: {
        "attack": _attack(), "ratio": 0.1}),
    "core.attacks.poisoning.PoisonedDataset": Example(poisoning.PoisonedDataset, lambda: {
        "dataset": dataset(), "poisoned_indices": torch.tensor([0]), "noise_indices": torch.tensor([], dtype=int),
        "targets": torch.tensor([0])}, record=True),
    "core.attacks.poisoning.poison_dataset": Example(poisoning.poison_dataset, lambda: {
        "dataset": dataset(), "config": poisoning.PoisonConfig(_attack(), target=0, ratio=0.1)},
        datasets=("dataset",),
        valid={"dataset": ("wrong channels", "wrong size",  # the corner patch adapts to any channels and size
                           "labels out of range")}),  # no model here: the dataset names its own classes, all valid
    "core.attacks.poisoning.poison_all_classes": Example(poisoning.poison_all_classes, lambda: {
        "dataset": dataset(), "ratio": 0.5,  # one image per class; triggers in the far corner of 32 px images, so
        # a smaller set is refused
        "triggers": [patches.BadNets(pattern="random_colour", row=29, col=29, seed=k) for k in range(10)]},
        datasets=("dataset",), valid={"dataset": ("wrong channels",)}),  # random-colour patches take any channels
    "core.attacks.poisoning.AllClassesPoison": Example(poisoning.AllClassesPoison),
    "core.attacks.poisoning.backdoor_test_set": Example(poisoning.backdoor_test_set, lambda: {
        "test": dataset(), "attack": _attack(), "target": 0}, datasets=("test",),
        valid={"test": ("wrong channels", "wrong size",  # the corner patch adapts to any channels and size
                        "labels out of range")}),  # no model here: the dataset names its own classes, all valid
    "core.attacks.warping.WaNet": Example(warping.WaNet, names=("noise",)),
}
