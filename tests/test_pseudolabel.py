"""tools/predict.py RUN --unlabelled: the run's unlabelled pool with its pseudo-labels (issue 26)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ssl_kd.cli import main as train_main
from ssl_kd.export import chosen_model, eval_logits
from ssl_kd.run import load_run
from tests.conftest import quick_args
from tests.test_plugins import load_tool
from tests.text_fixtures import text_args, text_env  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def ssl_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pseudo") / "fixmatch"
    assert train_main(quick_args(out, "fixmatch", 2)) == 0
    return out


def pool_of(run) -> list[int]:
    d = run.data
    return sorted(set(d.unlabelled_idx.tolist()) - set(d.labelled_idx.tolist()))


def test_the_pool_is_labelled_with_class_names_and_probabilities(ssl_run, tmp_path):
    out = tmp_path / "labels.csv"
    assert load_tool("predict").main([str(ssl_run), "--unlabelled", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    run = load_run(ssl_run, "cpu")
    pool = pool_of(run)
    assert list(rows[0]) == ["index", "prediction", "probability"] and [int(r["index"]) for r in rows] == pool
    probs = eval_logits(chosen_model(run), run.data.train_x[pool], run.data.policy).softmax(-1)
    assert [r["prediction"] for r in rows] == [run.data.class_names[c] for c in probs.argmax(1).tolist()]
    assert [float(r["probability"]) for r in rows] == pytest.approx(probs.max(1).values.tolist(), abs=1e-5)


def test_min_confidence_keeps_the_confident_rows_as_json_lines(ssl_run, tmp_path):
    every, kept = tmp_path / "all.jsonl", tmp_path / "kept.jsonl"
    predict = load_tool("predict").main
    assert predict([str(ssl_run), "--unlabelled", "--out", str(every)]) == 0
    rows = [json.loads(line) for line in every.read_text().splitlines()]
    cut = sorted(r["probability"] for r in rows)[len(rows) // 2]
    assert predict([str(ssl_run), "--unlabelled", "--min-confidence", str(cut), "--out", str(kept)]) == 0
    assert [json.loads(line) for line in kept.read_text().splitlines()] == [r for r in rows if r["probability"] >= cut]
    assert predict([str(ssl_run), "--unlabelled", "--min-confidence", "1", "--out", str(tmp_path / "none.csv")]) == 0
    assert (tmp_path / "none.csv").read_text().splitlines() == ["index,prediction,probability"]  # the header still says what


def test_a_run_with_influence_weights_writes_each_examples_score_and_weight(tmp_path):
    from ssl_kd.influence.explain import rank_training_examples
    from ssl_kd.weighting.influence import run_influence_config

    run_dir = tmp_path / "weighted"
    assert train_main(quick_args(run_dir, "fixmatch", 2, "--set", "weights.kind=influence")) == 0
    out = tmp_path / "labels.csv"
    assert load_tool("predict").main([str(run_dir), "--unlabelled", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["index", "prediction", "probability", "influence", "weight"]
    run = load_run(run_dir, "cpu")
    ranking = rank_training_examples(chosen_model(run), run.data, split="unlabelled", cfg=run_influence_config(run.cfg))
    assert [int(r["index"]) for r in rows] == ranking.indices.tolist()
    assert [float(r["influence"]) for r in rows] == pytest.approx(ranking.scores.tolist(), rel=1e-5)
    assert [float(r["weight"]) for r in rows] == pytest.approx(ranking.weights.tolist(), abs=1e-5)


def test_a_text_pool_is_written_with_its_sentences(text_env, tmp_path):
    run_dir = tmp_path / "text"
    assert train_main(text_args(text_env, run_dir, "fixmatch", 1)) == 0
    out = tmp_path / "labels.csv"
    assert load_tool("predict").main([str(run_dir), "--unlabelled", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    run = load_run(run_dir, "cpu")
    assert list(rows[0]) == ["index", "text", "prediction", "probability"]
    assert [r["text"] for r in rows] == [run.data.train_text[i] for i in pool_of(run)]
    assert {r["prediction"] for r in rows} <= {"negative", "positive"}


@pytest.mark.parametrize("argv, says", [
    (["--unlabelled", "--min-confidence", "1.5"], "--min-confidence 1.5"),
    (["--unlabelled", "--out", "labels.txt"], ".csv or .jsonl"),
])
def test_bad_pseudo_label_options_are_one_line(ssl_run, tmp_path, capsys, argv, says):
    argv = [str(tmp_path / a) if a.endswith(".txt") else a for a in argv]
    assert load_tool("predict").main([str(ssl_run), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and says in err


def test_a_fully_labelled_run_has_no_pool_to_label(tmp_path, capsys):
    run_dir = tmp_path / "full"
    assert train_main(quick_args(run_dir, "supervised", 1, "--dataset", "digits")) == 0
    capsys.readouterr()
    assert load_tool("predict").main([str(run_dir), "--unlabelled"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no unlabelled examples" in err
