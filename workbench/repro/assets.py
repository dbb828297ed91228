"""The trained artefacts this project commits under `data/assets/`, so notebooks and tests load instead of
retraining. `python -m workbench assets` (or `make assets`) trains whatever is missing: the tiny MAE first
(`data/assets/mae/`), then the models (`data/assets/models/`)."""

from __future__ import annotations

from collections.abc import Callable

from workbench.core.attacks import InputAwareConfig, make_attack
from workbench.core.training import TrainConfig
from workbench.defenses.trap_replace import TrapConfig
from workbench.repro.bdmae import (
    badnets_setting,
    challenging_settings,
    clean_setting,
    trigger_variants,
)
from workbench.repro.lred import OTHER_DATASETS, classifier_config
from workbench.repro.presets import quickstart_config
from workbench.repro.restore import train_config as restore_train_config
from workbench.repro.trap_replace import trap_config


def _bdmae_models() -> dict[str, TrainConfig | InputAwareConfig]:
    models = {}
    for dataset in ("cifar10", "gtsrb"):
        models[f"bdmae-{dataset}-badnets"] = badnets_setting(dataset, make_attack("bdmae_badnets_colour"), "cpu").train
        models[f"bdmae-{dataset}-clean"] = clean_setting(dataset, "cpu").train
        for name, setting in challenging_settings(dataset, "cpu").items():
            models[f"bdmae-{dataset}-{name.lower()}"] = setting.train
        for name, attack in trigger_variants().items():
            models[f"bdmae-{dataset}-{name}"] = badnets_setting(dataset, attack, "cpu", reduced=True).train
    return models


#: name -> config of every committed model (cpu scale); the quickstart model first. The two T&R models (normal
#: training and stage 1 with the reconstruction head, l2-Invisible) back the Fig. 2 test of the stem features; the
#: last two are the defence matrix's WaNet and MNIST subjects.
COMMITTED_MODELS: dict[str, Callable[[], TrainConfig | InputAwareConfig | TrapConfig]] = {
    "quickstart-cpu": lambda: quickstart_config("cpu"),
    **{name: (lambda c=config: c) for name, config in _bdmae_models().items()},
    "tr-cifar10-l2-invisible-plain": lambda: trap_config("cifar10", "l2-Invisible", "cpu", reconstruct=False).train,
    "tr-cifar10-l2-invisible-trapped": lambda: trap_config("cifar10", "l2-Invisible", "cpu"),
    # the defence matrix's two subjects that no paper notebook commits (notebook 50)
    "restore-cifar10-wanet": lambda: restore_train_config("cifar10", "wanet", "cpu"),
    "lred-mnist-0": lambda: classifier_config(OTHER_DATASETS["mnist"], 0, "cpu"),
}
