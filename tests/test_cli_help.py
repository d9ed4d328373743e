"""What a user meets first: --help, --list, the progress bar, --compare's folder, eval.py's output."""
from __future__ import annotations

import json
import re
from pathlib import Path

from ssl_kd.cli import compare_dir, doc_line, first_sentence, list_registered, parser
from ssl_kd.config import Config, TrainConfig
from ssl_kd.trainer.progress import progress_postfix
from tests.conftest import quick_args
from tests.test_plugins import load_tool


def test_help_states_each_default_once_and_every_option_has_help():
    text = parser().format_help()
    assert "(default: None)" not in text
    assert "default: fixmatch" in text and "default: digits_100" in text
    for action in parser()._actions:
        assert action.help, action.option_strings
        assert action.help.count("default:") <= 1, action.option_strings


def test_list_describes_algorithms_and_networks():
    text = list_registered()
    assert re.search(r"^\s+fixmatch\s+\[w\]\s+FixMatch \(Sohn", text, re.M)  # takes per-example weights
    assert re.search(r"^\s+supervised\s+Supervised baseline", text, re.M)  # has no terms to weight
    assert re.search(r"^\s+wrn28_2\s+Wide ResNet", text, re.M)
    assert re.search(r"^\s+hf:minilm-l6\s+all-MiniLM-L6-v2", text, re.M)
    assert "hf:<hub-name-or-folder>[:layers=N|every2][:pool=cls|mean]" in text and "text extra" in text


def test_lr_help_says_what_it_does_for_each_kind_of_network():
    lr = next(a for a in parser()._actions if a.dest == "lr").help
    assert "SGD" in lr and "AdamW" in lr and "hf:" in lr and "linear" in lr and "cosine" in lr


def test_list_does_not_end_a_description_at_an_abbreviation():
    """'Tian et al. 2020' and 'i.e. FixMatch' do not end the first sentence; a real full stop does."""
    text = list_registered()
    assert re.search(r"^\s+flexmatch\s+\[w\]\s+FlexMatch .*, i\.e\. FixMatch", text, re.M)
    assert re.search(r"^\s+resnet20\s+ResNet-20, 3 basic blocks per stage", text, re.M)  # each zoo network its own line

    def zoo() -> None:
        """Networks of the RepDistiller zoo (Tian et al. 2020), CIFAR variants. More."""

    assert doc_line(zoo) == "Networks of the RepDistiller zoo (Tian et al. 2020), CIFAR variants."
    assert first_sentence("Zhao et al. 2022 (e.g. DKD) and cf. vs. KD. Second.") == "Zhao et al. 2022 (e.g. DKD) and cf. vs. KD."
    assert first_sentence("One sentence.") == "One sentence." and first_sentence("") == ""


def test_progress_bar_names_its_accuracy_and_hides_it_before_the_first_evaluation():
    assert progress_postfix({"loss/total": 1.23456}, {}, "ema_top1") == {"loss": "1.235"}
    assert progress_postfix({"loss/total": 1.0}, {"ema_top1": 91.234}, "ema_top1") == {"loss": "1.000", "test_ema_top1": "91.2"}


def test_compare_run_is_named_after_its_own_algorithm():
    cfg = Config(train=TrainConfig(algo="kdaif", out="runs/kdaif_digits_100_s0_20260101-000000"))
    assert compare_dir(cfg, "supervised") == Path("runs/supervised_digits_100_s0_20260101-000000")
    cfg.train.out = "runs/mine"
    assert compare_dir(cfg, "supervised") == Path("runs/mine_supervised")


def test_eval_names_classes_and_evaluates_the_teacher(tmp_path, run_cli, capsys):
    out = tmp_path / "run"
    assert run_cli(quick_args(out, "kd", 2))[0] == 0
    capsys.readouterr()
    assert load_tool("eval").main(["--ckpt", str(out), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["ema"]["per_class"]) == [str(d) for d in range(10)]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert abs(result["teacher"]["top1"] - rows[-1]["algo_top1"]) < 1e-3  # the run's own teacher figure


def test_tensorboard_pictures_per_class_confusion_confidence_views(tmp_path, run_cli):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert run_cli(quick_args(out, "kd", 4, "--eval-every", "2"))[0] == 0
    acc = EventAccumulator(str(out / "tb"), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"views/none_weak_strong", "eval/confusion_matrix"} <= set(tags["images"])
    assert [e.step for e in acc.Images("eval/confusion_matrix")] == [2, 4]
    grid = acc.Images("views/none_weak_strong")[0]
    assert (grid.height, grid.width) == (3 * 10, 8 * 10)  # none/weak/strong rows of 8 padded 8x8 digits
    assert "eval/teacher_confidence_unlabelled" in tags["histograms"]  # kd: the teacher's confidence
    hist = acc.Histograms("eval/teacher_confidence_unlabelled")[-1].histogram_value
    assert hist.num == 1024 and 0.0 < hist.min <= hist.max <= 1.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_class = acc.Scalars("eval_ema_per_class/3")
    assert [e.step for e in per_class] == [2, 4] and abs(per_class[-1].value - rows[-1]["ema_per_class"][3]) < 1e-4
