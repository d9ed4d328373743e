"""The explanation report: files written for a tiny model, and the tools/explain.py entry point."""
import csv
import importlib.util
import types
from pathlib import Path

import pytest
import torch

from benchmarks.toy import TinyMLP, digits_ssl_data
from ssl_kd.errors import ConfigError
from ssl_kd.influence import rank_training_examples, write_report
from ssl_kd.trainer.evaluate import predict
from tests.conftest import quick_args

ROOT = Path(__file__).resolve().parents[1]


def load_tool():
    spec = importlib.util.spec_from_file_location("explain_tool", ROOT / "tools" / "explain.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    data = digits_ssl_data(num_labelled=40, num_val=30)
    data.noisy_idx = data.labelled_idx[:4]
    return TinyMLP(hidden=8), data


def test_ranking_orders_and_labels(tiny):
    model, data = tiny
    ranking = rank_training_examples(model, data, split="all", limit=200)
    assert ranking.indices.numel() == 200
    z = ranking.class_z[ranking.order()]
    assert torch.all(z[:-1] <= z[1:])
    labelled = int(ranking.labelled.sum())
    assert ranking.reference == "the validation split (30 examples)"
    assert ranking.scored == f"{labelled} labelled and {200 - labelled} unlabelled (pseudo-labelled) training examples"
    logits, _ = predict(model, data.train_x, data.policy, 512, rows=ranking.indices)
    expected_loss = torch.nn.functional.cross_entropy(logits.float(), ranking.targets, reduction="none")
    torch.testing.assert_close(ranking.loss, expected_loss, rtol=1e-4, atol=1e-5)
    assert float(ranking.weights.mean()) == pytest.approx(1.0, rel=1e-4)
    lab = ranking.labelled
    assert torch.equal(ranking.targets[lab], ranking.labels[lab])
    assert torch.equal(ranking.targets[~lab], ranking.pseudo_labels[~lab])
    one = rank_training_examples(model, data, test_index=3, split="labelled")
    assert one.reference.startswith("test example 3 (label") and one.indices.numel() == 40 and int(one.flipped.sum()) == 4
    assert torch.all(one.scores[one.order()][:-1] <= one.scores[one.order()][1:])  # one test example: by the raw score
    with pytest.raises(ConfigError, match="out of range"):
        rank_training_examples(model, data, test_index=10_000)


def test_class_z_ranks_within_each_target_class():
    """Raw scores that sort whole classes apart (class 1 all above class 0) still put each class's
    own outliers at the ends: z-scored per target class, the order interleaves the classes."""
    from ssl_kd.influence.explain import Ranking

    targets = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    scores = torch.tensor([-9.0, -8.0, -7.0, -1.0, 1.0, 7.0, 8.0, 9.0])  # the outliers: -1 in class 0, 1 in class 1
    n = targets.numel()
    ranking = Ranking(torch.arange(n), scores, torch.ones(n), targets, targets, targets, torch.ones(n, dtype=torch.bool),
                      torch.zeros(n, dtype=torch.bool), torch.zeros(n), "the validation split (8 examples)", "8 labelled")
    for c in (0, 1):
        z = ranking.class_z[targets == c]
        assert float(z.mean()) == pytest.approx(0, abs=1e-6) and float(z.std(unbiased=False)) == pytest.approx(1, rel=1e-5)
    order = ranking.order().tolist()
    assert order[0] == 4 and order[-1] == 3  # class 1's lowest helps most, class 0's highest hurts most


def test_reference_without_a_validation_split_is_named_the_labelled_training_split():
    torch.manual_seed(0)
    data = digits_ssl_data(num_labelled=40, num_val=0)
    ranking = rank_training_examples(TinyMLP(hidden=8), data, split="unlabelled", limit=50)
    assert ranking.reference.startswith("the labelled training split (40 examples; the run has no validation split")
    assert ranking.scored == "50 unlabelled (pseudo-labelled) training examples"


def test_report_files_written(tiny, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    model, data = tiny
    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    paths = write_report(model, data, tmp_path / "explain", top=5, split="labelled", writer=writer)
    writer.close()
    assert set(paths) == {"csv", "histogram", "grid"}
    for path in paths.values():
        assert path.exists() and path.stat().st_size > 0
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and sum(int(r["flipped"]) for r in rows) == 4
    assert float(rows[0]["class_z"]) <= float(rows[-1]["class_z"]) and {"score", "loss"} <= set(rows[0])
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_explain_tool_end_to_end(tiny, tmp_path, monkeypatch, capsys):
    """tools/explain.py against `ssl_kd.run.load_run(path, device, data_dir)` (stubbed: no run here)."""
    model, data = tiny
    run = types.SimpleNamespace(cfg=types.SimpleNamespace(train=types.SimpleNamespace(weight_decay=5e-4)),
                                data=data, model=model, ema_model=None, run_dir=tmp_path)
    import ssl_kd.run

    monkeypatch.setattr(ssl_kd.run, "load_run", lambda path, device, data_dir, plugins=(): run)
    tool = load_tool()
    assert tool.main(["--ckpt", "x.pt", "--test-index", "2", "--top", "4", "--device", "cpu", "--split", "labelled"]) == 0
    assert (tmp_path / "explain" / "influence_test2.png").exists()
    assert "influence_test2.csv" in capsys.readouterr().out
    assert tool.main(["--ckpt", "x.pt", "--test-index", "99999", "--device", "cpu", "--no-tensorboard"]) == 2
    assert "out of range" in capsys.readouterr().err


def _stub_run(monkeypatch, tmp_path, model, data, weights):
    """tools/explain.py's `load_run` stubbed to return a run with these `weights` settings."""
    import ssl_kd.run

    cfg = types.SimpleNamespace(train=types.SimpleNamespace(weight_decay=5e-4), weights=weights)
    run = types.SimpleNamespace(cfg=cfg, data=data, model=model, ema_model=None, run_dir=tmp_path)
    monkeypatch.setattr(ssl_kd.run, "load_run", lambda path, device, data_dir, plugins=(): run)


def test_explain_scores_with_the_weighted_runs_own_estimator(tiny, tmp_path, monkeypatch):
    """A run trained with influence weights is explained with its own weights.* estimator (damping,
    relative, reference temperature, map), not the library defaults; an unweighted run keeps them."""
    import ssl_kd.influence.explain as explain
    from ssl_kd.influence import InfluenceConfig
    from ssl_kd.weighting.config import WeightsConfig

    model, data = tiny
    original, seen = explain.rank_training_examples, []

    def spy(*args, **kwargs):
        seen.append(kwargs["cfg"] if "cfg" in kwargs else args[4])
        return original(*args, **kwargs)

    monkeypatch.setattr(explain, "rank_training_examples", spy)
    tool = load_tool()
    argv = ["--ckpt", "x.pt", "--device", "cpu", "--split", "labelled", "--top", "2", "--no-tensorboard"]
    scores = {}
    for name, weights in (("weighted", WeightsConfig(kind="influence", damping_fraction=0.37, relative="none",
                                                     reference_tau=2.5, temperature=1.5)),
                          ("unweighted", WeightsConfig(kind="none", damping_fraction=0.37, relative="none"))):
        _stub_run(monkeypatch, tmp_path / name, model, data, weights)
        assert tool.main(argv) == 0
        with open(tmp_path / name / "explain" / "influence_val.csv") as f:
            scores[name] = sorted(float(row["score"]) for row in csv.DictReader(f))
    weighted, unweighted = seen
    assert (weighted.damping_fraction, weighted.relative, weighted.reference_tau, weighted.temperature,
            weighted.weight_decay) == (0.37, "none", 2.5, 1.5, 5e-4)
    assert unweighted == InfluenceConfig(weight_decay=5e-4)
    assert scores["weighted"] != pytest.approx(scores["unweighted"], rel=1e-3)


def test_kdaif_runs_are_explained_with_kdaifs_weights_defaults():
    """kdaif's weights default to influence, so a plain kdaif run is explained with weights.*'s
    defaults (cosine-relative scores, reference at temperature 4), fixmatch's with the library's."""
    from ssl_kd.influence import InfluenceConfig
    from ssl_kd.run import resolve_config
    from ssl_kd.weighting.influence import run_influence_config

    kdaif = run_influence_config(resolve_config({}, {"algo": "kdaif", "dataset": "digits_30"}, ["weights.damping_fraction=0.3"]))
    assert (kdaif.relative, kdaif.reference_tau, kdaif.damping_fraction, kdaif.temperature) == ("cosine", 4.0, 0.3, 3.0)
    fixmatch = run_influence_config(resolve_config({}, {"algo": "fixmatch", "dataset": "digits_30"}, ["weights.damping_fraction=0.3"]))
    assert fixmatch == InfluenceConfig(weight_decay=fixmatch.weight_decay)


def test_explain_tool_on_a_real_run(tmp_path, run_cli, capsys):
    """A two-step digits run written by the trainer, explained through the real `load_run`."""
    run_dir = tmp_path / "run"
    code, _ = run_cli(quick_args(run_dir, "fixmatch", 2))
    assert code == 0
    tool = load_tool()
    assert tool.main(["--ckpt", str(run_dir), "--top", "3", "--device", "cpu", "--split", "labelled"]) == 0
    out = capsys.readouterr().out
    assert str(run_dir / "explain" / "influence_val.csv") in out
    assert (run_dir / "explain" / "influence_val.png").exists()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))


