"""The trained artefacts this project commits under `data/assets/`, so notebooks and tests load instead of
retraining. `python -m workbench assets` (or `make assets`) trains whatever is missing: the tiny MAE first
(`data/assets/mae/`), then the models (`data/assets/models/`)."""

from __future__ import annotations

from collections.abc import Callable

from workbench.core.attacks import InputAwareConfig, make_attack
from workbench.core.training import TrainConfig
from workbench.repro.bdmae_experiments import (
    badnets_setting,
    challenging_settings,
    clean_setting,
    trigger_variants,
)
from workbench.repro.presets import quickstart_config


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


#: name -> config of every committed model (cpu scale); the quickstart model first.
COMMITTED_MODELS: dict[str, Callable[[], TrainConfig | InputAwareConfig]] = {
    "quickstart-cpu": lambda: quickstart_config("cpu"),
    **{name: (lambda c=config: c) for name, config in _bdmae_models().items()},
}
