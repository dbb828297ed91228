"""Fuzz catalogue entries for baselines (see tests/api_catalogue/__init__.py)."""

from __future__ import annotations

from functools import cache

import torch

from tests.api_catalogue import Example, dataset, images, labels, model
from workbench.core.diffusion import Diffusion
from workbench.core.mae import MAEArchitecture, MAERestorer, MaskedAutoencoderViT
from workbench.core.models import StagedClassifier, build_model
from workbench.core.query import QueryModel
from workbench.core.training import TrainConfig
from workbench.defenses.baselines import abl, anp, diffpure, dp, februus, finetune, ibau, nad, patchcleanser, transforms

# a one-epoch LeNet-5 recipe without augmentation: each training call runs in a fraction of a second
RECIPE = TrainConfig("cifar10", "lenet5", epochs=1, batch_size=10, optimizer="adam", lr=1e-3, schedule="constant",
                     augment="none", label_smoothing=0.0, weight_decay=0.0)


def bn_model() -> StagedClassifier:
    """A narrow resnet_small: ANP prunes BatchNorm channels, which LeNet-5 has none of."""
    torch.manual_seed(0)
    return build_model("resnet_small", in_channels=3, num_classes=10, image_size=32, widths=(4, 4, 8, 8)).eval()


@cache
def _diffusion() -> Diffusion:
    from diffusers import DDPMScheduler, UNet2DModel

    from workbench.core.diffusion_training import DDPM_SCHEDULE
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    return Diffusion(unet.eval(), DDPMScheduler(**dict(DDPM_SCHEDULE)))


@cache
def _restorer() -> MAERestorer:
    arch = MAEArchitecture(img_size=32, patch_size=4, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16,
                           decoder_depth=1, decoder_num_heads=2)
    return MAERestorer(MaskedAutoencoderViT(arch))


def _gradients() -> dict[str, torch.Tensor]:
    return {"w": torch.rand(4, 3, 2), "b": torch.rand(4, 2)}


def _delta_losses() -> dict[str, object]:
    """implicit_hypergradient's arguments: a quadratic inner / outer loss in delta with one parameter theta."""
    theta = torch.ones(3, requires_grad=True)
    return {"inner_loss": lambda d: ((d - theta) ** 2).sum(), "outer_loss": lambda d: (d * theta).sum(),
            "delta": torch.zeros(3), "params": [theta], "steps": 2, "step_size": 0.1}


ABL_CONFIG = dict(isolation_ratio=0.1, isolate_epochs=1, finetune_epochs=1, unlearn_epochs=1, unlearn_batch_size=2)
ANP_CONFIG = dict(iterations=1, batch_size=4)
FINETUNE_CONFIG = dict(epochs=1, batch_size=10, lr_milestones=())
IBAU_CONFIG = dict(rounds=1, batch_size=10, fixed_point_steps=1)
NAD_CONFIG = dict(teacher_epochs=1, epochs=1, batch_size=10, lr_milestones=(), stages=("conv2",), betas=(1.0,))
MASKS = {"stages.stem.1": torch.rand(4)}