def test_an_unseen_class_image_is_named_unseen_not_the_last_class():
    from types import SimpleNamespace

    from ssl_kd.influence.explain import _name

    data = SimpleNamespace(class_names=["zero", "one"])
    assert [_name(data, 1), _name(data, -1), _name(data, 7)] == ["one", "unseen", "7"]


def _direct_scores(model, data, idx, cfg):
    """Influence of each example in `idx` by autograd and a dense solve, one example's gradient per
    row (independent of the weighter's closed forms): -g_i^T (H + lambda I)^-1 g_ref, over |g_i| for
    cosine or sqrt(g_i^T (H + lambda I)^-1 g_i) for relatif."""
    from ssl_kd.trainer.evaluate import predict

    logits, f = predict(model, data.train_x[idx], data.policy, 100_000)
    ref = data.val_idx if data.val_idx.numel() else data.labelled_idx
    _, f_ref = predict(model, data.train_x[ref], data.policy, 100_000)
    labelled = torch.isin(idx, data.labelled_idx)
    targets = torch.where(labelled, data.train_y[idx], logits.argmax(1))
    head = model.head
    theta = torch.cat([head.weight, head.bias[:, None]], 1).detach().double()
    x, x_ref = (torch.cat([v.double(), torch.ones(v.shape[0], 1, dtype=torch.float64)], 1) for v in (f, f_ref))
    per_example = lambda t: torch.nn.functional.cross_entropy(x @ t.reshape(theta.shape).T, targets, reduction="none")  # noqa: E731
    flat = theta.reshape(-1)
    g = torch.autograd.functional.jacobian(per_example, flat)  # (N, P)
    h = torch.autograd.functional.hessian(lambda t: per_example(t).mean(), flat)
    g_ref = torch.autograd.functional.jacobian(lambda t: torch.nn.functional.cross_entropy(
        x_ref @ t.reshape(theta.shape).T / cfg.reference_tau, data.train_y[ref]), flat)
    damped = h + (cfg.damping_fraction * h.trace() / flat.numel() + cfg.weight_decay) * torch.eye(flat.numel(), dtype=h.dtype)
    scores = -g @ torch.linalg.solve(damped, g_ref)
    if cfg.relative == "cosine":
        scores = scores / g.norm(dim=1)
    elif cfg.relative == "relatif":
        scores = scores / (g * torch.linalg.solve(damped, g.T).T).sum(1).sqrt()
    return scores


