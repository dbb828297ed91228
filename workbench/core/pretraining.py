"""The resumable training loop behind the workbench's own pretrained models (the tiny MAE, the tiny diffusion
model): AdamW-style steps on freshly drawn batches, a warm-up + cosine learning rate, and a checkpoint every
`every` steps (weights, optimiser state, loss curve, seconds) from which an interrupted run resumes to exactly
the weights an uninterrupted one reaches (the batch draws of the finished steps are replayed).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from workbench.core.artefacts import ArtefactStore, config_key
from workbench.core.data import check_dataset_names
from workbench.core.storage import atomic_write, canonical_json
from workbench.core.validation import (
    WorkbenchError,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_seed,
)


def check_recipe(config: Any) -> None:
    """The settings every pretraining recipe shares (the tiny MAE's, the tiny diffusion model's)."""
    check_dataset_names(config.datasets)
    check_positive_int(config.steps, "steps")
    check_positive_int(config.batch_size, "batch_size")
    check_non_negative(config.warmup_steps, "warmup_steps", integer=True)
    check_positive(config.lr, "lr")
    check_non_negative(config.weight_decay, "weight_decay")
    check_seed(config.split_seed, "split_seed")
    check_seed(config.seed)


def load_pretrained(kind: str, config: Any, *, name: str, command: str) -> dict[str, torch.Tensor]:
    """The stored float32 weights of the workbench's pretrained `kind` model for recipe `config` (from the cache or
    the committed `data/assets/<kind>`); a missing one raises with the `command` that trains it."""
    found = ArtefactStore().load(kind, config_key(config.to_dict()), config.to_dict())
    if found is None:
        raise WorkbenchError(f"the workbench's {name} for this recipe is not trained yet: run {command}")
    return {k: v.float() for k, v in found.tensors.items()}


def warmup_cosine(step: int, *, lr: float, warmup_steps: int, steps: int) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to 0 at `steps`."""
    check_non_negative(step, "step", integer=True)
    check_positive(lr, "lr")
    check_non_negative(warmup_steps, "warmup_steps", integer=True)
    check_positive_int(steps, "steps")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * 0.5 * (1 + math.cos(math.pi * progress))


def run_resumable(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, steps: int,
                  lr_at: Callable[[int], float], batch_loss: Callable[[], torch.Tensor],
                  replay: Callable[[], object], state_file: Path, recipe: dict[str, Any], desc: str,
                  progress: bool = True, every: int = 100) -> tuple[list[float], float]:
    """Train `model` for `steps` steps, resuming from `state_file` if an earlier run left one.

    Args:
        model, optimizer: what is trained (the model in train mode) and how.
        steps: total steps.
        lr_at: learning rate of each step.
        batch_loss: draws the next batch and returns its loss (a scalar with gradients).
        replay: draws the next batch as `batch_loss` would, without computing anything (run once per finished
            step on resuming, so the data order goes on where it stopped).
        state_file: the checkpoint, written atomically every `every` steps and at the end.
        recipe: the training recipe (JSON values), recorded in the checkpoint: a checkpoint of another recipe is
            refused, and one that cannot be read (truncated) is discarded with a warning.
        desc: the progress bar's label.

    Returns:
        (loss of every step, training seconds over all runs).
    """
    check_positive_int(steps, "steps")
    check_positive_int(every, "every")
    start, losses, seconds = 0, [], 0.0
    recipe_json = canonical_json(recipe)
    state = _read_checkpoint(state_file, recipe_json) if state_file.is_file() else None
    if state is not None:
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
            _checkpoint(state_file, model, optimizer, step + 1, seconds, losses, recipe_json)
    bar.close()
    return losses, seconds


def _read_checkpoint(path: Path, recipe_json: str) -> dict[str, torch.Tensor] | None:
    """The checkpoint's tensors if it belongs to `recipe_json`; None (with a warning) if it cannot be read."""
    try:
        with safe_open(str(path), "pt") as handle:
            recorded = (handle.metadata() or {}).get("recipe")
            state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as exc:
        warnings.warn(f"discarding the unreadable checkpoint {path} ({exc}); training starts from step 0",
                      stacklevel=3)
        path.unlink(missing_ok=True)
        return None
    if recorded is None:  # written before checkpoints recorded their recipe: it may be another recipe's
        warnings.warn(f"discarding the checkpoint {path}: it does not record its recipe; training starts from step 0",
                      stacklevel=3)
        path.unlink(missing_ok=True)
        return None
    if recorded != recipe_json:
        raise WorkbenchError(f"the checkpoint {path} belongs to another training recipe; it is not resumed. Delete "
                             "it, or give this recipe its own checkpoint folder")
    if not {"meta", "losses"} <= state.keys():
        warnings.warn(f"discarding the incomplete checkpoint {path}; training starts from step 0", stacklevel=3)
        path.unlink(missing_ok=True)
        return None
    return state


def _checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, seconds: float,
                losses: list[float], recipe_json: str) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for index, param_state in optimizer.state_dict()["state"].items():
        for name, value in param_state.items():
            tensors[f"opt.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
    tensors["meta"] = torch.tensor([float(step), seconds], dtype=torch.float64)
    tensors["losses"] = torch.tensor(losses, dtype=torch.float64)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"recipe": recipe_json}))


def _load_optimizer(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    state = optimizer.state_dict()
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    state["state"] = per_param
    optimizer.load_state_dict(state)