EXAMPLES: dict[str, Example] = {
    # --- abl ---
    "defenses.baselines.abl.ABLConfig": Example(
        abl.ABLConfig, lambda: {"lga_level": "batch", "unlearn_objective": "ascent", "finetune_on": "remaining"},
        names=("lga_level", "unlearn_objective", "finetune_on"),
        mentions={"lga_level": ("LGA level",), "unlearn_objective": ("unlearning objective",),
                  "finetune_on": ("fine-tuning set",)}),
    "defenses.baselines.abl.ABLResult": Example(
        abl.ABLResult, lambda: {"model": model(), "isolated": torch.tensor([1, 3]), "isolation_precision": 0.5,
                                "history": [], "losses": torch.rand(10)}, record=True),
    "defenses.baselines.abl.lga_loss": Example(
        abl.lga_loss, lambda: {"logits": torch.randn(10, 10), "y": labels(), "gamma": 0.5, "level": "batch"},
        labels=("y",), tensors=("logits",), names=("level",), mentions={"level": ("LGA level",)}),
    "defenses.baselines.abl.isolate_lowest": Example(
        abl.isolate_lowest, lambda: {"losses": torch.rand(10), "ratio": 0.2}, tensors=("losses",)),
    "defenses.baselines.abl.isolation_precision": Example(
        abl.isolation_precision, lambda: {"isolated": torch.tensor([1, 3]), "poisoned": torch.arange(10) < 2},
        tensors=("isolated", "poisoned")),
    "defenses.baselines.abl.train_abl": Example(
        abl.train_abl, lambda: {"train": dataset(), "recipe": RECIPE, "config": abl.ABLConfig(**ABL_CONFIG),
                                "model": model(), "poisoned": torch.arange(20) < 2, "device": "cpu",
                                "progress": False},
        datasets=("train",), tensors=("poisoned",)),
    # --- anp ---
    "defenses.baselines.anp.ANPConfig": Example(anp.ANPConfig, lambda: {"augment": "crop"}, names=("augment",),
                                                mentions={"augment": ("augmentation",)}),
    "defenses.baselines.anp.neuron_layers": Example(anp.neuron_layers, lambda: {"model": bn_model()}),
    "defenses.baselines.anp.NeuronPerturbation": Example(anp.NeuronPerturbation, lambda: {"model": bn_model()}),
    "defenses.baselines.anp.anp_masks": Example(
        anp.anp_masks, lambda: {"model": bn_model(), "holdout": dataset(), "config": anp.ANPConfig(**ANP_CONFIG),
                                "device": "cpu", "progress": False}, datasets=("holdout",)),
    "defenses.baselines.anp.prune_neurons": Example(
        anp.prune_neurons, lambda: {"model": bn_model(), "masks": dict(MASKS), "threshold": 0.2}),
    "defenses.baselines.anp.ANPResult": Example(
        anp.ANPResult, lambda: {"model": bn_model(), "masks": dict(MASKS),
                                "pruned": {"stages.stem.1": torch.tensor([1])}, "config": anp.ANPConfig()},
        record=True),
    "defenses.baselines.anp.anp_with_masks": Example(
        anp.anp_with_masks, lambda: {"model": bn_model(), "holdout": dataset(),
                                     "config": anp.ANPConfig(**ANP_CONFIG), "device": "cpu", "progress": False},
        datasets=("holdout",)),
    "defenses.baselines.anp.anp": Example(
        anp.anp, lambda: {"model": bn_model(), "holdout": dataset(), "config": anp.ANPConfig(**ANP_CONFIG),
                          "device": "cpu", "progress": False}, datasets=("holdout",)),
    # --- diffpure ---
    "defenses.baselines.diffpure.vp_alpha_bar": Example(
        diffpure.vp_alpha_bar, lambda: {"t": 0.1, "beta_min": 0.1, "beta_max": 20.0}),
    "defenses.baselines.diffpure.DiffPure": Example(
        diffpure.DiffPure, lambda: {"diffusion": _diffusion(), "sampler": "sde", "sde_steps": 2, "batch_size": 4},
        names=("sampler",)),
    # --- dp ---
    "defenses.baselines.dp.DPConfig": Example(dp.DPConfig),
    "defenses.baselines.dp.replace_batchnorm": Example(
        dp.replace_batchnorm, lambda: {"module": bn_model(), "max_groups": 32}),
    "defenses.baselines.dp.dp_model": Example(dp.dp_model, lambda: {"recipe": RECIPE, "config": dp.DPConfig()}),
    "defenses.baselines.dp.per_sample_gradients": Example(
        dp.per_sample_gradients, lambda: {"model": model(), "x": images(4), "y": labels(4), "label_smoothing": 0.1},
        images=("x",), labels=("y",)),
    "defenses.baselines.dp.clip_per_sample": Example(
        dp.clip_per_sample, lambda: {"grads": _gradients(), "max_norm": 1.0}),
    "defenses.baselines.dp.private_gradient": Example(
        dp.private_gradient, lambda: {"model": model(), "x": images(4), "y": labels(4), "max_grad_norm": 1.0,
                                      "noise_multiplier": 1.0, "generator": torch.Generator().manual_seed(0),
                                      "label_smoothing": 0.0},
        images=("x",), labels=("y",)),
    "defenses.baselines.dp.train_dp": Example(
        dp.train_dp, lambda: {"train": dataset(), "recipe": RECIPE, "config": dp.DPConfig(), "model": model(),
                              "device": "cpu", "progress": False}, datasets=("train",)),
    # --- februus ---
    "defenses.baselines.februus.class_activation_map": Example(
        februus.class_activation_map, lambda: {"model": model(), "x": images(2), "method": "gradcam",
                                               "target": labels(2), "layer": "conv2"},
        images=("x",), labels=("target",), names=("method", "layer"),
        mentions={"layer": ("module",)}),  # the layer is named as the model's module it is
    "defenses.baselines.februus.Februus": Example(
        februus.Februus, lambda: {"model": model(), "restorer": _restorer(), "method": "xgradcam"}, names=("method",)),
    # --- finetune ---
    "defenses.baselines.finetune.FineTuneConfig": Example(
        finetune.FineTuneConfig, lambda: {"optimizer": "adam", "augment": "crop"}, names=("optimizer", "augment")),
    "defenses.baselines.finetune.check_defence_inputs": Example(
        finetune.check_defence_inputs, lambda: {"model": model(), "holdout": dataset()}, datasets=("holdout",)),
    "defenses.baselines.finetune.registered_model_name": Example(
        finetune.registered_model_name, lambda: {"model": model()}),
    "defenses.baselines.finetune.cutout": Example(
        finetune.cutout, lambda: {"x": images(2), "side": 2, "gen": torch.Generator().manual_seed(0)},
        images=("x",),
        # a hole of zeros in any batch of float images: any channels, size, value range or an empty batch is fine
        valid={"x": ("wrong channels", "wrong size", "0..255 floats", "negative values", "empty batch")}),
    "defenses.baselines.finetune.train_in_phases": Example(
        finetune.train_in_phases, lambda: {"model": model(), "holdout": dataset(),
                                           "config": finetune.FineTuneConfig(**FINETUNE_CONFIG), "device": "cpu",
                                           "progress": False}, datasets=("holdout",)),
    "defenses.baselines.finetune.fine_tune": Example(
        finetune.fine_tune, lambda: {"model": model(), "holdout": dataset(),
                                     "config": finetune.FineTuneConfig(**FINETUNE_CONFIG), "device": "cpu",
                                     "progress": False}, datasets=("holdout",)),
    # --- ibau ---
    "defenses.baselines.ibau.IBAUConfig": Example(ibau.IBAUConfig),
    "defenses.baselines.ibau.project_l2": Example(
        ibau.project_l2, lambda: {"delta": torch.randn(1, 3, 4, 4), "bound": 1.0}, tensors=("delta",),
        valid={"delta": ("extra dimension",)}),  # delta may have any shape: the ball is on its whole L2 norm
    "defenses.baselines.ibau.implicit_hypergradient": Example(
        ibau.implicit_hypergradient, _delta_losses, tensors=("delta",),
        valid={"delta": ("extra dimension",)}),  # any shape the caller's losses take (here they broadcast)
    "defenses.baselines.ibau.universal_perturbation": Example(
        ibau.universal_perturbation, lambda: {"model": model(), "batches": [(images(4), labels(4))],
                                              "config": ibau.IBAUConfig()},
        skip=("batches",)),  # an iterable of (images, labels) batches the library builds from a checked holdout
    "defenses.baselines.ibau.ibau": Example(
        ibau.ibau, lambda: {"model": model(), "holdout": dataset(), "config": ibau.IBAUConfig(**IBAU_CONFIG),
                            "device": "cpu", "progress": False}, datasets=("holdout",)),
    # --- nad ---
    "defenses.baselines.nad.NADConfig": Example(nad.NADConfig, lambda: {"distance": "l2"}, names=("distance",)),
    "defenses.baselines.nad.attention_map": Example(
        nad.attention_map, lambda: {"activation": torch.rand(2, 4, 3, 3), "p": 2.0}, tensors=("activation",)),
    "defenses.baselines.nad.attention_loss": Example(
        nad.attention_loss, lambda: {"student": torch.rand(2, 4, 3, 3), "teacher": torch.rand(2, 6, 3, 3), "p": 2.0,
                                     "distance": "mse"},
        tensors=("student", "teacher"), names=("distance",)),
    "defenses.baselines.nad.stage_outputs": Example(
        nad.stage_outputs, lambda: {"model": model(), "x": images(2), "names": ("conv1", "conv2")}, images=("x",),
        names=("names",)),
    "defenses.baselines.nad.check_stages": Example(nad.check_stages, lambda: {"model": model(), "stages": ("conv2",)}),
    "defenses.baselines.nad.default_stages": Example(
        nad.default_stages, lambda: {"model": model(), "config": nad.NADConfig()}),
    "defenses.baselines.nad.nad_loss": Example(
        nad.nad_loss, lambda: {"student": model(), "teacher": model(), "x": images(4), "y": labels(4),
                               "config": nad.NADConfig(**NAD_CONFIG)},
        images=("x",), labels=("y",)),
    "defenses.baselines.nad.nad": Example(
        nad.nad, lambda: {"model": model(), "holdout": dataset(), "config": nad.NADConfig(**NAD_CONFIG),
                          "device": "cpu", "progress": False}, datasets=("holdout",)),
    # --- patchcleanser ---
    "defenses.baselines.patchcleanser.mask_set": Example(
        patchcleanser.mask_set, lambda: {"size": 32, "patch_size": 5, "masks_per_side": 6}),
    "defenses.baselines.patchcleanser.PatchCleanser": Example(
        patchcleanser.PatchCleanser, lambda: {"classifier": QueryModel(model(), "label"), "variant": "majority"},
        names=("variant",)),
    # --- transforms ---
    "defenses.baselines.transforms.Blur": Example(
        transforms.Blur, lambda: {"classifier": QueryModel(model(), "label")}),
    "defenses.baselines.transforms.ShrinkPad": Example(
        transforms.ShrinkPad, lambda: {"classifier": QueryModel(model(), "label")}),
}
