"""Throughput benchmarks: `python -m workbench bench bdmae` and `python -m workbench bench train`.

`bench train` (issue 26): images/s of classifier training steps per architecture and device, on the GPU with and
without the trainer's fast path (see `workbench.core.training`), so one run shows what the fast path and the GPU
buy on this machine.

`bench bdmae`:

Measures, in one run and on the same images: BDMAE batched over `batch` images, the same algorithm one image
at a time, and the compute floor: the same MAE restorations (the very token masks BDMAE restored, recorded and
replayed) and as many label queries, as plain forward passes of `batch` images, i.e. what any implementation of
the algorithm must at least spend. Replaying the recorded masks matters: the MAE encoder's cost grows with the
visible tokens, and refinement and adaptive-restoration masks hide far fewer tokens than the 75 % random masks
(on the 14 x 14-token tiny MAE, ~130-160 visible tokens against ~50-60), so a floor of 75 % masks would be
cheaper than any implementation could be.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch

from workbench.core.attacks import backdoor_test_set
from workbench.core.data import ImageDataset, dataset_spec
from workbench.core.mae import MAERestorer
from workbench.core.mae_training import load_workbench_mae
from workbench.core.query import QueryModel
from workbench.core.runtime import make_generator, resolve_device
from workbench.core.training import FAST_GPU_VARIABLE, TrainConfig, get_or_train, new_model, train_classifier
from workbench.core.validation import WorkbenchError, check_name, check_non_negative, check_positive_int
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


#: the dataset each registered architecture is benchmarked on: the one the papers' presets train it on (images are
#: random, only the shape matters): LeNet-5 on MNIST (REStore, L-RED), the small ResNet of every smoke / cpu preset,
#: ResNet-18 (BDMAE, L-RED, REStore at paper scale) and WRN-16-1 (T&R) on CIFAR-10
TRAIN_BENCH_DATASETS = {"lenet5": "mnist", "resnet_small": "cifar10", "resnet18": "cifar10", "wrn16_1": "cifar10"}


@contextmanager
def _fast_gpu(enabled: bool) -> Iterator[None]:
    """`WORKBENCH_FAST_GPU` set for the block (the trainer reads it at every run), then restored."""
    before = os.environ.get(FAST_GPU_VARIABLE)
    os.environ[FAST_GPU_VARIABLE] = "1" if enabled else "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ[FAST_GPU_VARIABLE]
        else:
            os.environ[FAST_GPU_VARIABLE] = before


def _train_images_per_s(model_name: str, dev: torch.device, batch: int, steps: int, warmup: int) -> dict[str, Any]:
    """Images/s of `steps` training steps of `model_name` on `dev`, through `train_classifier` itself (forward,
    loss, backward, optimiser step, crop + flip augmentation), after `warmup` steps of the same run's model."""
    spec = dataset_spec(TRAIN_BENCH_DATASETS[model_name])
    config = TrainConfig(dataset=spec.name, model=model_name, epochs=1, batch_size=batch, lr=0.01,
                         schedule="constant")
    model = new_model(config)
    gen = make_generator(0)
    images = torch.randint(0, 256, (batch * max(steps, warmup), spec.channels, spec.image_size, spec.image_size),
                           dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, spec.num_classes, (len(images),), generator=gen)
    data = ImageDataset(spec.name, images, labels, spec.class_names, "random")
    if warmup:  # kernels loaded, memory allocated, the model's layout set; not timed
        train_classifier(model, data.subset(torch.arange(batch * warmup)), config, device=str(dev), progress=False)
    # an epoch's seconds end after a check of every weight on the host, so a GPU's queued work is inside them
    history = train_classifier(model, data.subset(torch.arange(batch * steps)), config, device=str(dev),
                               progress=False)
    seconds = history[-1]["seconds"]
    return {"model": model_name, "device": str(dev), "batch": batch, "steps": steps, "warmup": warmup,
            "seconds": seconds, "images_per_s": batch * steps / seconds}


def bench_train(*, models: str | Sequence[str] | None = None, device: str = "auto", batch: int = 128,
                steps: int = 20, warmup: int = 3, cpu_steps: int | None = None) -> list[dict[str, Any]]:
    """Images per second of classifier training steps (forward, loss, backward, optimiser step, as
    `train_classifier` runs them on random images of each model's dataset shape) after `warmup` untimed steps.

    On CUDA each model is timed on the fast path (issue 26: data on the device, bf16 autocast, channels_last,
    deterministic algorithms) and on the plain path (`WORKBENCH_FAST_GPU=0`), and on any device other than the CPU
    also on the CPU, so one run shows the ratios. The figures are machine-specific.

    Args:
        models: registered model names, a list or one comma-separated string (default: all four,
            `TRAIN_BENCH_DATASETS`).
        device: where to train ("auto" = GPU if available).
        batch: images per training step.
        steps: timed steps per model and path.
        warmup: untimed steps before them (0 = none).
        cpu_steps: timed steps of the CPU comparison when `device` is not the CPU (default: `steps`, at most 5: a
            CPU's images/s are steady, and a ResNet-18 step there takes seconds).

    Returns:
        One dict per model and path: model, device, path ("fast" or "plain"), batch, steps, warmup, seconds,
        images_per_s.
    """
    if models is None:
        names = list(TRAIN_BENCH_DATASETS)
    elif isinstance(models, str):
        names = [name.strip() for name in models.split(",")]
    elif isinstance(models, Sequence) and all(isinstance(name, str) for name in models):
        names = list(models)
    else:
        raise WorkbenchError(f"models must be model names (a list or a comma-separated string), got {models!r}")
    if not names:
        raise WorkbenchError("models is empty: name at least one model, e.g. resnet18")
    for name in names:
        check_name("model (models)", name, TRAIN_BENCH_DATASETS)
    check_positive_int(batch, "batch")
    check_positive_int(steps, "steps")
    check_non_negative(warmup, "warmup", integer=True)
    check_positive_int(cpu_steps, "cpu_steps", optional=True)
    dev = resolve_device(device)
    paths = [(dev, "fast", steps), (dev, "plain", steps)] if dev.type == "cuda" else [(dev, "plain", steps)]
    if dev.type != "cpu":
        paths.append((torch.device("cpu"), "plain", min(steps, 5) if cpu_steps is None else cpu_steps))
    rows = []
    for name in names:
        for where, path, timed in paths:
            with _fast_gpu(path == "fast"):
                rows.append({**_train_images_per_s(name, where, batch, timed, warmup), "path": path})
    return rows


def train_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """`bench_train`'s rows as one line per model: images/s per device and path, and the fast path's ratios to the
    plain GPU path and to the CPU where measured."""
    frame = pd.DataFrame(rows)
    frame["column"] = frame["device"].str.split(":").str[0] + " " + frame["path"]
    table = frame.pivot_table(index="model", columns="column", values="images_per_s", sort=False)
    table.columns.name = None
    if {"cuda fast", "cuda plain"} <= set(table.columns):
        table["fast / plain"] = table["cuda fast"] / table["cuda plain"]
    if {"cuda fast", "cpu plain"} <= set(table.columns):
        table["fast / cpu"] = table["cuda fast"] / table["cpu plain"]
    return table.reset_index()
