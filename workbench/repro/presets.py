"""Experiment presets per scale, and the small models this project commits under `data/assets/`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from workbench.core.attacks import PoisonConfig, make_attack
from workbench.core.scales import pick
from workbench.core.training import TrainConfig

#: The target class of every all-to-one attack in the BDMAE and T&R reproductions: class 0 on CIFAR-10 (as the
#: quickstart), class 1 on GTSRB ([T&R] App. B.1; GTSRB's class 0 has too few images for the clean-label LC attack).
#: BDMAE draws random targets; fixing them lets both papers' notebooks share models.
TARGETS = {"cifar10": 0, "gtsrb": 1}


@dataclass(frozen=True)
class ModelRecipe:
    """How a paper's preset trains its classifiers: the `TrainConfig` fields it sets; None leaves `TrainConfig`'s
    default. `config` is the one place where a preset becomes a `TrainConfig`."""

    model: str
    epochs: int
    lr: float
    train_size: int | None = None  # None: the whole training split (minus the clean holdout)
    model_options: tuple[tuple[str, Any], ...] = ()
    augment: str | None = None
    test_size: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    label_smoothing: float | None = None

    def config(self, dataset: str, *, poison: PoisonConfig | None = None, seed: int = 0, **fields: Any) -> TrainConfig:
        """The `TrainConfig` of one model on `dataset` (`fields`: any other `TrainConfig` field, e.g.
        `all_classes_poison`, `logit_anchor`)."""
        chosen = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        return TrainConfig(dataset=dataset, poison=poison, seed=seed, **chosen, **fields)


@dataclass(frozen=True)
class QuickstartPreset:
    """Sizes of the quickstart at one scale."""

    model: str
    train_size: int | None  # None = the whole training split (minus the 5 % clean holdout)
    epochs: int
    lr: float
    # test images the models are evaluated on: their test metrics after training, the notebook's and BDMAE's images
    # (a seeded stratified subset; None = the full 10,000-image test split)
    test_size: int | None

    @property
    def recipe(self) -> ModelRecipe:
        return ModelRecipe(self.model, self.epochs, self.lr, train_size=self.train_size, test_size=self.test_size)


QUICKSTART = {
    # smoke: checks the plumbing in seconds; the model is barely trained. Its 500 test images (and those of BDMAE's
    # smoke models, trained with this recipe) keep the evaluation after training from costing more than the
    # training: on the full test split it took 7.5 of a BDMAE smoke model's 9 s
    "smoke": QuickstartPreset("resnet_small", 2000, 2, 0.05, 500),
    # cpu: ~10 minutes on 2 cores; CA >= 0.80 and ASR >= 0.95 on the full test split
    "cpu": QuickstartPreset("resnet_small", None, 8, 0.2, None),
    # gpu: BDMAE's backbone at half the paper preset's epochs (BDMAE's main model, sized with `jobs plan`)
    "gpu": QuickstartPreset("resnet18", None, 30, 0.1, None),
    # paper: BDMAE's backbone (ResNet-18 from scratch); epochs and lr are our choice (not published)
    "paper": QuickstartPreset("resnet18", None, 60, 0.1, None),
}


def quickstart_config(scale: str | None = None, *, seed: int = 0) -> TrainConfig:
    """CIFAR-10 poisoned with BDMAE's random-colour 3x3 BadNets patch, 10 % poison ratio, target 0."""
    poison = PoisonConfig(make_attack("bdmae_badnets_colour"), target=0, ratio=0.1, seed=seed)
    return pick(scale, QUICKSTART).recipe.config("cifar10", poison=poison, seed=seed)