@pytest.mark.parametrize("relative", ["none", "cosine", "relatif"])
def test_chunked_scores_equal_a_direct_per_example_computation(tiny, relative):
    """The whole training set scored in chunks (37 rows, so chunks split classes and splits) equals
    autograd's per-example gradients against a dense solve; relatif, which the static table could
    not score, included."""
    from ssl_kd.influence import InfluenceConfig

    model, data = tiny
    cfg = InfluenceConfig(weight_decay=5e-4, damping_fraction=0.3, reference_tau=4.0, relative=relative)
    ranking = rank_training_examples(model, data, split="all", cfg=cfg, chunk_size=37)
    assert ranking.indices.numel() == torch.unique(torch.cat([data.labelled_idx, data.unlabelled_idx])).numel()
    direct = _direct_scores(model, data, ranking.indices, cfg)
    assert torch.allclose(ranking.scores.double(), direct, rtol=1e-4, atol=1e-6 * float(direct.abs().max()))


def test_scores_and_weights_equal_the_static_table_path(tiny):
    """Scores and mapped weights equal what the earlier ranking computed (the weighter's static
    table: fit_static, then weights() of the whole set), for the sigmoid and a dropping map."""
    import dataclasses

    from ssl_kd.influence import InfluenceConfig, InfluenceWeighter
    from ssl_kd.trainer.evaluate import predict

    model, data = tiny
    for cfg in (InfluenceConfig(weight_decay=5e-4, relative="cosine", temperature=3.0),
                InfluenceConfig(weight_map="quantile", drop=0.3, renormalise=False)):
        ranking = rank_training_examples(model, data, split="all", cfg=cfg, limit=500, chunk_size=64)
        idx = ranking.indices
        logits, f = predict(model, data.train_x[idx], data.policy, 512)
        _, f_ref = predict(model, data.train_x[data.val_idx], data.policy, 512)
        static = InfluenceWeighter(dataclasses.replace(cfg, schedule="static", warmup_steps=0))
        scores = static.fit_static(model.head, f_ref, data.train_y[data.val_idx], f, ranking.targets, idx)
        weights = static.weights(f, logits, ranking.targets, 0, idx=idx)
        assert torch.allclose(ranking.scores, scores, rtol=1e-5, atol=1e-7 * float(scores.abs().max()))
        assert torch.allclose(ranking.weights, weights, rtol=1e-5, atol=1e-6)


