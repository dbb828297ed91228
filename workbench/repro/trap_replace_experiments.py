"""Trap and Replace experiments: the attacks, recipes and runs behind `41_trap_replace_tables.ipynb`.

Settings from the paper (Sec. 4.1, App. B): WRN-16-1 on CIFAR-10 and GTSRB; target class 0 on CIFAR-10 and 1 on
GTSRB; all-to-one dirty-label poisoning of 10 % of the training set (clean-label SIG and LCBA poison target-class
images only: 10 % of the set is every target-class image when classes are balanced); the clean holdout is 5 % of the
training set; stage 1 and normal training use Adam 1e-3, weight decay 5e-4, cosine schedule, batch 256, crop + flip.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from workbench.core.attacks import AdversarialStep, PoisonConfig, make_attack
from workbench.core.scales import pick
from workbench.core.training import TrainConfig
from workbench.core.validation import check_name
from workbench.defenses.trap_replace import ReplaceConfig, TrapConfig

TARGETS = {"cifar10": 0, "gtsrb": 1}  # App. B.1
POISON_RATIO = 0.1  # Sec. 4.1


@dataclass(frozen=True)
class AttackSpec:
    """One of the ten attacks (App. B.1): a registered attack preset, and whether it is clean-label / adversarial."""

    preset: str
    clean_label: bool = False
    adversarial: bool = False  # LCBA: PGD against a clean surrogate before the trigger


#: Table 1's rows. The trigger files of ABL / I-BAU are unavailable: `PRESET_NOTES[preset]` says what replaces each.
ATTACKS: dict[str, AttackSpec] = {
    "BadNet-Grid": AttackSpec("bdmae_badnets_checkerboard"),
    "BadNet-White": AttackSpec("tr_badnet_white"),
    "Blend": AttackSpec("tr_blend"),
    "l0-Invisible": AttackSpec("l0_invisible"),
    "l2-Invisible": AttackSpec("l2_invisible"),
    "Smooth": AttackSpec("tr_smooth"),
    "Trojan-SQ": AttackSpec("trojan_sq"),
    "Trojan-WM": AttackSpec("trojan_wm"),
    "SIG": AttackSpec("tr_sig", clean_label=True),
    "LCBA": AttackSpec("lc_four_corners", clean_label=True, adversarial=True),
}

#: the four attacks of the issue's acceptance (and of most ablation tables)
CORE_ATTACKS = ("BadNet-Grid", "Blend", "l2-Invisible", "SIG")


@dataclass(frozen=True)
class TRPreset:
    """Sizes of the T&R tables at one scale.

    Args:
        train_size: training images (a seeded stratified subset; None = the whole split minus the 5 % holdout).
        epochs: epochs of normal training and of stage 1 (paper: 200).
        replace_epochs: epochs of stage 2 on the holdout (paper: "same as stage 1"; the public code: 100).
        batch_size: batch of normal training and stage 1 (paper: 256).
        attacks: Table 1's rows run by default (every row stays available by name).
    """

    train_size: int | None
    epochs: int
    replace_epochs: int
    batch_size: int = 256
    attacks: tuple[str, ...] = CORE_ATTACKS


PRESETS = {
    "smoke": TRPreset(train_size=600, epochs=1, replace_epochs=1, attacks=("BadNet-Grid",)),
    "cpu": TRPreset(train_size=20_000, epochs=12, replace_epochs=30),
    "paper": TRPreset(train_size=None, epochs=200, replace_epochs=100, attacks=tuple(ATTACKS)),
}


def base_recipe(dataset: str, scale: str | None, *, seed: int = 0) -> TrainConfig:
    """Normal training of WRN-16-1 (App. B.2), clean."""
    preset = pick(scale, PRESETS)
    return TrainConfig(dataset=dataset, model="wrn16_1", train_size=preset.train_size, holdout_fraction=0.05,
                       epochs=preset.epochs, batch_size=preset.batch_size, optimizer="adam", lr=1e-3,
                       weight_decay=5e-4, schedule="cosine", label_smoothing=0.0, augment="crop_flip", seed=seed)


def poison_config(dataset: str, attack: str, scale: str | None, *, ratio: float = POISON_RATIO,
                  seed: int = 0) -> PoisonConfig:
    """The poisoning of one attack: all-to-one toward `TARGETS[dataset]`, `ratio` of the training set."""
    spec = ATTACKS[check_name("attack", attack, ATTACKS)]
    adversarial = (AdversarialStep(surrogate=base_recipe(dataset, scale, seed=seed).to_dict())
                   if spec.adversarial else None)
    return PoisonConfig(make_attack(spec.preset), target=TARGETS[dataset], ratio=ratio, clean_label=spec.clean_label,
                        adversarial=adversarial, seed=seed)


def trap_config(dataset: str, attack: str | None, scale: str | None, *, reconstruct: bool = True,
                ratio: float = POISON_RATIO, rec_weight: float = 10.0, tv_weight: float = 0.1,
                split: str | None = None, seed: int = 0) -> TrapConfig:
    """Stage 1 for one attack (None = the clean training set, Table 10). `reconstruct=False` is normal training:
    the "No defense" model and the no-reconstruction ablation's stage 1."""
    recipe = base_recipe(dataset, scale, seed=seed)
    if attack is not None:
        recipe = replace(recipe, poison=poison_config(dataset, attack, scale, ratio=ratio, seed=seed))
    return TrapConfig(recipe, rec_weight=rec_weight if reconstruct else 0.0, tv_weight=tv_weight, split=split)


def replace_config(scale: str | None, *, holdout_size: int | None = None, seed: int = 0) -> ReplaceConfig:
    """Stage 2 (App. B.2: the stage-1 optimiser, batch 32; dropout 0.5, label smoothing 0.1, CutMix)."""
    return ReplaceConfig(epochs=pick(scale, PRESETS).replace_epochs, holdout_size=holdout_size, seed=seed)
