"""Throughput benchmarks: `python -m workbench bench bdmae`.

Measures, in one run and on the same images: BDMAE batched over `batch` images, the same algorithm one image
at a time, and the compute floor (the same number of MAE restorations and label queries as plain batch-64
forward passes, i.e. what any implementation must at least spend).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from workbench.core.attacks import backdoor_test_set
from workbench.core.mae import MAERestorer, random_token_masks
from workbench.core.mae_training import load_workbench_mae
from workbench.core.query import QueryModel
from workbench.core.runtime import resolve_device
from workbench.core.training import get_or_train
from workbench.defenses.bdmae import BDMAE
from workbench.repro.presets import quickstart_config


def bench_bdmae(*, batch: int = 64, loop_images: int = 8, device: str = "auto") -> dict[str, Any]:
    """Images per second of batched BDMAE, the one-image loop and the compute floor, on triggered CIFAR-10
    test images with the quickstart model and the workbench's tiny MAE."""
    dev = resolve_device(device)
    config = quickstart_config("cpu")
    trained = get_or_train(config, device=str(dev))
    x, _ = backdoor_test_set(config.splits().test, config.poison.attack, config.poison.target)
    x = x[:batch].to(dev)
    classifier = QueryModel(trained.model, "label", batch_size=batch)
    restorer = MAERestorer(load_workbench_mae(device=str(dev)), batch_size=batch)

    start = time.perf_counter()
    result = BDMAE(classifier, restorer, batch_images=batch).purify(x, seed=0)
    batched_seconds = time.perf_counter() - start

    looped = BDMAE(classifier, restorer, batch_images=1)
    start = time.perf_counter()
    for i in range(loop_images):
        looped.purify(x[i:i + 1], seed=0, first_index=i)
    loop_seconds_per_image = (time.perf_counter() - start) / loop_images

    # the floor: the same restorations (75 % masks) and label queries as plain forward passes of `batch` images
    gen = torch.Generator().manual_seed(0)
    masks = random_token_masks(batch, restorer.grid**2, 0.75, gen)
    start = time.perf_counter()
    with torch.no_grad():
        for chunk in range(0, result.restorations, batch):
            size = min(batch, result.restorations - chunk)
            restorer.restore(x[:size], masks[:size])
        for chunk in range(0, result.queries, batch):
            classifier.labels(x[: min(batch, result.queries - chunk)])
    floor_seconds = time.perf_counter() - start
    return {
        "images": batch, "device": str(dev), "restorations": result.restorations, "queries": result.queries,
        "batched_images_per_s": batch / batched_seconds,
        "loop_images_per_s": 1 / loop_seconds_per_image,
        "floor_images_per_s": batch / floor_seconds,
        "speedup_over_loop": loop_seconds_per_image * batch / batched_seconds,
        "batched_over_floor": batched_seconds / floor_seconds,
    }
