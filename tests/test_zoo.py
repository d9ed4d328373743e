"""The CIFAR distillation zoo: exact parameter counts and outputs against RepDistiller's, the
initialisation, the network contract, the multistep schedule and the 240-epoch teacher preset."""
from __future__ import annotations

import json
import re

import pytest
import torch

from ssl_kd.cli import list_registered, parameter_count
from ssl_kd.config import load_yaml
from ssl_kd.errors import ConfigError
from ssl_kd.registry import NETWORKS, discover_all
from ssl_kd.run import resolve_config
from ssl_kd.trainer.schedule import lr_factor, make_optimizer, make_schedule
from tests.conftest import REPO
from tests.zoo_reference import CLASSES, logits_of

# Exact parameter counts with a 100-class head of the RepDistiller / CRD CIFAR-100 zoo (Tian et
# al., ICLR 2020, github.com/HobbitLong/RepDistiller models/), counted on its code; the names are
# ours (tests/zoo_reference.py maps them to RepDistiller's).
REPDISTILLER_PARAMS = {
    "resnet8": 83_892, "resnet14": 181_108, "resnet20": 278_324, "resnet32": 472_756, "resnet44": 667_188,
    "resnet56": 861_620, "resnet110": 1_736_564, "resnet8x4": 1_233_540, "resnet32x4": 7_433_860,
    "resnet50": 23_705_252, "wrn16_1": 180_916, "wrn16_2": 703_284, "wrn40_1": 569_780, "wrn40_2": 2_255_156,
    "vgg8": 3_965_028, "vgg11": 9_277_284, "vgg13": 9_462_180, "vgg16": 14_774_436, "vgg19": 20_086_692,
    "mobilenetv2": 812_836, "shufflenetv1": 949_258, "shufflenetv2": 1_355_528,
}
SMALL = ("resnet20", "resnet8x4", "wrn16_2", "wrn16_1", "vgg8", "mobilenetv2", "shufflenetv1", "shufflenetv2")
REFERENCE = json.loads((REPO / "tests" / "fixtures" / "zoo_reference.json").read_text())


@pytest.mark.parametrize("name", sorted(REPDISTILLER_PARAMS))
def test_parameter_count_is_repdistillers_exactly(name):
    discover_all()
    assert parameter_count(NETWORKS.get(name)) == REPDISTILLER_PARAMS[name]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_a_reference_shaped_state_dict_gives_the_reference_logits(name):
    """The same values, placed by position into our state dict, give RepDistiller's logits: the
    tensors come in its order and shapes and the forward computes what its forward computes
    (e.g. WRN-16-1's first shortcut takes the raw input; ShuffleNets' stem is 1x1)."""
    discover_all()
    torch.manual_seed(0)
    logits = logits_of(NETWORKS.get(name)(CLASSES))
    expected = torch.tensor(REFERENCE[name]["logits"])
    assert torch.allclose(logits, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item()), (logits - expected).abs().max()


def head_bound(net: torch.nn.Module) -> float:
    return net.head.in_features ** -0.5  # PyTorch's default Linear init is uniform within this


@pytest.mark.parametrize("name,head", [("resnet8", "default"), ("resnet50", "default"), ("wrn16_1", "default, zero bias"),
                                       ("wrn28_2", "xavier"), ("vgg8", "normal"), ("mobilenetv2", "normal"),
                                       ("shufflenetv1", "default"), ("shufflenetv2", "default")])
