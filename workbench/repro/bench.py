"""Throughput benchmarks: `python -m workbench bench bdmae`.

Measures, in one run and on the same images: BDMAE batched over `batch` images, the same algorithm one image
at a time, and the compute floor: the same MAE restorations (the very token masks BDMAE restored, recorded and
replayed) and as many label queries, as plain forward passes of `batch` images, i.e. what any implementation of
the algorithm must at least spend. Replaying the recorded masks matters: the MAE encoder's cost grows with the
visible tokens, and refinement and adaptive-restoration masks hide far fewer tokens than the 75 % random masks
(on the 14 x 14-token tiny MAE, ~130-160 visible tokens against ~50-60), so a floor of 75 % masks would be
cheaper than any implementation could be.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from workbench.core.attacks import backdoor_test_set
from workbench.core.mae import MAERestorer
from workbench.core.mae_training import load_workbench_mae
from workbench.core.query import QueryModel
from workbench.core.runtime import resolve_device
from workbench.core.training import get_or_train
from workbench.core.validation import check_positive_int
from workbench.defenses.bdmae import BDMAE
from workbench.repro.presets import quickstart_config


class _RecordingRestorer(MAERestorer):
    """An `MAERestorer` that keeps every token mask it restores, for the floor's replay."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorded: list[torch.Tensor] = []

    def predict(self, x: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        self.recorded.append(token_mask.cpu())
        return super().predict(x, token_mask)


def bench_bdmae(*, batch: int = 64, loop_images: int | None = None, device: str = "auto") -> dict[str, Any]:
    """Images per second of batched BDMAE, the one-image loop and the compute floor, on triggered CIFAR-10
    test images with the quickstart model and the workbench's tiny MAE.

    Args:
        batch: images purified together (and the batch of the MAE and classifier forward passes).
        loop_images: images timed in the one-at-a-time loop (default: the same `batch` images, so both
            timings see the same per-image costs).
    """
    check_positive_int(batch, "batch")
    check_positive_int(loop_images, "loop_images", optional=True)
    dev = resolve_device(device)
    config = quickstart_config("cpu")
    trained = get_or_train(config, device=str(dev))
    x, _ = backdoor_test_set(config.splits().test, config.poison.attack, config.poison.target)
    x = x[:batch].to(dev)
    classifier = QueryModel(trained.model, "label", batch_size=batch)
    mae = load_workbench_mae(device=str(dev))
    recorder = _RecordingRestorer(mae, batch_size=batch)
    loop_images = batch if loop_images is None else min(loop_images, batch)

    start = time.perf_counter()
    result = BDMAE(classifier, recorder, batch_images=batch).purify(x, seed=0)
    batched_seconds = time.perf_counter() - start

    plain = MAERestorer(mae, batch_size=batch)  # the loop and the floor need no recording
    looped = BDMAE(classifier, plain, batch_images=1)
    start = time.perf_counter()
    for i in range(loop_images):
        looped.purify(x[i:i + 1], seed=0, first_index=i)
    loop_seconds_per_image = (time.perf_counter() - start) / loop_images

    # the floor: BDMAE's own restorations and as many label queries, as plain forward passes of `batch` images
    masks = torch.cat(recorder.recorded)
    images = x[torch.arange(len(masks), device=x.device) % batch]
    start = time.perf_counter()
    plain.restore(images, masks)
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
