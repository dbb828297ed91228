"""BackdoorBench v2 import: synthetic `attack_result.pt` records in BackdoorBench's format, written on the fly."""

from __future__ import annotations

import builtins
import os
import shlex
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workbench.core.backdoorbench import ARCHITECTURES, BackdoorBenchRecord, load_backdoorbench
from workbench.core.preact_resnet import PreActResNet18
from workbench.core.validation import WorkbenchError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.247, 0.243, 0.261)
OTHER_MACHINE = "/home/someone/BackdoorBench/record/badnet_demo/bd_test_dataset"  # where BackdoorBench saved


@pytest.fixture(scope="module")
def state_dicts() -> dict[bool, dict[str, torch.Tensor]]:
    """Random PreActResNet18 weights with non-trivial BatchNorm statistics, without and with the final `bn`."""
    torch.manual_seed(0)
    out = {}
    for final_norm in (False, True):
        net = PreActResNet18(10, final_norm=final_norm)
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.2, 0.2)
        out[final_norm] = {key: value.clone() for key, value in net.state_dict().items()}
    return out


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, state_dicts) -> tuple[Written, BackdoorBenchRecord]:
    """One upstream-layout record, loaded once (a PreActResNet18's first forward passes are slow on 2 cores)."""
    written = write_record(tmp_path_factory.mktemp("upstream") / "rec", state_dicts[False])
    return written, load_backdoorbench(written.path)


@dataclass
class Written:
    path: Path
    images: np.ndarray  # (N, H, W, 3) uint8, as written to the PNGs
    labels: list[int]
    bd_labels: list[int]
    original_index: list[int]