def test_text_is_run_shortest_first_and_comes_back_in_order():
    """Token ids go through the network by length (each batch pads only to its own longest
    sentence) and the logits and features come back in the order asked for."""
    from ssl_kd.data.types import TextPolicy
    from ssl_kd.influence.explain import _forward
    from ssl_kd.trainer.evaluate import predict

    class Bag(torch.nn.Module):  # mean embedding of a row's tokens, trimmed to the batch's longest like hf.py
        def __init__(self):
            super().__init__()
            self.emb, self.head, self.widths = torch.nn.Embedding(50, 6), torch.nn.Linear(6, 3), []

        def forward(self, ids):
            mask = ids != 0
            longest = int((mask * torch.arange(1, ids.shape[1] + 1)).max())
            self.widths.append(longest)
            ids, mask = ids[:, :longest], mask[:, :longest, None]
            f = (self.emb(ids) * mask).sum(1) / mask.sum(1)
            return self.head(f), f

    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 31, (100,), generator=gen)
    x = torch.randint(1, 50, (100, 30), generator=gen) * (torch.arange(30) < lengths[:, None])
    rows = torch.randperm(100, generator=gen)[:70]
    model, policy = Bag(), TextPolicy(pad_id=0)
    logits, feats = _forward(model, x, rows, policy, 8, "", torch.device("cpu"))
    by_length = model.widths
    model.widths = []
    expected = predict(model, x, policy, 8, rows=rows)
    assert torch.allclose(logits, expected[0], atol=1e-6) and torch.allclose(feats, expected[1], atol=1e-6)
    assert by_length == sorted(by_length) and sum(by_length) < sum(model.widths)
