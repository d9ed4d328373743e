"""STS-B as released, a regression task (`stsb`: one output, MSE on the float gold, Pearson/Spearman
against it), and its six-class form (`stsb6`), on a tiny STS-B in the release layout and a tiny BERT."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from ssl_kd.cli import main as train_main
from ssl_kd.errors import ConfigError
from ssl_kd.export import eval_logits
from ssl_kd.run import load_run
from tests.test_plugins import load_tool
from tests.text_fixtures import make_text_trainer, text_args, text_env  # noqa: F401 (fixture)

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def stsb_run(text_env, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stsb") / "run"
    assert train_main(text_args(text_env, out, "supervised", 3, "stsb", "--set", "data.val_per_class=2")) == 0
    return out


def test_stsb_trains_as_regression_and_reports_pearson_spearman_against_the_float_gold(stsb_run):
    summary = json.loads((stsb_run / "summary.json").read_text())
    assert summary["task_metric"] == "pearson_spearman" and summary["selected_on"] == "val"
    for key in ("last_pearson_spearman", "last_pearson", "last_spearman", "test_pearson_at_best_val",
                "test_spearman_at_best_val"):
        assert isinstance(summary[key], float), key
    row = [json.loads(line) for line in (stsb_run / "metrics.jsonl").read_text().splitlines()][-1]
    assert "top1" not in row and "val_top1" not in row and "val_pearson_spearman" in row
    run = load_run(stsb_run, "cpu")
    assert run.data.task == "regression" and run.model.head.out_features == 1
    assert run.model.hf.config.problem_type == "regression"
    pred = eval_logits(run.model, run.data.test_x, run.data.policy)[:, 0].double().numpy()
    gold = run.data.test_gold.numpy()
    assert row["pearson"] == pytest.approx(100 * pearsonr(pred, gold)[0], abs=1e-3)
    assert row["spearman"] == pytest.approx(100 * spearmanr(pred, gold)[0], abs=1e-3)
    assert row["mse"] == pytest.approx(float(((pred - gold) ** 2).mean()), abs=1e-3)
    assert summary["last_pearson"] == row["pearson"] and summary["last_spearman"] == row["spearman"]


def test_the_regression_loss_is_mse_of_the_one_output_on_the_float_gold(text_env, tmp_path):
    trainer = make_text_trainer(text_env, tmp_path, "supervised", 2, "stsb")
    batch = trainer.next_batch()
    gold = trainer.data.train_gold[batch.idx_l]
    assert batch.y_l.dtype == torch.float32 and torch.equal(batch.y_l, gold.float())
    assert (gold != gold.round()).any()  # fractional scores, not their bins
    trainer.model.eval()  # no dropout: the hand computation sees the same outputs
    loss = trainer.algorithm.train_step(batch).loss.detach()
    with torch.no_grad():
        outputs = trainer.model(batch.x_l["weak"])[0]
    assert outputs.shape == (gold.numel(), 1)
    by_hand = sum((float(o) - float(g)) ** 2 for o, g in zip(outputs[:, 0], gold)) / gold.numel()
    assert float(loss) == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.parametrize("algo", ["fixmatch", "pseudolabel", "kdaif"])
def test_a_classification_only_algorithm_is_refused_in_one_line(text_env, tmp_path, capsys, algo):
    assert train_main(text_args(text_env, tmp_path / algo, algo, 2, "stsb_12")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"algorithm {algo!r} is defined on class probabilities and cannot train stsb_12, a regression task" in err
    assert "use meanteacher or supervised, or its classification form stsb6_12" in err


def test_influence_weights_and_label_noise_are_refused_on_regression(text_env, tmp_path):
    with pytest.raises(ConfigError, match=r"weights.kind=influence .* regression task; use weights.kind=none, or its "
                                          r"classification form stsb6$"):
        make_text_trainer(text_env, tmp_path / "a", "supervised", 2, "stsb", "--set", "weights.kind=influence")
    with pytest.raises(ConfigError, match=r"data.label_noise .* stsb is a regression task; drop data.label_noise; "
                                          r"the classification form stsb6 takes it"):
        make_text_trainer(text_env, tmp_path / "b", "supervised", 2, "stsb", "--set", "data.label_noise=0.2")


def test_the_six_class_form_bins_half_up_and_correlates_its_expected_class_with_the_float_gold(text_env, tmp_path, capsys):
    trainer = make_text_trainer(text_env, tmp_path, "supervised", 2, "stsb6")
    d = trainer.data
    assert d.task == "classification" and trainer.model.head.out_features == 6
    assert torch.equal(d.train_y, (d.train_gold + 0.5).floor().long())
    halves = [g for g in d.train_gold.tolist() if g % 1 == 0.5]
    assert halves and any(round(g) != math.floor(g + 0.5) for g in halves)  # round-half-to-even would differ
    row = trainer.evaluate()
    logits = eval_logits(trainer.model, d.test_x, d.policy).double()
    expected = (logits.softmax(-1) * torch.arange(6)).sum(-1).numpy()
    assert row["pearson"] == pytest.approx(100 * pearsonr(expected, d.test_gold.numpy())[0], abs=1e-6)
    assert "top1" in row
    assert train_main(text_args(text_env, tmp_path / "run", "supervised", 2, "stsb6")) == 0
    assert "last_pearson_spearman" in json.loads((tmp_path / "run" / "summary.json").read_text())
    capsys.readouterr()
    assert load_tool("eval").main(["--ckpt", str(tmp_path / "run"), "--device", "cpu"]) == 0  # against the gold too
    last = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert json.loads(capsys.readouterr().out)["model"]["pearson"] == pytest.approx(last["pearson"], abs=1e-3)


def test_eval_tool_scores_a_regression_run_against_the_float_gold(stsb_run, capsys):
    assert load_tool("eval").main(["--ckpt", str(stsb_run), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    last = [json.loads(line) for line in (stsb_run / "metrics.jsonl").read_text().splitlines()][-1]
    assert result["model"]["pearson"] == pytest.approx(last["pearson"], abs=1e-3) and "top1" not in result["model"]


def test_a_regression_run_exports_a_one_label_regression_model_and_predicts_scores(stsb_run, tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    assert load_tool("export").main([str(stsb_run), "--out", str(tmp_path / "hf")]) == 0
    capsys.readouterr()  # the export's own report
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.num_labels == 1 and hf.config.id2label == {0: "score"} and hf.config.problem_type == "regression"
    pairs = [("the film was good", "a nice story"), ("awful plot", "the acting was great")]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    encoded = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    with torch.no_grad():
        exported = hf(**encoded).logits
    run = load_run(stsb_run, "cpu")
    assert torch.allclose(exported, eval_logits(run.model, encoded["input_ids"], run.data.policy), atol=1e-5)
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{a}\t{b}\n" for a, b in pairs)))
    assert load_tool("predict").main([str(stsb_run)]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["input", "score"] and len(rows) == 3
    assert [float(r[1]) for r in rows[1:]] == pytest.approx(exported[:, 0].tolist(), abs=1e-5)


def test_mean_teacher_regresses_with_an_mse_consistency_on_the_outputs(text_env, tmp_path):
    trainer = make_text_trainer(text_env, tmp_path, "meanteacher", 2, "stsb_12")
    algo, batch = trainer.algorithm, trainer.next_batch()
    trainer.model.eval()
    algo.teacher.eval()
    algo.teacher.train = lambda mode=True: algo.teacher  # keep dropout off for the hand computation
    with torch.no_grad():
        student = trainer.model(batch.x_u["weak"])[0]
        teacher = algo.teacher(batch.x_u["weak_2"])[0]
        labelled = trainer.model(batch.x_l["weak"])[0]
    assert student.shape[1] == 1
    unsup = algo.consistency_loss(student, batch.x_u["weak_2"])
    assert float(unsup) == pytest.approx(float(((student - teacher) ** 2).mean()), rel=1e-5)
    out = algo.train_step(batch)
    sup = float(((labelled[:, 0] - batch.y_l) ** 2).mean())
    assert float(out.logs["loss/sup"]) == pytest.approx(sup, rel=1e-5)
    assert "pearson_spearman" in trainer.evaluate()


def test_explain_refuses_a_regression_run_in_one_line(stsb_run, capsys):
    assert load_tool("explain").main(["--ckpt", str(stsb_run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("error: explain measures influence on the cross-entropy of class labels and stsb is a regression "
                       "task; explain a classification run instead, e.g. of its classification form stsb6")