def write_record(folder: Path, state_dict: dict, *, layout: str = "upstream", stored_paths: list[str] | None = None,
                 size: int = 32, **overrides) -> Written:
    """A BackdoorBench v2 record: `save_attack_result`'s dict, bd_test = `prepro_cls_DatasetBD_v2.retrieve_state()`.

    layout "upstream": data_dict[np.int64 index] = {"path": f"{save_folder}/{label}/{index}.png", "other_info":
    [bd_label, label]}, the save folder on another machine, poison_indicator float64 (BackdoorBench's np.zeros);
    layout "relative": {"bd_img": "bd_test_dataset/{label}/{index}.png", "bd_label", "label"}, int64 indicator.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    original_index, labels, bd_labels = [2, 5, 9], [1, 4, 7], [0, 0, 0]
    images = rng.integers(0, 256, size=(3, size, size, 3), dtype=np.uint8)
    indicator = np.zeros(12) if layout == "upstream" else np.zeros(12, dtype=np.int64)
    data_dict = {}
    for i, (index, label, bd_label) in enumerate(zip(original_index, labels, bd_labels, strict=True)):
        png = folder / "bd_test_dataset" / str(label) / f"{index}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(png)
        indicator[index] = 1
        if layout == "upstream":
            stored = stored_paths[i] if stored_paths else f"{OTHER_MACHINE}/{label}/{index}.png"
            data_dict[np.int64(index)] = {"path": stored, "other_info": [bd_label, label]}
        else:
            stored = stored_paths[i] if stored_paths else f"bd_test_dataset/{label}/{index}.png"
            data_dict[index] = {"bd_img": stored, "bd_label": bd_label, "label": label}
    save_folder = OTHER_MACHINE if layout == "upstream" else "./record/badnet_demo/bd_test_dataset"
    bd_test = {
        "bd_data_container": {"save_folder_path": save_folder, "data_dict": data_dict, "save_file_format": ".png"},
        "getitem_all": True,
        "getitem_all_switch": False,
        "original_index_array": np.array(original_index),
        "poison_indicator": indicator,
        "save_folder_path": save_folder,
    }
    record = {"model_name": "preactresnet18", "num_classes": 10, "model": state_dict, "data_path": "./data/cifar10",
              "img_size": [32, 32, 3], "clean_data": "cifar10", "bd_train": None, "bd_test": bd_test}
    record.update(overrides)
    path = folder / "attack_result.pt"
    torch.save(record, path)
    return Written(path, images, labels, bd_labels, original_index)


def refused(path: Path) -> str:
    with pytest.raises(WorkbenchError) as info:
        load_backdoorbench(path)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("final_norm", [False, True], ids=["upstream-layout", "with-final-bn"])
def test_logits_equal_the_state_dicts_own_net_on_normalised_images(tmp_path, state_dicts, upstream, final_norm):
    record = (load_backdoorbench(write_record(tmp_path / "rec", state_dicts[True]).path) if final_norm
              else upstream[1])
    assert isinstance(record, BackdoorBenchRecord)
    assert (record.model_name, record.num_classes, record.dataset, record.image_size) == (
        "preactresnet18", 10, "cifar10", (32, 32, 3))
    assert not record.model.training and record.model.input_shape == (3, 32, 32)

    reference = PreActResNet18(10, final_norm=final_norm)
    reference.load_state_dict(state_dicts[final_norm], strict=True)
    reference.eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference((x - mean) / std)
        got = record.model(x)
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)
    assert "preactresnet18" in ARCHITECTURES


@pytest.mark.parametrize("layout", ["upstream", "relative"])
def test_poisoned_images_decode_with_their_labels(tmp_path, state_dicts, upstream, layout):
    if layout == "upstream":
        written, record = upstream
    else:
        written = write_record(tmp_path / "rec", state_dicts[False], layout=layout)
        record = load_backdoorbench(written.path)
    test_set = record.poisoned_test
    assert test_set is not None and len(test_set) == 3
    assert all(p.is_relative_to(written.path.parent / "bd_test_dataset") for p in test_set.paths)
    assert test_set.labels.tolist() == written.labels
    assert test_set.bd_labels.tolist() == written.bd_labels
    assert test_set.original_index.tolist() == written.original_index
    assert test_set.labels.dtype == torch.int64
    images = record.poisoned_images()
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    expected = torch.from_numpy(written.images).permute(0, 3, 1, 2).float() / 255.0
    assert torch.equal(images, expected)


class _Payload:
    def __init__(self, call, argument):
        self.call, self.argument = call, argument

    def __reduce__(self):
        return self.call, (self.argument,)


@pytest.mark.parametrize("kind", ["os.system", "open"])
def test_a_pickle_payload_is_refused_and_not_run(tmp_path, state_dicts, kind):
    marker = tmp_path / "pwned"
    payload = (_Payload(os.system, f"touch {shlex.quote(str(marker))}") if kind == "os.system"
               else _Payload(builtins.open, str(marker)))
    written = write_record(tmp_path / "rec", state_dicts[False], data_path=payload)
    message = refused(written.path)
    assert "refused" in message and "nothing in it was run" in message
    assert not marker.exists()


def test_a_record_pickled_by_numpy_1_is_read(tmp_path, state_dicts):
    """numpy < 2 pickles arrays and scalars under `numpy.core.multiarray`; the allow-list names both modules."""
    written = write_record(tmp_path / "rec", state_dicts[False], model_name="not-registered")
    rewritten = tmp_path / "rec" / "numpy1.pt"
    with zipfile.ZipFile(written.path) as source, zipfile.ZipFile(rewritten, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            target.writestr(info.filename, data)
    # reaching the architecture check means the whole pickle (numpy int64 keys, float64 indicator) was read
    assert "unknown BackdoorBench model_name 'not-registered'" in refused(rewritten)


def test_a_v1_record_is_refused(tmp_path, state_dicts):
    v1 = {"x": torch.rand(3, 3, 32, 32), "y": torch.zeros(3, dtype=torch.long)}
    written = write_record(tmp_path / "rec", state_dicts[False], bd_test=v1, bd_train=dict(v1))
    message = refused(written.path)
    assert "v1 records hold pickled images and must be converted with BackdoorBench v2" in message


def test_an_unknown_architecture_is_refused(tmp_path, state_dicts):
    written = write_record(tmp_path / "rec", state_dicts[False], model_name="vit_b_16")
    message = refused(written.path)
    assert "'vit_b_16'" in message and "preactresnet18" in message


@pytest.mark.parametrize("layout, stored", [
    ("relative", "../outside.png"),
    ("relative", "/etc/passwd.png"),
    ("relative", "bd_test_dataset/../../outside.png"),
    ("upstream", f"{OTHER_MACHINE}/../../../../outside.png"),
    ("upstream", "/home/someone/elsewhere/0/2.png"),
])
def test_a_png_path_leaving_the_record_folder_is_refused(tmp_path, state_dicts, layout, stored):
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "outside.png")
    written = write_record(tmp_path / "rec", state_dicts[False], layout=layout, stored_paths=[stored] * 3)
    message = refused(written.path)
    assert "would leave the record folder" in message


def test_a_png_link_leaving_the_record_folder_is_refused(tmp_path, state_dicts):
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "outside.png")
    (tmp_path / "rec" / "bd_test_dataset").mkdir(parents=True)
    (tmp_path / "rec" / "bd_test_dataset" / "link").symlink_to(tmp_path)
    written = write_record(tmp_path / "rec", state_dicts[False], layout="relative",
                           stored_paths=["bd_test_dataset/link/outside.png"] * 3)
    assert "through a link" in refused(written.path)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_truncated_or_corrupt_file_is_refused(tmp_path, state_dicts, damage):
    written = write_record(tmp_path / "rec", state_dicts[False])
    data = written.path.read_bytes()
    written.path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a record" * 40}[
        damage])
    assert "truncated or corrupt" in refused(written.path)


def test_a_missing_key_is_named(tmp_path, state_dicts):
    written = write_record(tmp_path / "rec", state_dicts[False])
    record = torch.load(written.path, weights_only=False)
    del record["num_classes"]
    torch.save(record, written.path)
    assert "'num_classes'" in refused(written.path)
    del record["bd_test"]["poison_indicator"]
    record["num_classes"] = 10
    torch.save(record, written.path)
    assert "'poison_indicator'" in refused(written.path)


def test_a_state_dict_that_does_not_fit_is_refused_naming_keys(tmp_path, state_dicts):
    broken = dict(state_dicts[False])
    del broken["linear.bias"]
    broken["head.weight"] = torch.zeros(1)
    written = write_record(tmp_path / "rec", broken)
    message = refused(written.path)
    assert "missing linear.bias" in message and "unexpected head.weight" in message
    wrong_classes = write_record(tmp_path / "rec2", state_dicts[False], num_classes=43)
    assert "linear.weight" in refused(wrong_classes.path)


def test_an_unknown_dataset_and_a_wrong_image_size_are_refused(tmp_path, state_dicts):
    written = write_record(tmp_path / "rec", state_dicts[False], clean_data="svhn")
    assert "'svhn'" in refused(written.path) and "cifar10" in refused(written.path)
    wrong_size = write_record(tmp_path / "rec2", state_dicts[False], size=30)
    record = load_backdoorbench(wrong_size.path)
    with pytest.raises(WorkbenchError) as info:
        record.poisoned_images()
    assert "\n" not in str(info.value) and "30x30" in str(info.value)


def test_a_missing_file_is_refused(tmp_path):
    assert "no BackdoorBench record" in refused(tmp_path / "attack_result.pt")
