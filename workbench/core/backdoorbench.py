"""Import a BackdoorBench v2 attack record (`attack_result.pt`): the backdoored model and its poisoned test set.

What is read, and where each fact comes from (BackdoorBench v2 record format; the code is the workbench's own):

* `utils/save_load_attack.py`, `save_attack_result`: the record is `torch.save` of a dict with `model_name`
  ("preactresnet18", ...), `num_classes`, `model` (a state dict, keys maybe prefixed `module.` by DataParallel),
  `data_path`, `img_size` ((H, W, C)), `clean_data` (the dataset name), and `bd_train` / `bd_test`, each None or the
  `retrieve_state()` of a `prepro_cls_DatasetBD_v2`.
* `utils/bd_dataset_v2.py`, `prepro_cls_DatasetBD_v2.retrieve_state`: `bd_data_container` (the
  `poisonedCLSDataContainer` state: `save_folder_path` and `data_dict`), `original_index_array` (the samples of the
  set, original test-set indices), `poison_indicator` (per original index, 1 = poisoned) and `save_folder_path`.
  `poisonedCLSDataContainer.setitem` stores each poisoned image as a PNG `{save_folder_path}/{label}/{index}.png`
  and `data_dict[index] = {"path": that path, "other_info": [bd_label, label]}`; the layout
  `{"bd_img": path, "bd_label": ..., "label": ...}` with a path relative to the record folder is read too. The
  attack scripts set `save_folder_path` to `{record folder}/bd_test_dataset`, so a stored path is re-rooted in the
  folder holding `attack_result.pt` (the record folder may have moved since, or come from another machine).
* `utils/aggregate_block/dataset_and_transform_generate.py`, `get_dataset_normalization`: BackdoorBench normalises
  in the data transforms, not in the model; the per-dataset mean / std below are declared to `wrap`.
* v1 records (`bd_test` = {"x", "y"}) and v2 records saved without a save folder hold the images themselves
  (pickled PIL images or arrays); they are refused.

Loading is safe: `torch.load(weights_only=True)` with an allow-list of only the numpy globals needed for numpy
arrays and scalars of integer / bool / float dtypes (`poison_indicator` is float64 where BackdoorBench made it with
`np.zeros`, `data_dict` keys are numpy int64). Any other global in the pickle (a class whose `__reduce__` would call
`os.system`, a PIL image) is refused before anything is built.
"""

from __future__ import annotations

import numbers
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from workbench.core.classifier import WrappedClassifier, wrap
from workbench.core.preact_resnet import PreActResNet18
from workbench.core.validation import WorkbenchError

FORMAT = "BackdoorBench v2 record format"

NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "gtsrb": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "celeba": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "mnist": ((0.5,), (0.5,)),
    "tiny": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
"""Per-dataset (mean, std) of BackdoorBench's transforms, by `clean_data` name
(`dataset_and_transform_generate.get_dataset_normalization`)."""


