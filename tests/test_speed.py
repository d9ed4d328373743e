"""Speed measurement pieces: the plain floor step, amortised occasional work, the PIL pipeline's views."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ssl_kd.config import TrainConfig
from ssl_kd.floor import FloorStep, image_inputs
from ssl_kd.pil_pipeline import Cutout, fixmatch_transforms
from ssl_kd.timing import OccasionalWork, amortised


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6))
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.body(x)
        return self.head(feats), feats


def _floor(unlabelled_views: int = 2) -> FloorStep:
    torch.manual_seed(0)
    train = TrainConfig(batch_size=4, uratio=2, ema=0.9, lr=0.1)
    inputs = image_inputs((3, 2, 2), 4 + 8 * unlabelled_views, torch.device("cpu"), False)
    return FloorStep(TinyNet(), inputs, 3, train, 1, unlabelled_views, torch.device("cpu"))


def test_floor_forwards_every_view_and_updates_weights_and_ema() -> None:
    floor = _floor()
    assert floor.x.shape == (4 + 2 * 8, 3, 2, 2)
    before = [p.detach().clone() for p in floor.net.parameters()]
    ema_before = [e.clone() for e in floor.ema]
    floor()
    after = list(floor.net.parameters())
    assert all(not torch.equal(b, a) for b, a in zip(before, after))
    for e0, e, p in zip(ema_before, floor.ema, after):
        torch.testing.assert_close(e, 0.9 * e0 + 0.1 * p.detach())
    torch.testing.assert_close(floor.ema_buffers[0], floor.net.body[2].running_mean)


def test_floor_loss_is_labelled_ce_plus_masked_pseudo_label_ce() -> None:
    floor = _floor()
    logits = torch.randn(20, 3)
    logits[4:12] *= 20  # confident weak view: most of it passes the 0.95 mask
    conf, pseudo = torch.softmax(logits[4:12], -1).max(-1)
    mask = (conf >= 0.95).float()
    assert 0 < mask.sum() < 8
    expected = F.cross_entropy(logits[:4], floor.y) + (F.cross_entropy(logits[12:], pseudo, reduction="none") * mask).mean()
    torch.testing.assert_close(floor.loss(logits), expected)
    supervised = FloorStep(TinyNet(), image_inputs((3, 2, 2), 4, torch.device("cpu"), False), 3,
                           TrainConfig(batch_size=4, uratio=2), 1, 0, torch.device("cpu"))
    assert supervised.x.shape[0] == 4
    torch.testing.assert_close(supervised.loss(logits[:4]), F.cross_entropy(logits[:4], supervised.y))


def test_amortised_spreads_occasional_work_over_its_period() -> None:
    steps = [1.0, 1.2, 5.0, 0.8, 1.0]
    occasional = [0.0, 0.0, 4.0, 0.0, 0.0]
    assert amortised(steps, occasional, 10) == pytest.approx(1.0 + 0.4)
    assert amortised(steps, [0.0] * 5, 10) == pytest.approx(1.0)


def test_occasional_work_times_refreshes_once_even_when_nested(monkeypatch) -> None:
    clock = [0.0]  # a fake clock: only `work` advances it, so the test is exact under any load
    monkeypatch.setattr("ssl_kd.timing.time.perf_counter", lambda: clock[0])

    def work(seconds: float) -> None:
        clock[0] += seconds

    class Weighter:
        cfg = SimpleNamespace(schedule="periodic", refresh_every=25)

        def refresh(self) -> None:
            work(2.0)

    class Module:
        weighter = Weighter()

        def reference_batch(self) -> None:
            work(3.0)

        def fit_static(self) -> None:
            work(1.0)
            self.reference_batch()

    algo = SimpleNamespace(weights=Module())
    occasional = OccasionalWork(algo)
    assert occasional.period == 25
    algo.weights.weighter.refresh()
    work(7.0)  # outside any timed method
    assert occasional.take() == 2.0
    assert occasional.take() == 0.0
    algo.weights.fit_static()
    assert occasional.take() == 4.0, "the nested reference_batch was counted twice"
    assert OccasionalWork(SimpleNamespace()).period > 10**6


def test_pil_views_and_cutout() -> None:
    np.random.seed(0)
    torch.manual_seed(0)
    img = Image.fromarray(np.random.randint(0, 256, (32, 32, 3), dtype=np.uint8))
    weak, strong = fixmatch_transforms(32, (0.5,) * 3, (0.25,) * 3)
    assert weak(img).shape == strong(img).shape == (3, 32, 32)
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    filled = [np.asarray(Cutout(0.5)(white))[..., 0] for _ in range(20)]
    sizes = [(f == 127).sum() for f in filled]
    assert all(set(np.unique(f)) <= {127, 255} for f in filled)
    assert max(sizes) > 0 and max(sizes) <= 17 * 17 and len(set(sizes)) > 1


def test_compile_failure_falls_back_to_eager_with_one_message(monkeypatch, capsys) -> None:
    from ssl_kd.trainer import compile as compile_module

    def broken_compile(module: nn.Module, **kwargs: object):  # what a missing C++ compiler looks like
        def run(*args: object) -> None:
            raise RuntimeError("InductorError: no working C++ compiler found\nlong traceback")
        return run

    monkeypatch.setattr(compile_module.torch, "compile", broken_compile)
    net = TinyNet().eval()
    wrapped = compile_module.CompiledWithFallback(net)
    x = torch.randn(5, 3, 2, 2)
    for _ in range(2):
        torch.testing.assert_close(wrapped(x)[0], net(x)[0])
    err = capsys.readouterr().err
    assert err.count("torch.compile failed") == 1 and "no working C++ compiler" in err and "long traceback" not in err
    assert wrapped.head is net.head and wrapped.failed


def test_fused_sgd_matches_the_default_update() -> None:
    from ssl_kd.trainer.schedule import make_optimizer

    torch.manual_seed(0)
    nets = [TinyNet(), TinyNet()]
    nets[1].load_state_dict(nets[0].state_dict())
    auto = make_optimizer(nets[0], 0.1, 0.9, True, 5e-4)
    fused = make_optimizer(nets[1], 0.1, 0.9, True, 5e-4, fused=True)
    assert not auto.defaults["fused"] and fused.defaults["fused"]  # CPU parameters: fused only when asked
    x = torch.randn(8, 3, 2, 2)
    for _ in range(3):
        for net, opt in zip(nets, (auto, fused)):
            opt.zero_grad()
            net(x)[0].square().sum().backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
