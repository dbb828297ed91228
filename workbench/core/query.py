"""Black-box access to a classifier: labels, probabilities or logits at a declared level, with a query count.

Black-box defences (BDMAE, REStore, PatchCleanser, Blur, ShrinkPad) take a `QueryModel`, never the
`nn.Module`, so what they may observe is enforced by construction and what they cost is counted.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from workbench.core.classifier import num_classes_of
from workbench.core.validation import WorkbenchError, check_images, check_name, check_positive_int

#: Access levels from least to most informative; each level also grants the ones before it.
ACCESS_LEVELS = ("label", "probs", "logits")


class AccessError(WorkbenchError):
    """A query for more information than the wrapper was created to reveal."""


class QueryModel:
    """Query access to a classifier.

    Args:
        model: the classifier (inputs in [0, 1], outputs logits).
        access: "label" (top-1 labels only), "probs" (labels and softmax probabilities) or "logits" (all).
        input_shape: (C, H, W) the model expects; inputs of another shape are refused. None = the model's own
            `input_shape` attribute if it has one (workbench models do), else not checked.
        batch_size: images per forward pass.
        num_classes: the class count; None = the model's (`workbench.core.classifier.num_classes_of`: its
            `num_classes` attribute or the width of its logits on one probe image, which is not counted as a
            query: a defender knows how many classes the model it is given has).

    Attributes:
        queries: number of images submitted so far (each image of each call counts once).
        calls: number of calls so far.
    """

    def __init__(self, model: nn.Module, access: str = "label", *, input_shape: tuple[int, int, int] | None = None,
                 batch_size: int = 256, num_classes: int | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise WorkbenchError(f"QueryModel wraps a torch.nn.Module, got {type(model).__name__}")
        self._model = model
        self.access = check_name("access level", access, ACCESS_LEVELS)
        input_shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.queries = 0
        self.calls = 0
        self._num_classes = None if num_classes is None else check_positive_int(num_classes, "num_classes")

    @property
    def num_classes(self) -> int:
        """The model's class count (given, or read from the model once; see the constructor)."""
        if self._num_classes is None:
            if self.input_shape is None and getattr(self._model, "num_classes", None) is None:
                raise WorkbenchError("this QueryModel knows neither the model's class count nor its input shape: "
                                     "pass num_classes=... (or input_shape=...) when creating it")
            self._num_classes = num_classes_of(self._model, input_shape=self.input_shape)
        return self._num_classes

    def num_classes_for(self, images: torch.Tensor) -> int:
        """`num_classes`, read from the model on one probe of `images`' shape when neither the caller nor the model
        declares the class count or the input shape (the probe is not counted as a query)."""
        if self._num_classes is None and self.input_shape is None and getattr(self._model, "num_classes", None) is None:
            self._num_classes = num_classes_of(self._model, input_shape=tuple(images.shape[1:]))
        return self.num_classes

    def reset_queries(self) -> None:
        """Set the query and call counters back to zero."""
        self.queries = 0
        self.calls = 0

    @property
    def device(self) -> torch.device:
        weight = next(self._model.parameters(), None)  # a model without parameters (a fixed rule) runs on the CPU
        return torch.device("cpu") if weight is None else weight.device

    def _require(self, level: str) -> None:
        if ACCESS_LEVELS.index(level) > ACCESS_LEVELS.index(self.access):
            raise AccessError(f"this model was wrapped with access={self.access!r}; {level!r} outputs are not "
                              f"available (create QueryModel(model, access={level!r}) if you are allowed them)")

    @torch.no_grad()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_shape is not None:
            check_images(x, channels=self.input_shape[0], size=self.input_shape[1:], name="query images")
        else:
            check_images(x, name="query images")
        if len(x) == 0:
            raise WorkbenchError("query images are empty: pass at least one image")
        self.queries += len(x)
        self.calls += 1
        was_training = self._model.training
        self._model.eval()
        try:
            weight = next(self._model.parameters(), None)  # a model without parameters (a fixed rule) takes float32
            dtype = torch.float32 if weight is None else weight.dtype  # float64 / float16 images: the model's dtype
            outs = [self._model(x[i:i + self.batch_size].to(self.device, dtype)).float().to(x.device)
                    for i in range(0, len(x), self.batch_size)]
        finally:
            self._model.train(was_training)
        return torch.cat(outs)

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """Top-1 labels (N,) for images (N, C, H, W) in [0, 1]."""
        return self._forward(x).argmax(dim=1)

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N, K); needs access "probs" or "logits"."""
        self._require("probs")
        return self._forward(x).softmax(dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K); needs access "logits"."""
        self._require("logits")
        return self._forward(x)