def _preactresnet18(num_classes: int, in_channels: int, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    # The final `bn` exists in some BackdoorBench-derived code bases only; its keys say which layout was trained.
    return PreActResNet18(num_classes, in_channels=in_channels, final_norm="bn.weight" in state_dict)


ARCHITECTURES: dict[str, Callable[[int, int, Mapping[str, torch.Tensor]], nn.Module]] = {
    "preactresnet18": _preactresnet18,
}
"""Builders by BackdoorBench `model_name`: builder(num_classes, in_channels, state_dict) -> an untrained module
whose state-dict keys are BackdoorBench's (the state dict is passed so a builder can tell layout variants apart)."""


@dataclass(frozen=True, eq=False)
class PoisonedTestSet:
    """The poisoned test images of a record: PNG files next to it, with their labels.

    Attributes:
        paths: the PNG files, re-rooted in the record's folder, in the record's sample order.
        labels: (N,) int64 original (true) labels.
        bd_labels: (N,) int64 labels the backdoor is meant to cause (the attack's target labels).
        original_index: (N,) int64 index of each image's clean original in the clean test set.
        image_size: (H, W, C) the images must have (the record's `img_size`).
    """

    paths: list[Path]
    labels: torch.Tensor
    bd_labels: torch.Tensor
    original_index: torch.Tensor
    image_size: tuple[int, int, int]

    def __len__(self) -> int:
        return len(self.paths)

    def images(self) -> torch.Tensor:
        """Decode the PNGs: a float tensor (N, C, H, W) in [0, 1], each image checked to be H x W."""
        height, width, channels = self.image_size
        batch = torch.empty((len(self.paths), channels, height, width), dtype=torch.float32)
        for i, path in enumerate(self.paths):
            try:
                with Image.open(path) as image:
                    size = image.size
                    pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                raise WorkbenchError(f"cannot decode poisoned image {path}: {_first_line(err)}") from err
            if size != (width, height):
                raise WorkbenchError(f"poisoned image {path} is {size[0]}x{size[1]} (WxH) but the record's img_size "
                                     f"says {width}x{height}")
            pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
            batch[i] = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0
        return batch


@dataclass(frozen=True, eq=False)
class BackdoorBenchRecord:
    """A BackdoorBench v2 attack record, imported.

    Attributes:
        model: the backdoored classifier on [0, 1] images (BackdoorBench's normalisation inside), in eval mode.
        model_name: BackdoorBench's architecture name (a key of `ARCHITECTURES`).
        num_classes: its number of classes.
        dataset: BackdoorBench's clean dataset name (`clean_data`, e.g. "cifar10").
        image_size: (H, W, C) of its images (`img_size`).
        poisoned_test: the poisoned test images (None when the record has no `bd_test`).
    """

    model: WrappedClassifier
    model_name: str
    num_classes: int
    dataset: str
    image_size: tuple[int, int, int]
    poisoned_test: PoisonedTestSet | None

    def poisoned_images(self) -> torch.Tensor:
        """The poisoned test images as a float tensor (N, C, H, W) in [0, 1] (see `PoisonedTestSet.images`)."""
        if self.poisoned_test is None:
            raise WorkbenchError("this BackdoorBench record has no poisoned test set (its bd_test is None)")
        return self.poisoned_test.images()


def load_backdoorbench(path: str | Path) -> BackdoorBenchRecord:
    """Read a BackdoorBench v2 `attack_result.pt`: the backdoored model and its poisoned test set.

    Args:
        path: the record file, in its record folder (the folder that also holds `bd_test_dataset/`).

    Returns:
        A `BackdoorBenchRecord`; its model takes [0, 1] images and applies BackdoorBench's normalisation of
        `clean_data` itself.

    Raises:
        WorkbenchError: (one line) the file is unreadable, holds anything but tensors and numpy arrays, is a v1
            record, misses a key, names an unknown architecture or dataset, its state dict does not fit the
            architecture, or a PNG path would leave the record folder or is missing.

    Example:
        >>> record = load_backdoorbench("record/badnet_0_1/attack_result.pt")  # doctest: +SKIP
        >>> record.model(record.poisoned_images()).argmax(1)  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"no BackdoorBench record at {path}: pass the path of an attack_result.pt file")
    record = _read(path)
    if not isinstance(record, dict):
        raise WorkbenchError(f"{path.name} holds a {type(record).__name__}, not the dict of a BackdoorBench record")
    _refuse_v1(record, path)

    model_name = _string(_need(record, "model_name", path.name), "model_name")
    builder = ARCHITECTURES.get(model_name.lower())
    if builder is None:
        raise WorkbenchError(f"unknown BackdoorBench model_name {model_name!r}; known architectures: "
                             f"{', '.join(sorted(ARCHITECTURES))}")
    num_classes = _integer(_need(record, "num_classes", path.name), "num_classes")
    if num_classes < 2:
        raise WorkbenchError(f"num_classes in {path.name} must be at least 2, got {num_classes}")
    dataset = _string(_need(record, "clean_data", path.name), "clean_data")
    if dataset.lower() not in NORMALIZATION:
        raise WorkbenchError(f"unknown BackdoorBench clean_data {dataset!r}, so its normalisation is unknown; known "
                             f"datasets: {', '.join(sorted(NORMALIZATION))}")
    mean, std = NORMALIZATION[dataset.lower()]
    image_size = _image_size(_need(record, "img_size", path.name), path.name)
    if len(mean) != image_size[2]:
        raise WorkbenchError(f"img_size {image_size} has {image_size[2]} channel(s) but {dataset} images have "
                             f"{len(mean)}")

    bd_test = _need(record, "bd_test", path.name)
    poisoned = None if bd_test is None else _poisoned_test(bd_test, path, num_classes, image_size)

    state_dict = _state_dict(_need(record, "model", path.name), path.name)
    net = builder(num_classes, image_size[2], state_dict)
    _load_strict(net, state_dict, model_name)
    try:
        model = wrap(net, num_classes=num_classes, input_size=image_size[:2], in_channels=image_size[2],
                     mean=mean, std=std, cam_layer=getattr(net, "cam_layer", None))
    except RuntimeError as err:
        raise WorkbenchError(f"the {model_name} of {path.name} does not run on {image_size[0]}x{image_size[1]} "
                             f"images with {image_size[2]} channel(s): {_first_line(err)}") from err
    return BackdoorBenchRecord(model=model, model_name=model_name.lower(), num_classes=num_classes,
                               dataset=dataset.lower(), image_size=image_size, poisoned_test=poisoned)


# --- reading the pickle safely -------------------------------------------------------------------------------------

def _numpy_globals() -> list[Any]:
    """The allow-list: numpy array / scalar reconstruction and the plain numeric dtype classes, under both module
    names numpy pickles them with (numpy < 2 writes `numpy.core.multiarray`, numpy >= 2 `numpy._core.multiarray`)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    allowed: list[Any] = [np.ndarray, np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
    allowed += list(dict.fromkeys(type(np.dtype(code)) for code in
                                  ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f4", "f8")))
    return allowed


def _read(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _refusal_reason(err)
        if reason is None:  # not a refused global: a malformed pickle
            raise WorkbenchError(f"cannot read {path} as a torch.save file (truncated or corrupt?): "
                                 f"{_first_line(err)}") from err
        if "PIL." in reason:
            raise WorkbenchError(_pickled_images_message(path)) from err
        raise WorkbenchError(f"refused to load {path.name}: its pickle holds {reason}, and a BackdoorBench record "
                             "may hold only tensors, numpy arrays and plain values (nothing in it was run)") from err
    except Exception as err:  # torch.load fails with RuntimeError, EOFError, OSError, KeyError, ... on a bad file
        raise WorkbenchError(f"cannot read {path} as a torch.save file (truncated or corrupt?): "
                             f"{type(err).__name__}: {_first_line(err)}") from err


def _refusal_reason(err: Exception) -> str | None:
    """The line of torch's weights-only error that names the refused global or class (None: no such line)."""
    for line in (line.strip() for line in str(err).splitlines()):
        if "GLOBAL" in line or "got <class" in line:
            return line.rstrip(".")
    return None


def _pickled_images_message(path: Path) -> str:
    return (f"{path.name} holds pickled images (a BackdoorBench v1 record, or a v2 record saved without an image "
            "folder): v1 records hold pickled images and must be converted with BackdoorBench v2, whose records "
            "keep the poisoned images as PNG files next to attack_result.pt")


def _refuse_v1(record: dict, path: Path) -> None:
    for key in ("bd_test", "bd_train", "clean_test", "clean_train"):
        part = record.get(key)
        if isinstance(part, dict) and ("x" in part or "y" in part) and "bd_data_container" not in part:
            raise WorkbenchError(_pickled_images_message(path) + f" (its {key} holds 'x' / 'y')")


# --- validation of record fields -----------------------------------------------------------------------------------

def _need(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, dict):
        raise WorkbenchError(f"{where} must be a dict ({FORMAT}), got {type(mapping).__name__}")
    if key not in mapping:
        raise WorkbenchError(f"{where} has no {key!r} key ({FORMAT}); is this a BackdoorBench v2 attack_result.pt?")
    return mapping[key]


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value or "\n" in value:
        raise WorkbenchError(f"{name} must be a one-line non-empty string ({FORMAT}), got {type(value).__name__}")
    return value


def _integer(value: Any, name: str) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise WorkbenchError(f"{name} must be an integer ({FORMAT}), got {value!r:.80}")
    return int(value)


def _image_size(value: Any, where: str) -> tuple[int, int, int]:
    if not isinstance(value, Sequence | np.ndarray | torch.Tensor) or isinstance(value, str) or len(value) != 3:
        raise WorkbenchError(f"img_size in {where} must be (height, width, channels) ({FORMAT}), got {value!r:.80}")
    size = tuple(_integer(v, "img_size") for v in value)
    if min(size) < 1 or size[2] not in (1, 3):
        raise WorkbenchError(f"img_size in {where} must be positive (height, width, channels) with 1 or 3 "
                             f"channels, got {size}")
    return size  # type: ignore[return-value]


def _state_dict(value: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(value, dict) or not value:
        raise WorkbenchError(f"'model' in {where} must be a non-empty state dict ({FORMAT}), got "
                             f"{type(value).__name__}")
    for key, tensor in value.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise WorkbenchError(f"'model' in {where} must map parameter names to tensors, got {key!r:.60} -> "
                                 f"{type(tensor).__name__}")
    if all(key.startswith("module.") for key in value):  # saved from nn.DataParallel
        value = {key[len("module."):]: tensor for key, tensor in value.items()}
    return value


def _load_strict(net: nn.Module, state_dict: dict[str, torch.Tensor], model_name: str) -> None:
    expected = net.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    if missing or unexpected:
        parts = ([f"missing {_first_keys(missing)}"] if missing else []) + (
            [f"unexpected {_first_keys(unexpected)}"] if unexpected else [])
        raise WorkbenchError(f"the record's state dict does not fit BackdoorBench's {model_name}: "
                             f"{'; '.join(parts)}")
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise WorkbenchError(f"the record's state dict does not fit BackdoorBench's {model_name}: {key} has "
                                 f"shape {tuple(state_dict[key].shape)}, the architecture {tuple(tensor.shape)}")
    net.load_state_dict(state_dict, strict=True)
    net.eval()


def _first_keys(keys: list[str], count: int = 3) -> str:
    shown = ", ".join(keys[:count])
    return shown + (f" (+{len(keys) - count} more)" if len(keys) > count else "")


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else "no details"


# --- the poisoned test set -----------------------------------------------------------------------------------------

def _poisoned_test(state: Any, path: Path, num_classes: int, image_size: tuple[int, int, int]) -> PoisonedTestSet:
    container = _need(state, "bd_data_container", "bd_test")
    data_dict = _need(container, "data_dict", "bd_test['bd_data_container']")
    if not isinstance(data_dict, dict):
        raise WorkbenchError(f"bd_test's data_dict must be a dict ({FORMAT}), got {type(data_dict).__name__}")
    save_folder = container.get("save_folder_path") or (state.get("save_folder_path") if isinstance(state, dict)
                                                        else None)
    if data_dict and save_folder is None:
        raise WorkbenchError(_pickled_images_message(path))
    if save_folder is not None and not isinstance(save_folder, str):
        raise WorkbenchError(f"bd_test's save_folder_path must be a string ({FORMAT}), got "
                             f"{type(save_folder).__name__}")
    order = _index_array(_need(state, "original_index_array", "bd_test"), "original_index_array")
    indicator = _index_array(_need(state, "poison_indicator", "bd_test"), "poison_indicator")
    entries = {_integer(key, "bd_test data_dict key"): entry for key, entry in data_dict.items()}

    root = path.parent
    paths: list[Path] = []
    labels: list[int] = []
    bd_labels: list[int] = []
    original: list[int] = []
    for index in order.tolist():
        if not 0 <= index < len(indicator):
            raise WorkbenchError(f"bd_test's original_index_array holds {index}, outside its poison_indicator "
                                 f"(length {len(indicator)})")
        if indicator[index] != 1:  # a clean sample: its image is in the clean test set, not in the record
            continue
        if index not in entries:
            raise WorkbenchError(f"bd_test marks sample {index} poisoned but its data_dict has no entry for it")
        stored, bd_label, label = _entry(entries[index], index)
        paths.append(_reroot(stored, save_folder, root))
        bd_labels.append(_label(bd_label, num_classes, "bd_label", index))
        labels.append(_label(label, num_classes, "label", index))
        original.append(index)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise WorkbenchError(f"{len(missing)} of the {len(paths)} poisoned PNGs are missing, e.g. {missing[0]}; "
                             f"keep the record's bd_test_dataset folder next to {path.name}")
    return PoisonedTestSet(paths=paths, labels=torch.tensor(labels, dtype=torch.int64),
                           bd_labels=torch.tensor(bd_labels, dtype=torch.int64),
                           original_index=torch.tensor(original, dtype=torch.int64), image_size=image_size)


def _index_array(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.numpy()
    array = np.asarray(value) if isinstance(value, np.ndarray | list | tuple) else None
    if array is None or array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or
                                                np.issubdtype(array.dtype, np.floating) or array.dtype == bool):
        raise WorkbenchError(f"bd_test's {name} must be a 1-D numeric array ({FORMAT}), got {type(value).__name__}")
    if array.size and not np.array_equal(array, np.round(array)):
        raise WorkbenchError(f"bd_test's {name} must hold whole numbers, got non-integer values")
    return array.astype(np.int64)


def _entry(entry: Any, index: int) -> tuple[str, Any, Any]:
    """(stored PNG path, bd_label, label) of one `data_dict` entry, in either layout."""
    if isinstance(entry, dict) and "path" in entry:  # poisonedCLSDataContainer.setitem: other_info = [bd, label]
        info = entry.get("other_info")
        if not isinstance(info, list | tuple) or len(info) < 2:
            raise WorkbenchError(f"bd_test data_dict[{index}]['other_info'] must be [bd_label, label] ({FORMAT})")
        stored, bd_label, label = entry["path"], info[0], info[1]
    elif isinstance(entry, dict) and "bd_img" in entry:
        for key in ("bd_label", "label"):
            _need(entry, key, f"bd_test data_dict[{index}]")
        stored, bd_label, label = entry["bd_img"], entry["bd_label"], entry["label"]
    else:
        raise WorkbenchError(f"bd_test data_dict[{index}] has no 'path' (or 'bd_img') key ({FORMAT})")
    if not isinstance(stored, str) or not stored or "\n" in stored or "\x00" in stored:
        raise WorkbenchError(f"bd_test data_dict[{index}] must name its PNG with a one-line path string")
    return stored, bd_label, label


def _label(value: Any, num_classes: int, name: str, index: int) -> int:
    label = _integer(value, f"{name} of sample {index}")
    if not 0 <= label < num_classes:
        raise WorkbenchError(f"{name} of sample {index} is {label}, outside [0, {num_classes - 1}]")
    return label


def _reroot(stored: str, save_folder: str | None, root: Path) -> Path:
    """The PNG `stored` re-rooted in the record folder `root`.

    A path under the recorded `save_folder` (`{record}/bd_test_dataset`) becomes `root/bd_test_dataset/...`;
    any other path must already be relative to the record folder. Paths that leave it are refused.
    """
    pure = PurePosixPath(stored)
    relative = pure
    if save_folder:
        folder = PurePosixPath(save_folder.rstrip("/") or "/")
        if folder.name not in ("", ".", "..") and pure.parts[:len(folder.parts)] == folder.parts:
            relative = PurePosixPath(folder.name, *pure.parts[len(folder.parts):])
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise WorkbenchError(f"poisoned image path {stored!r} would leave the record folder {root}; BackdoorBench "
                             "v2 stores the PNGs under the record's bd_test_dataset folder")
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise WorkbenchError(f"poisoned image path {stored!r} leaves the record folder {root} through a link")
    return root / relative
