"""The resumable training loop behind the workbench's own pretrained models (the tiny MAE, the tiny diffusion
model): AdamW-style steps on freshly drawn batches, a warm-up + cosine learning rate, and a checkpoint every
`every` steps (weights, optimiser state, loss curve, seconds) from which an interrupted run resumes to exactly
the weights an uninterrupted one reaches (the batch draws of the finished steps are replayed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from workbench.core.artefacts import ArtefactStore, config_key
from workbench.core.storage import atomic_write
from workbench.core.validation import WorkbenchError


def load_pretrained(kind: str, config: Any, *, name: str, command: str) -> dict[str, torch.Tensor]:
    """The stored float32 weights of the workbench's pretrained `kind` model for recipe `config` (from the cache or
    the committed `data/assets/<kind>`); a missing one raises with the `command` that trains it."""
    found = ArtefactStore().load(kind, config_key(config.to_dict()), config.to_dict())
    if found is None:
        raise WorkbenchError(f"the workbench's {name} for this recipe is not trained yet: run {command}")
    return {k: v.float() for k, v in found.tensors.items()}


def warmup_cosine(step: int, *, lr: float, warmup_steps: int, steps: int) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to 0 at `steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * 0.5 * (1 + math.cos(math.pi * progress))


def run_resumable(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, steps: int,
                  lr_at: Callable[[int], float], batch_loss: Callable[[], torch.Tensor],
                  replay: Callable[[], object], state_file: Path, desc: str, progress: bool = True,
                  every: int = 100) -> tuple[list[float], float]:
    """Train `model` for `steps` steps, resuming from `state_file` if an earlier run left one.

    Args:
        model, optimizer: what is trained (the model in train mode) and how.
        steps: total steps.
        lr_at: learning rate of each step.
        batch_loss: draws the next batch and returns its loss (a scalar with gradients).
        replay: draws the next batch as `batch_loss` would, without computing anything (run once per finished
            step on resuming, so the data order goes on where it stopped).
        state_file: the checkpoint, written atomically every `every` steps and at the end.
        desc: the progress bar's label.

    Returns:
        (loss of every step, training seconds over all runs).
    """
    start, losses, seconds = 0, [], 0.0
    if state_file.is_file():
        state = load_file(state_file)
        model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
        _load_optimizer(optimizer, {k[4:]: v for k, v in state.items() if k.startswith("opt.")})
        meta = state["meta"].tolist()
        start, seconds = int(meta[0]), float(meta[1])
        losses = state["losses"].tolist()
    for _ in range(start):
        replay()
    bar = tqdm(total=steps, initial=start, desc=desc, disable=not progress)
    model.train()
    tick = time.time()
    for step in range(start, steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = batch_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.update()
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if (step + 1) % every == 0 or step + 1 == steps:
            seconds += time.time() - tick
            tick = time.time()
            _checkpoint(state_file, model, optimizer, step + 1, seconds, losses)
    bar.close()
    return losses, seconds


def _checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, seconds: float,
                losses: list[float]) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for index, param_state in optimizer.state_dict()["state"].items():
        for name, value in param_state.items():
            tensors[f"opt.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
    tensors["meta"] = torch.tensor([float(step), seconds], dtype=torch.float64)
    tensors["losses"] = torch.tensor(losses, dtype=torch.float64)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp)))


def _load_optimizer(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    state = optimizer.state_dict()
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    state["state"] = per_param
    optimizer.load_state_dict(state)
