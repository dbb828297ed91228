"""Backdoor attacks: batched trigger transforms and the poisoning builder.

`make_attack(name, **params)` builds a trigger by family ("badnets", "blended", "sig", "wanet", "additive",
"smooth"; "patch" holds explicit pixels, e.g. LBA's optimised trigger) or by the name of a paper's configuration
(`ATTACK_PRESETS`, notes in `PRESET_NOTES`).
"""

from workbench.core.attacks import presets as _presets  # noqa: F401 - registers the paper presets
from workbench.core.attacks.additive import PATTERN_NOTES, Additive, Smooth
from workbench.core.attacks.base import (
    ATTACK_FAMILIES,
    ATTACK_PRESETS,
    PRESET_NOTES,
    Attack,
    attack_from_dict,
    make_attack,
)
from workbench.core.attacks.blending import SIG, Blended
from workbench.core.attacks.input_aware import InputAware, InputAwareConfig
from workbench.core.attacks.latent import LBA_LAYERS, LatentInjection, PatchTrigger, optimise_latent_trigger
from workbench.core.attacks.patches import BadNets, DynamicBadNets, per_class_triggers
from workbench.core.attacks.poisoning import (
    AdversarialStep,
    AllClassesPoison,
    PoisonConfig,
    PoisonedDataset,
    backdoor_test_set,
    poison_all_classes,
    poison_dataset,
)
from workbench.core.attacks.warping import WaNet

__all__ = [
    "ATTACK_FAMILIES",
    "ATTACK_PRESETS",
    "LBA_LAYERS",
    "PATTERN_NOTES",
    "PRESET_NOTES",
    "SIG",
    "Additive",
    "AdversarialStep",
    "AllClassesPoison",
    "Attack",
    "BadNets",
    "Blended",
    "DynamicBadNets",
    "InputAware",
    "InputAwareConfig",
    "LatentInjection",
    "PatchTrigger",
    "PoisonConfig",
    "PoisonedDataset",
    "Smooth",
    "WaNet",
    "attack_from_dict",
    "backdoor_test_set",
    "make_attack",
    "optimise_latent_trigger",
    "per_class_triggers",
    "poison_all_classes",
    "poison_dataset",
]
