"""Fuzz catalogue entries for defenses (see tests/api_catalogue/__init__.py).

The REStore entries use `_graded()`, a classifier whose prediction is the mean brightness of an image in tenths, on
`_graded_images()` (image n has brightness class n % 10): every image is classified correctly and the classes vary,
as REStore's clean sets need (the shared LeNet-5 labels every fuzz image alike). Entries that load a dataset use
MNIST (its test split alone, a tenth of a second to load); anything writing artefacts gets a fresh temporary store.
"""

from __future__ import annotations

import dataclasses
import tempfile
from functools import cache
from typing import Any

import torch
import torch.nn as nn

from tests.api_catalogue import Example, dataset, images, labels, model
from workbench.core.artefacts import ArtefactStore
from workbench.core.mae import MAEArchitecture, MAERestorer, MaskedAutoencoderViT, neighbours4
from workbench.core.query import QueryModel
from workbench.core.training import TrainConfig
from workbench.defenses import bdmae, importance_splitting, interface, lred, registered, restore, trap_replace

# --- shared inputs ---------------------------------------------------------------------------------------------------

TINY_MAE = MAEArchitecture(img_size=32, patch_size=8, in_chans=3, embed_dim=16, depth=1, num_heads=2,
                           decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
#: a tiny importance-splitting run: 4 particles, one kernel pass per level
TINY_SPLITTING = importance_splitting.SplittingConfig(particles=4, survivors=2, passes=1, max_levels=2,
                                                      max_strength=1.0)
#: one epoch on the 20 MNIST training images (the test split cut in three: MNIST's train split is not mirrored)
MNIST_RECIPE = TrainConfig(dataset="mnist", model="lenet5", train_size=20, test_size=20, epochs=1, batch_size=10,
                           augment="none")


class _Graded(nn.Module):
    """Ten classes by mean brightness: class k for a mean in [k / 10, (k + 1) / 10)."""

    input_shape = (3, 32, 32)
    num_classes = 10

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = x.mean(dim=(1, 2, 3)) * self.scale
        return -(level[:, None] - (torch.arange(10, device=x.device) + 0.5)).square()


def _graded() -> nn.Module:
    return _Graded().eval()


def _graded_images(count: int = 10) -> torch.Tensor:
    """Image n: brightness (n % 10 + 0.5) / 10 with a little noise, so `_graded` labels it n % 10."""
    gen = torch.Generator().manual_seed(count)
    level = ((torch.arange(count) % 10 + 0.5) / 10).view(-1, 1, 1, 1)
    return (level + 0.02 * torch.randn(count, 3, 32, 32, generator=gen)).clamp(0, 1)


def _query(access: str = "probs") -> QueryModel:
    return QueryModel(_graded(), access)


def _mae() -> MAERestorer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return MAERestorer(MaskedAutoencoderViT(TINY_MAE))


def _store() -> ArtefactStore:
    return ArtefactStore(tempfile.mkdtemp(), read_only_roots=[])


def _fields(record: Any) -> dict[str, Any]:
    """A dataclass's fields as keyword arguments: rebuilds a record the library made."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.init}


def _gens(count: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(n) for n in range(count)]


def _bdmae() -> bdmae.BDMAE:
    config = bdmae.BDMAEConfig(outer_rounds=1, inner_masks=2, refine_steps=1)
    return bdmae.BDMAE(QueryModel(model(), "label"), _mae(), config)


@cache
def _bdmae_result() -> bdmae.BDMAEResult:
    return _bdmae().purify(images(2))


def _splitting_run() -> importance_splitting.SplittingResult:
    prior = importance_splitting.GaussianPrior((3,))
    return importance_splitting.importance_splitting(prior.generate, prior.kernel, lambda x, _: x.sum(dim=-1),
                                                     num_problems=2, config=TINY_SPLITTING)


def _pi() -> restore.RestoreSetup:
    return restore.RestoreSetup("PI", 0.1)


def _realisations() -> torch.Tensor:
    """Three PI perturbations: NaN where a pixel is kept, a value where it is replaced."""
    gen = torch.Generator().manual_seed(0)
    values = torch.rand(3, 3, 32, 32, generator=gen)
    return torch.where(torch.rand(3, 3, 32, 32, generator=gen) < 0.1, values, torch.full_like(values, torch.nan))


def _diagnosis() -> restore.Diagnosis:
    return restore.Diagnosis(setup=_pi(), output="probits", classes=[0, 1], splitting=_splitting_run(),
                             comparison_level=0.5, log10_rho_at_level=[-1.0, -2.0], suspect=0, margin=1.0, queries=10)


def _estimate() -> restore.TriggerEstimate:
    return restore.TriggerEstimate(mean=torch.rand(3, 32, 32) * 0.2 - 0.1, snr=torch.rand(3, 32, 32) * 3)


def _lred_config() -> lred.LREDConfig:
    return lred.LREDConfig(step=0.3, max_iterations=3)


def _features(count: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 6, generator=torch.Generator().manual_seed(seed))


def _scatter() -> trap_replace.FeatureScatter:
    return trap_replace.scatter_of(_features(seed=0), _features(seed=1), _features(seed=2))


def _trap_config() -> trap_replace.TrapConfig:
    return trap_replace.TrapConfig(MNIST_RECIPE)


def _trap_net() -> trap_replace.TrapNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return trap_replace.TrapNet.build(model(), "conv2")


def _trapped() -> trap_replace.TrappedModel:
    return trap_replace.get_or_trap(_trap_config(), store=_store(), device="cpu", progress=False, monitor_size=10)


def _recipe() -> TrainConfig:
    return TrainConfig(dataset="cifar10", model="lenet5", epochs=1, batch_size=10, augment="none")


# --- bdmae -----------------------------------------------------------------------------------------------------------

_BDMAE = {
    "defenses.bdmae.BDMAEConfig": Example(bdmae.BDMAEConfig, lambda: {"fixed_threshold": 0.5}),
    "defenses.bdmae.RefinementTrace": Example(bdmae.RefinementTrace, lambda: _fields(
        _bdmae_result().refinement.label), record=True),
    "defenses.bdmae.Refinements": Example(bdmae.Refinements, lambda: _fields(_bdmae_result().refinement), record=True),
    "defenses.bdmae.BDMAEResult": Example(bdmae.BDMAEResult, lambda: _fields(_bdmae_result()), record=True),
    # y may leave [0, 1] (the MAE's unclipped restoration), so it is a tensor, not an image batch
    "defenses.bdmae.ssim_map": Example(bdmae.ssim_map, lambda: {"x": images(2), "y": images(2) * 1.1},
                                       images=("x",), tensors=("y",)),
    "defenses.bdmae.token_dissimilarity": Example(bdmae.token_dissimilarity,
                                                  lambda: {"x": images(2), "y": images(2), "grid": 4},
                                                  images=("x",), tensors=("y",)),
    "defenses.bdmae.cut_permutation_masks": Example(bdmae.cut_permutation_masks, lambda: {
        "num_tokens": 16, "count": 12, "masks": 3, "gen": torch.Generator().manual_seed(0)}),
    "defenses.bdmae.tie_priorities": Example(bdmae.tie_priorities, lambda: {"gens": _gens(2), "num_tokens": 16}),
    "defenses.bdmae.topology_masks": Example(bdmae.topology_masks, lambda: {
        "scores": torch.rand(2, 16, generator=torch.Generator().manual_seed(0)),
        "regions": torch.ones(2, 16, dtype=torch.bool), "sizes": torch.tensor([2, 5]), "adjacency": neighbours4(4),
        "bonus": 0.5, "gens": _gens(2), "priority": bdmae.tie_priorities(_gens(2), 16), "random_seed_token": False},
        tensors=("scores", "regions", "sizes", "adjacency", "priority")),
    "defenses.bdmae.top_tokens": Example(bdmae.top_tokens, lambda: {
        "score": torch.rand(2, 16, generator=torch.Generator().manual_seed(0)), "count": torch.tensor([3, 8]),
        "priority": bdmae.tie_priorities(_gens(2), 16)}, tensors=("score", "count", "priority")),
    "defenses.bdmae.BDMAE": Example(bdmae.BDMAE, lambda: {
        "classifier": QueryModel(model(), "label"), "restorer": _mae(),
        "config": bdmae.BDMAEConfig(outer_rounds=1, inner_masks=2, refine_steps=1), "batch_images": 4}),
}

# --- importance splitting --------------------------------------------------------------------------------------------

_SPLITTING = {
    # a target level is a score, which may be negative
    "defenses.importance_splitting.SplittingConfig": Example(
        importance_splitting.SplittingConfig, lambda: {"max_strength": 2.0, "target_level": 0.5},
        signed=("target_level",)),
    "defenses.importance_splitting.decay_to_one_component": Example(
        importance_splitting.decay_to_one_component, lambda: {"passes": 30, "strength": 1.0, "components": 300.0}),
    "defenses.importance_splitting.SplittingResult": Example(importance_splitting.SplittingResult,
                                                             lambda: _fields(_splitting_run()), record=True),
    # generate, kernel and score are the caller's functions (their outputs are checked), not data
    "defenses.importance_splitting.importance_splitting": Example(importance_splitting.importance_splitting, lambda: {
        "generate": importance_splitting.GaussianPrior((3,)).generate,
        "kernel": importance_splitting.GaussianPrior((3,)).kernel, "score": lambda x, _: x.sum(dim=-1),
        "num_problems": 2, "config": TINY_SPLITTING, "seed": 0}),
    "defenses.importance_splitting.GaussianPrior": Example(importance_splitting.GaussianPrior,
                                                           lambda: {"shape": (3, 4, 4)}),
    # rate's shape is the particles' shape, any shape: an extra dimension is just another search space
    "defenses.importance_splitting.SparseIIDPrior": Example(importance_splitting.SparseIIDPrior, lambda: {
        "rate": torch.full((3, 4, 4), 0.1), "draw_values": lambda shape, gen: torch.rand(shape, generator=gen)},
        tensors=("rate",), valid={"rate": ("extra dimension",)}),
}

# --- interface -------------------------------------------------------------------------------------------------------

_INTERFACE = {
    "defenses.interface.Detection": Example(interface.Detection, lambda: {
        "method": "red-a", "detected": False, "target": 0, "statistic": 1.0, "p_value": 0.5,
        "class_scores": torch.zeros(10), "queries": None, "seconds": 0.1}, record=True),
    "defenses.interface.Purification": Example(interface.Purification, lambda: {
        "method": "blur", "images": images(2), "labels": labels(2), "queries": 2, "seconds": 0.1}, record=True),
    "defenses.interface.Repair": Example(interface.Repair, lambda: {
        "method": "fine-tuning", "model": model(), "seconds": 0.1, "holdout_images": 10}, record=True),
    "defenses.interface.Training": Example(interface.Training, lambda: {
        "method": "abl", "model": model(), "seconds": 0.1, "train_images": 10}, record=True),
    "defenses.interface.Entry": Example(interface.Entry, lambda: _fields(interface.describe("blur")), record=True),
    "defenses.interface.register": Example(interface.register, lambda: {"name": "fuzz-only", "kind": "detector"},
                                           names=("kind",)),
    "defenses.interface.available": Example(interface.available, lambda: {"kind": "purifier"}, names=("kind",)),
    "defenses.interface.describe": Example(interface.describe, lambda: {"name": "blur"}, names=("name",),
                                           mentions={"name": ("defence",)}),
    "defenses.interface.create": Example(interface.create, lambda: {"name": "blur"}, names=("name",),
                                         mentions={"name": ("defence",)}),
}

# --- lred ------------------------------------------------------------------------------------------------------------


def _problems() -> dict[str, torch.Tensor]:
    targets, sources = lred.estimation_problems("RED-A", 10)
    return {"targets": targets, "sources": sources}


@cache
def _lred_detection() -> lred.DetectionResult:
    return lred.detect(model(), images(), labels(), 10, config=_lred_config())


_LRED = {
    "defenses.lred.LREDConfig": Example(lred.LREDConfig, lambda: {"weighting": "uniform"}, names=("weighting",)),
    "defenses.lred.EstimationResult": Example(lred.EstimationResult, lambda: _fields(_lred_detection().estimation),
                                              record=True),
    "defenses.lred.estimate_patterns": Example(lred.estimate_patterns, lambda: {
        "model": model(), "x": images(), "y": labels(), **_problems(), "config": _lred_config(), "snapshot_every": 1},
        images=("x",), labels=("y",), tensors=("targets", "sources")),
    "defenses.lred.order_statistic_test": Example(lred.order_statistic_test, lambda: {
        "statistics": torch.linspace(1.0, 2.0, 10)}, tensors=("statistics",)),
    "defenses.lred.DetectionResult": Example(lred.DetectionResult, lambda: _fields(_lred_detection()), record=True),
    "defenses.lred.estimation_problems": Example(lred.estimation_problems,
                                                 lambda: {"method": "RED-P", "num_classes": 4}, names=("method",)),
    "defenses.lred.detect": Example(lred.detect, lambda: {
        "model": model(), "x": images(), "y": labels(), "num_classes": 10, "method": "RED-U", "config": _lred_config()},
        images=("x",), labels=("y",), names=("method",)),
    # uint8 images are documented input (converted to [0, 1] on the chosen subset); no model is involved, so any
    # channel count and size make a valid image set
    "defenses.lred.detection_images": Example(lred.detection_images, lambda: {
        "images": images(20), "labels": labels(20), "per_class": 2, "num_classes": 10, "seed": 0},
        images=("images",), labels=("labels",), valid={"images": ("uint8", "wrong channels", "wrong size")}),
}

# --- registered ------------------------------------------------------------------------------------------------------

_REGISTERED = {
    "defenses.registered.white_box": Example(registered.white_box, lambda: {"model_or_query": model(),
                                                                            "method": "L-RED"}),
    "defenses.registered.query_access": Example(registered.query_access, lambda: {
        "model_or_query": QueryModel(model(), "logits"), "access": "probs", "method": "REStore"}, names=("access",)),
    # the message calls the data by its role, `name` (a repair's clean holdout by default)
    "defenses.registered.as_dataset": Example(registered.as_dataset, lambda: {"data": dataset(), "model": model()},
                                              datasets=("data",), mentions={"data": ("clean_holdout",)}),
    "defenses.registered.RestoreSettings": Example(registered.RestoreSettings, lambda: {
        "setup": "FI", "output": "labels", "alpha": 0.2, "per_set": 4}, names=("setup", "output")),
    "defenses.registered.TrapSettings": Example(registered.TrapSettings, lambda: {"replace": (("epochs", 2),)}),
}

# --- restore ---------------------------------------------------------------------------------------------------------

_RESTORE = {
    "defenses.restore.dct_matrix": Example(restore.dct_matrix, lambda: {"n": 8}),
    # the DCT runs over the last two dimensions of any tensor: an extra leading dimension is valid
    "defenses.restore.dct2": Example(restore.dct2, lambda: {"x": images(2)}, tensors=("x",),
                                     valid={"x": ("extra dimension",)}),
    "defenses.restore.idct2": Example(restore.idct2, lambda: {"x": images(2) - 0.5}, tensors=("x",),
                                      valid={"x": ("extra dimension",)}),
    "defenses.restore.frequency_rank": Example(restore.frequency_rank, lambda: {"height": 8, "width": 6}),
    "defenses.restore.RestoreSetup": Example(restore.RestoreSetup, lambda: {"name": "FI", "alpha": 0.2},
                                             names=("name",), mentions={"name": ("setup",)}),
    "defenses.restore.splitting_config": Example(restore.splitting_config, lambda: {
        "setup": _pi(), "image_shape": (3, 32, 32), "particles": 8, "survivors": 4, "passes": 3, "max_levels": 2,
        "strength": 0.5}),
    "defenses.restore.clean_sets": Example(restore.clean_sets, lambda: {
        "query": _query(), "images": _graded_images(), "labels": labels(), "classes": [0, 3], "per_set": 4, "seed": 1},
        images=("images",), labels=("labels",)),
    "defenses.restore.class_scorer": Example(restore.class_scorer, lambda: {
        "query": _query(), "setup": _pi(), "output": "probits", "sets": _graded_images(6).view(2, 3, 3, 32, 32),
        "classes": torch.tensor([0, 1])}, names=("output",), tensors=("sets", "classes")),
    "defenses.restore.any_class_scorer": Example(restore.any_class_scorer, lambda: {
        "query": _query(), "setup": _pi(), "output": "labels", "images": _graded_images(), "labels": labels(),
        "num_classes": 10}, images=("images",), labels=("labels",), names=("output",)),
    "defenses.restore.recover_any_class": Example(restore.recover_any_class, lambda: {
        "query": _query(), "images": _graded_images(), "labels": labels(), "setup": _pi(), "num_classes": 10,
        "output": "probits", "config": TINY_SPLITTING, "per_class": 1, "seed": 0},
        images=("images",), labels=("labels",), names=("output",)),
    "defenses.restore.calibrate_alpha": Example(restore.calibrate_alpha, lambda: {
        "query": _query("label"), "setup_name": "PI", "images": _graded_images(), "labels": labels(), "steps": 2,
        "seed": 0}, images=("images",), labels=("labels",), names=("setup_name",),
        mentions={"setup_name": ("setup",)}),
    "defenses.restore.Diagnosis": Example(restore.Diagnosis, lambda: _fields(_diagnosis()), record=True),
    "defenses.restore.diagnose": Example(restore.diagnose, lambda: {
        "query": _query(), "images": _graded_images(), "labels": labels(), "setup": _pi(), "output": "probits",
        "classes": [0, 1], "config": TINY_SPLITTING, "per_set": 2, "num_classes": 10, "seed": 0},
        images=("images",), labels=("labels",), names=("output",)),
    "defenses.restore.compare_maps": Example(restore.compare_maps, lambda: {"curves": [
        (torch.tensor([0.1, 0.5]), torch.tensor([-0.3, -0.6])),
        (torch.tensor([0.1, 0.2]), torch.tensor([-0.3, -0.6]))]}),
    # PI realisations hold NaN where a pixel is kept (`UNCHANGED`): NaN is their normal content
    "defenses.restore.recovered_asr": Example(restore.recovered_asr, lambda: {
        "query": _query("label"), "setup": _pi(), "realisations": _realisations(), "images": _graded_images(),
        "labels": labels(), "target": 3, "seed": 0}, images=("images",), labels=("labels",),
        tensors=("realisations",), valid={"realisations": ("NaN",)}),
    "defenses.restore.TriggerEstimate": Example(restore.TriggerEstimate, lambda: _fields(_estimate()), record=True),
    "defenses.restore.estimate_trigger": Example(restore.estimate_trigger, lambda: {
        "setup": _pi(), "realisations": _realisations(), "clean": _graded_images(4)}, images=("clean",),
        tensors=("realisations",), valid={"realisations": ("NaN",)}),
    # the message names the transform by what it is, a purification
    "defenses.restore.Purifier": Example(restore.Purifier, lambda: {
        "transform": "gram_schmidt", "strength": 0.5, "weights": _estimate().weights(), "mean": _estimate().mean},
        names=("transform",), tensors=("weights", "mean"), mentions={"transform": ("purification",)}),
    "defenses.restore.StrengthTrial": Example(restore.StrengthTrial, lambda: {"strength": 0.5, "accuracy": 0.9},
                                              record=True),
    "defenses.restore.select_purifier": Example(restore.select_purifier, lambda: {
        "query": _query("label"), "estimate": _estimate(), "images": _graded_images(), "labels": labels(),
        "transform": "mask", "max_accuracy_drop": 0.1}, images=("images",), labels=("labels",),
        names=("transform",), mentions={"transform": ("purification",)}),
}

# --- trap and replace ------------------------------------------------------------------------------------------------

_TRAP = {
    "defenses.trap_replace.TrapConfig": Example(trap_replace.TrapConfig, lambda: {
        "train": _recipe(), "split": "conv2"}, names=("split",)),
    "defenses.trap_replace.ReplaceConfig": Example(trap_replace.ReplaceConfig, lambda: {"holdout_size": 10},
                                                   names=("optimizer", "schedule", "augment")),
    "defenses.trap_replace.total_variation": Example(trap_replace.total_variation, lambda: {"x": images(2)},
                                                     tensors=("x",)),
    "defenses.trap_replace.trap_objective": Example(trap_replace.trap_objective, lambda: {
        "logits": torch.randn(4, 10, generator=torch.Generator().manual_seed(0)), "reconstruction": images(4) * 0.9,
        "x": images(4), "y": labels(4), "rec_weight": 10.0, "tv_weight": 0.1, "label_smoothing": 0.1},
        images=("x",), labels=("y",), tensors=("logits", "reconstruction")),
    "defenses.trap_replace.TrapNet": Example(trap_replace.TrapNet, lambda: {
        "classifier": model(), "split": "fc1", "reconstruction": None}, names=("split",)),
    "defenses.trap_replace.train_trap": Example(trap_replace.train_trap, lambda: {
        "net": _trap_net(), "train": dataset(), "recipe": _recipe(), "rec_weight": 10.0, "tv_weight": 0.1,
        "device": "cpu", "progress": False}, datasets=("train",)),
    "defenses.trap_replace.TrappedModel": Example(trap_replace.TrappedModel, lambda: {
        "net": _trap_net(), "config": _trap_config(), "key": "fuzz", "metrics": {}, "path": "", "loaded": False},
        record=True),
    "defenses.trap_replace.trap_address": Example(trap_replace.trap_address, lambda: {"config": _trap_config()}),
    "defenses.trap_replace.get_or_trap": Example(trap_replace.get_or_trap, lambda: {
        "config": _trap_config(), "store": _store(), "device": "cpu", "progress": False, "monitor_size": 10}),
    # CutMix only moves pixels and permutes labels: x is any 4-D tensor (tests/test_trap_replace.py pastes images of
    # constant value i to trace them), and y holds any class indices (no model says how many classes there are)
    "defenses.trap_replace.cutmix": Example(trap_replace.cutmix, lambda: {
        "x": images(4), "y": labels(4), "beta": 1.0, "gen": torch.Generator().manual_seed(0)},
        tensors=("x",), labels=("y",), valid={"y": ("out of range",)}),
    "defenses.trap_replace.replace_head": Example(trap_replace.replace_head, lambda: {
        "classifier": model(), "holdout": dataset(), "config": trap_replace.ReplaceConfig(epochs=1, batch_size=10),
        "base": _recipe(), "split": "fc1", "device": "cpu", "progress": False}, datasets=("holdout",),
        names=("split",)),
    "defenses.trap_replace.holdout_for": Example(trap_replace.holdout_for, lambda: {
        "config": trap_replace.ReplaceConfig(holdout_size=10), "base": MNIST_RECIPE}),
    "defenses.trap_replace.replace_address": Example(trap_replace.replace_address, lambda: {
        "trap": _trap_config(), "trap_key": "0123456789abcdef", "config": trap_replace.ReplaceConfig(holdout_size=10)}),
    "defenses.trap_replace.get_or_replace": Example(trap_replace.get_or_replace, lambda: {
        "trapped": _trapped(), "config": trap_replace.ReplaceConfig(epochs=1, holdout_size=10), "store": _store(),
        "device": "cpu", "progress": False, "monitor_size": 10}),
    "defenses.trap_replace.stem_features": Example(trap_replace.stem_features, lambda: {
        "classifier": model(), "images": images(4), "split": "fc1", "batch_size": 3}, images=("images",),
        names=("split",)),
    "defenses.trap_replace.principal_components": Example(trap_replace.principal_components, lambda: {
        "features": _features(), "k": 2}, tensors=("features",)),
    "defenses.trap_replace.CentroidDistances": Example(trap_replace.CentroidDistances, lambda: {
        "to_source": 1.0, "to_target": 2.0}, record=True),
    "defenses.trap_replace.FeatureScatter": Example(trap_replace.FeatureScatter, lambda: _fields(_scatter()),
                                                    record=True),
    "defenses.trap_replace.scatter_of": Example(trap_replace.scatter_of, lambda: {
        "clean_target": _features(seed=0), "clean_source": _features(seed=1), "poisoned_source": _features(seed=2)},
        tensors=("clean_target", "clean_source", "poisoned_source")),
    "defenses.trap_replace.feature_scatter": Example(trap_replace.feature_scatter, lambda: {
        "classifier": model(), "clean_target": images(3), "clean_source": images(4), "poisoned_source": images(5),
        "split": "fc1"}, images=("clean_target", "clean_source", "poisoned_source"), names=("split",)),
    "defenses.trap_replace.scatters_by_source": Example(trap_replace.scatters_by_source, lambda: {
        "classifier": model(), "images": images(20), "labels": labels(20), "triggered": images(20).flip(-1),
        "target": 0, "split": "fc1"}, images=("images", "triggered"), labels=("labels",), names=("split",)),
    "defenses.trap_replace.ScatterComparison": Example(trap_replace.ScatterComparison, lambda: {
        "attack": "badnets", "target": 0, "class_names": tuple(str(k) for k in range(10)), "without": {1: _scatter()},
        "with_reconstruction": {1: _scatter()}}, record=True),
}

EXAMPLES: dict[str, Example] = {**_BDMAE, **_SPLITTING, **_INTERFACE, **_LRED, **_REGISTERED, **_RESTORE, **_TRAP}
