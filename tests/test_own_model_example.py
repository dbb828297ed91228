"""The README's promise, tried as a new user would: a ResNet-18 trained elsewhere (here: torchvision's, 1 epoch on
320 CIFAR-10 images with 10 % of them carrying a patch trigger: enough to have weights, since the test checks the
calls, not what the model learned) goes through `examples/own_model.py`, a script of
under 15 lines that runs two detectors, four purifiers and two repairs by name, touching no recipe or repro module."""

import json
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from workbench.core.attacks import make_attack
from workbench.core.data import load_splits, stratified_subset

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "own_model.py"
SMALL = {  # budgets cut so the test checks the calls, not the papers' numbers
    "red-a": {"max_iterations": 3, "images_per_class": 1},
    "restore-diagnosis": {"alpha": 0.1, "per_set": 2, "splitting": {"particles": 8, "survivors": 4, "passes": 1,
                                                                    "max_levels": 2}},
    "restore": {"alpha": 0.1, "per_set": 2, "splitting": {"particles": 8, "survivors": 4, "passes": 1,
                                                          "max_levels": 2}},
    "bdmae": {"outer_rounds": 1, "inner_masks": 2, "refine_steps": 1},
    "fine-tuning": {"epochs": 1, "batch_size": 32},
    "head-replacement": {"epochs": 1, "batch_size": 32},
}


def train_user_model(path: Path) -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1, net.maxpool = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False), torch.nn.Identity()
    train = load_splits("cifar10", train_size=320).train
    x, y = train.float_images(), train.labels.clone()
    poisoned = torch.arange(0, len(x), 10)  # 10 % of the images carry the patch and the target label 0
    x[poisoned], y[poisoned] = make_attack("bdmae_badnets_colour").apply(x[poisoned]), 0
    mean = torch.tensor([0.4914, 0.4822, 0.4465])[:, None, None]
    std = torch.tensor([0.247, 0.243, 0.261])[:, None, None]
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for batch in torch.randperm(len(x)).split(64):
        optimiser.zero_grad()
        F.cross_entropy(net((x[batch] - mean) / std), y[batch]).backward()
        optimiser.step()
    torch.save(net.state_dict(), path)


def test_a_users_resnet18_goes_through_every_kind_of_defence(tmp_path):
    train_user_model(tmp_path / "weights.pt")
    holdout = load_splits("cifar10").holdout
    holdout = holdout.subset(stratified_subset(holdout.labels, 100, torch.Generator().manual_seed(0)))
    x, y = holdout.float_images(), holdout.labels
    x_test = make_attack("bdmae_badnets_colour").apply(load_splits("cifar10").test.float_images()[:4])
    torch.save({"x": x, "y": y, "x_test": x_test}, tmp_path / "data.pt")
    (tmp_path / "configs.json").write_text(json.dumps(SMALL))
    assert len(SCRIPT.read_text().splitlines()) < 15
    run = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "weights.pt"), str(tmp_path / "data.pt"),
                          str(tmp_path / "configs.json")], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    for name in ("red-a", "restore-diagnosis", "fine-tuning", "head-replacement"):
        assert sum(f"'method': '{name}'" in line for line in lines) == 1, run.stdout[-3000:]
    for name in ("bdmae", "restore", "shrinkpad", "blur"):
        [line] = [line for line in lines if line.startswith(f"{name} [")]
        assert len(json.loads(line.split(" ", 1)[1])) == 4
