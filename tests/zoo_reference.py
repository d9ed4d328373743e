"""Reference outputs for the CIFAR zoo: fill a network's state dict deterministically, in order,
and record its logits on a fixed input.

The fill depends only on each tensor's position, shape and kind (weight, bias, BN statistics), so
a network whose state dict has RepDistiller's tensors in RepDistiller's order and shapes receives
the same values, and must then give the same logits. Regenerate the fixture (it needs a checkout
of github.com/HobbitLong/RepDistiller, which the tests never import):

    python -m tests.zoo_reference /path/to/RepDistiller tests/fixtures/zoo_reference.json
"""
from __future__ import annotations

import json
import sys

import torch
from torch import nn

CLASSES = 10

# our registry name -> RepDistiller's `model_dict` name
REPDISTILLER_NAMES = {
    "resnet8": "resnet8", "resnet14": "resnet14", "resnet20": "resnet20", "resnet32": "resnet32", "resnet44": "resnet44",
    "resnet56": "resnet56", "resnet110": "resnet110", "resnet8x4": "resnet8x4", "resnet32x4": "resnet32x4",
    "resnet50": "ResNet50", "wrn16_1": "wrn_16_1", "wrn16_2": "wrn_16_2", "wrn40_1": "wrn_40_1", "wrn40_2": "wrn_40_2",
    "vgg8": "vgg8", "vgg11": "vgg11", "vgg13": "vgg13", "vgg16": "vgg16", "vgg19": "vgg19",
    "mobilenetv2": "MobileNetV2", "shufflenetv1": "ShuffleV1", "shufflenetv2": "ShuffleV2",
}


def fill_state(net: nn.Module, seed: int = 0) -> None:
    """Overwrite every parameter and BN statistic with seeded values at a scale that keeps deep
    networks' activations finite in eval mode."""
    with torch.no_grad():
        for i, (name, t) in enumerate(net.state_dict().items()):
            if not t.is_floating_point():
                continue
            g = torch.Generator().manual_seed(seed * 100_003 + i)
            z = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + z.abs())
            elif name.endswith(("running_mean", "bias")):
                t.copy_(0.1 * z)
            elif t.dim() == 1:  # a BN scale
                t.copy_(1 + 0.1 * z)
            else:  # conv or linear weight: variance-preserving at half gain
                t.copy_(z * (0.5 / t[0].numel()) ** 0.5)


def probe(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def logits_of(net: nn.Module) -> torch.Tensor:
    fill_state(net)
    net.eval()
    with torch.no_grad():
        out = net(probe())
    return out[0] if isinstance(out, tuple) else out


def main(repdistiller: str, out: str) -> None:
    sys.path.insert(0, repdistiller)
    from models import model_dict  # RepDistiller's, from the given checkout

    torch.set_num_threads(1)
    record = {}
    for ours, theirs in REPDISTILLER_NAMES.items():
        params = sum(p.numel() for p in model_dict[theirs](num_classes=100).parameters())
        record[ours] = {"params_100": params, "logits": [[round(v, 6) for v in row] for row in logits_of(model_dict[theirs](num_classes=CLASSES)).tolist()]}
    with open(out, "w") as f:  # not stdout: RepDistiller's MobileNetV2 prints there
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