def test_initialisation_follows_the_reference(name, head):
    """RepDistiller leaves the head at PyTorch's default for its ResNets and WRNs (WRN zeroes the
    bias), draws it from normal(0, 0.01) for VGG and MobileNetV2, and has no init for ShuffleNets."""
    discover_all()
    torch.manual_seed(0)
    net = NETWORKS.get(name)(100)
    w, b = net.head.weight.detach(), net.head.bias.detach()
    if head.startswith("default"):
        assert w.abs().max() <= head_bound(net) and w.std() == pytest.approx(head_bound(net) / 3 ** 0.5, rel=0.1)
        assert (b.abs().max() == 0) == (head == "default, zero bias")
    elif head == "normal":
        assert w.std() == pytest.approx(0.01, rel=0.1) and b.abs().max() == 0
    else:  # FixMatch's WRN keeps its Xavier-normal head
        assert w.std() == pytest.approx((2 / (w.shape[0] + w.shape[1])) ** 0.5, rel=0.1) and b.abs().max() == 0
    stem = next(m.weight.detach() for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    fan_in = stem[0].numel()
    if name.startswith("shuffle"):  # PyTorch's default conv init, uniform within 1/sqrt(fan_in)
        assert stem.abs().max() <= fan_in ** -0.5
    else:  # He-normal, fan-out
        assert stem.std() == pytest.approx((2 / (stem.shape[0] * stem[0, 0].numel())) ** 0.5, rel=0.15)


@pytest.mark.parametrize("name", SMALL)
def test_forward_returns_logits_and_the_heads_features(name):
    discover_all()
    torch.manual_seed(0)
    net = NETWORKS.get(name)(100).eval()
    with torch.no_grad():
        logits, feats = net(torch.randn(2, 3, 32, 32))
    assert isinstance(net.head, torch.nn.Linear) and logits.shape == (2, 100)
    assert feats.shape == (2, net.head.in_features) == (2, net.num_features)
    assert torch.allclose(net.head(feats), logits)  # influence and explain score the head on these features
    assert sum(p.numel() for p in net.parameters()) == parameter_count(NETWORKS.get(name))


def test_list_shows_parameter_counts():
    out = list_registered()
    assert re.search(r"^\s+resnet32x4\s.*\[7\.43M\]$", out, re.M) and re.search(r"^\s+mobilenetv2\s.*\[0\.81M\]$", out, re.M)


def test_multistep_factor_decays_at_the_milestone_fractions():
    cfg = resolve_config({}, {"algo": "supervised", "dataset": "digits", "steps": 240},
                         ["train.lr_schedule=multistep", "train.lr_milestones=[0.625,0.75,0.875]"])
    factors = [lr_factor(k, cfg.train) for k in (0, 149, 150, 179, 180, 210, 239)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.001, 0.001])
    net = torch.nn.Linear(2, 2)
    opt = make_optimizer(net, 0.05, 0.9, False, 5e-4)
    sched = make_schedule(opt, cfg.train)
    for _ in range(150):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)


@pytest.mark.parametrize("bad", ["train.lr_schedule=step", "train.lr_milestones=[0.8,0.5]", "train.lr_milestones=[1.5]"])
def test_bad_schedule_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="lr_"):
        resolve_config({}, {"algo": "supervised", "dataset": "digits"}, ["train.lr_schedule=multistep", bad])


def test_zoo_preset_is_the_240_epoch_sgd_protocol():
    cfg = resolve_config(load_yaml(str(REPO / "configs" / "zoo_cifar100.yaml")),
                         {"algo": "supervised", "dataset": "cifar100", "net": "resnet32x4"}, [])
    t = cfg.train
    epoch = 50_000 / t.batch_size
    assert (t.lr, t.batch_size, t.weight_decay, t.lr_schedule, t.lr_decay, t.ema) == (0.05, 64, 5e-4, "multistep", 0.1, 0.0)
    assert t.steps == pytest.approx(240 * epoch, rel=1e-3)
    assert [round(m * t.steps / epoch) for m in t.lr_milestones] == [150, 180, 210]


def test_cifar100_zoo_workflow_and_a_mismatched_teacher(tmp_path):
    """Teacher then DKD student with the zoo preset on tiny CIFAR-100 release files; a CIFAR-10
    teacher is refused with the class counts and input statistics that differ."""
    from ssl_kd.cli import main as train_main
    from ssl_kd.errors import CheckpointError
    from ssl_kd.teacher import load_teacher
    from tests.test_datasets import write_cifar10, write_cifar100

    write_cifar100(tmp_path / "data")
    write_cifar10(tmp_path / "data")
    tiny = ["--config", str(REPO / "configs" / "zoo_cifar100.yaml"), "--net", "resnet8", "--steps", "2", "--eval-every", "2",
            "--batch-size", "8", "--data-dir", str(tmp_path / "data"), "--device", "cpu", "--no-progress"]
    assert train_main(["--algo", "supervised", "--dataset", "cifar100", *tiny, "--out", str(tmp_path / "t100")]) == 0
    assert train_main(["--algo", "dkd", "--dataset", "cifar100", *tiny, "--teacher-ckpt", str(tmp_path / "t100"),
                       "--out", str(tmp_path / "s100")]) == 0
    assert (tmp_path / "s100" / "summary.json").exists()
    assert train_main(["--algo", "supervised", "--dataset", "cifar10", *tiny, "--out", str(tmp_path / "t10")]) == 0
    with pytest.raises(CheckpointError, match=r"'cifar10' \(10 classes.*'cifar100' \(100 classes.*std"):
        load_teacher(str(tmp_path / "t10"), "cifar100", "", lambda name: NETWORKS.get(name)(100))
