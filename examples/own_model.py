"""Every kind of defence on your own CIFAR-10 ResNet-18: python examples/own_model.py WEIGHTS.pt DATA.pt [CONFIGS.json]
WEIGHTS.pt: its state dict; DATA.pt: {"x": clean images in [0, 1], "y": their labels, "x_test": images to purify};
CONFIGS.json: optional {defence name: settings} replacing the papers' defaults (e.g. smaller budgets)."""
import json, sys, torch, torchvision, workbench
from workbench.defenses import create
net = torchvision.models.resnet18(num_classes=10)
net.conv1, net.maxpool = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False), torch.nn.Identity()  # the usual CIFAR stem
net.load_state_dict(torch.load(sys.argv[1], weights_only=True))
model = workbench.wrap(net, num_classes=10, input_size=32, mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261))
d, cfg = torch.load(sys.argv[2], weights_only=True), json.load(open(sys.argv[3])) if sys.argv[3:] else {}
ours = {"restore": {"clean_images": d["x"], "clean_labels": d["y"]}, "head-replacement": {"split": "layer4"}}
for name in ("red-a", "restore-diagnosis"): print(create(name, **cfg.get(name, {})).detect(model, d["x"], d["y"]).summary())
for name in ("bdmae", "restore", "shrinkpad", "blur"): print(name, create(name, **ours.get(name, {}), **cfg.get(name, {})).purify(model, d["x_test"]).labels.tolist())
for name in ("fine-tuning", "head-replacement"): print(create(name, **ours.get(name, {}), **cfg.get(name, {})).repair(model, (d["x"], d["y"])).summary())
