"""GLUE readers on small files written in the release format, the name grammar, and each official
metric against scikit-learn/scipy."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from ssl_kd.data.build import parse_dataset_name
from ssl_kd.errors import ConfigError, DataError
from ssl_kd.text.metrics import official_metrics

glue = pytest.importorskip("ssl_kd.datasets.glue")

# Two rows per file in each task's release layout (headers, column orders and MRPC's byte-order mark as released).
RELEASE = {
    "CoLA": (None, ["gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.",
                    "gj04\t0\t*\tOne more pseudo generalization and I'm giving up."]),
    "SST-2": ("sentence\tlabel", ['it \'s a charming and often "affecting" journey . \t1', "unflinchingly bleak \t0"]),
    "MRPC": ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
             ["1\t702876\t702977\tAmrozi accused his brother .\tReferring to him , Amrozi accused .",
              "0\t2108705\t2108831\tYucaipa owned Dominick 's .\tYucaipa bought Dominick 's in 1995 ."]),
    "QQP": ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
            ["1\t3\t4\tHow do I read \"books\"?\tHow can I read books?\t1", "2\t5\t6\tWhat is X?\tWhy is Y?\t0"]),
    "STS-B": ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
              ["0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000",
               "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man plays a flute.\tA man plays a bamboo flute.\t3.800"]),
    "MNLI": ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
             "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label",
             ["0\t31193\t31193n\tgov\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tConceptually cream skimming.\tProduct and geography.\tneutral\tneutral",
              "1\t101457\t101457e\ttel\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tyou know during the season\tYou lose the things.\tentailment\tentailment"]),
    "QNLI": ("index\tquestion\tsentence\tlabel", ["0\tWhen did it open?\tIt opened in 1900.\tentailment",
                                                 "1\tWho?\tNobody knows why.\tnot_entailment"]),
    "RTE": ("index\tsentence1\tsentence2\tlabel", ["0\tDana Reeve died.\tChristopher Reeve had an accident.\tnot_entailment",
                                                  "1\tYet, we now are.\tBacteria is winning.\tentailment"]),
    "WNLI": ("index\tsentence1\tsentence2\tlabel", ["0\tI stuck a pin.\tThe pin had a hole.\t1", "1\tJohn ran.\tHe ran.\t0"]),
}
EXPECTED = {  # family -> (first example's texts, labels of the two rows)
    "cola": (("Our friends won't buy this analysis, let alone the next one we propose.",), [1, 0]),
    "sst2": (('it \'s a charming and often "affecting" journey . ',), [1, 0]),
    "mrpc": (("Amrozi accused his brother .", "Referring to him , Amrozi accused ."), [1, 0]),
    "qqp": (('How do I read "books"?', "How can I read books?"), [1, 0]),
    "stsb": (("A plane is taking off.", "An air plane is taking off."), [5, 4]),
    "mnli": (("Conceptually cream skimming.", "Product and geography."), [2, 1]),
    "mnli-mm": (("Conceptually cream skimming.", "Product and geography."), [2, 1]),
    "qnli": (("When did it open?", "It opened in 1900."), [0, 1]),
    "rte": (("Dana Reeve died.", "Christopher Reeve had an accident."), [1, 0]),
    "wnli": (("I stuck a pin.", "The pin had a hole."), [1, 0]),
}


def write_release(root: Path) -> Path:
    for folder, (header, rows) in RELEASE.items():
        path = root / "glue" / folder
        path.mkdir(parents=True, exist_ok=True)
        body = "".join(f"{line}\n" for line in ([header] if header else []) + rows)
        devs = ["dev_matched.tsv", "dev_mismatched.tsv"] if folder == "MNLI" else ["dev.tsv"]
        for name in ["train.tsv", *devs]:
            (path / name).write_text(body)
    return root


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_every_task_reads_its_release_layout(tmp_path, family):
    root = write_release(tmp_path)
    task = glue.TASKS[family]
    raw = glue.glue_loader(task)(root / family, False)
    texts, labels = EXPECTED[family]
    assert raw.train_text[0] == texts and raw.train_y.tolist() == labels and raw.test_y.tolist() == labels
    assert len(raw.class_names) == len(task.labels)
    assert parse_dataset_name(f"{family}_1k") == (family, 1000) and parse_dataset_name(family) == (family, None)


def test_mnli_mismatched_reads_its_own_dev_file(tmp_path):
    root = write_release(tmp_path)
    (root / "glue" / "MNLI" / "dev_mismatched.tsv").unlink()
    glue.glue_loader(glue.TASKS["mnli"])(root / "mnli", False)
    with pytest.raises(DataError, match="dev_mismatched.tsv"):
        glue.glue_loader(glue.TASKS["mnli-mm"])(root / "mnli-mm", False)


@pytest.mark.parametrize("content, message", [
    ("sentence\tlabel\na fine film\n", "holds no examples \\(1 short rows skipped\\)"),
    ("sentence\tlabel\na fine film\t7\n", "label '7' is not one of 0, 1"),
    ("text\tlabel\na fine film\t1\n", "lacks column"),
    ("sentence\tlabel\n", "holds no examples"),
])
def test_malformed_file_names_the_file_and_layout(tmp_path, content, message):
    folder = tmp_path / "glue" / "SST-2"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text(content)
    with pytest.raises(DataError, match=message) as err:
        glue.glue_loader(glue.TASKS["sst2"])(tmp_path / "sst2", False)
    assert "SST-2/train.tsv" in str(err.value) and "tab-separated" in str(err.value)


def test_mrpc_header_with_a_byte_order_mark_reads(tmp_path):
    root = write_release(tmp_path)
    assert (root / "glue" / "MRPC" / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbfQuality")
    raw = glue.glue_loader(glue.TASKS["mrpc"])(root / "mrpc", False)
    assert raw.train_y.tolist() == [1, 0]


def test_qqp_short_rows_are_skipped_and_counted(tmp_path, capsys):
    folder = tmp_path / "glue" / "QQP"
    folder.mkdir(parents=True)
    header, rows = RELEASE["QQP"]
    # as at line 97,931 of the released train.tsv: a question broken over two lines
    body = "\n".join([header, rows[0], "3\t7\t8\tHow do I", "\tget there?\t0", rows[1]]) + "\n"
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_text(body)
    raw = glue.glue_loader(glue.TASKS["qqp"])(tmp_path / "qqp", False)
    assert raw.train_y.tolist() == [1, 0] and len(raw.train_text) == 2
    assert "skipped 2 row(s) with fewer than 6 tab-separated fields (line 3, 4)" in capsys.readouterr().err


def test_stsb_rounds_half_up_and_keeps_the_float_gold(tmp_path):
    folder = tmp_path / "glue" / "STS-B"
    folder.mkdir(parents=True)
    header, rows = RELEASE["STS-B"]
    scores = ["2.500", "3.500", "0.400", "4.600"]
    body = [header] + [rows[0].rsplit("\t", 1)[0] + f"\t{v}" for v in scores]
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_text("\n".join(body) + "\n")
    raw = glue.glue_loader(glue.TASKS["stsb"])(tmp_path / "stsb", False)
    assert raw.train_y.tolist() == [3, 4, 0, 5]  # round() would give 2 for 2.5
    assert raw.test_gold.tolist() == [2.5, 3.5, 0.4, 4.6]


def test_stsb_correlations_are_against_the_float_gold():
    logits6, y6 = random_logits(50, 6, 3)
    gold = y6.double() + torch.linspace(-0.45, 0.45, 50)
    expected = (logits6.double().softmax(1) * torch.arange(6)).sum(1).numpy()
    got = official_metrics("pearson_spearman", logits6, y6, gold)
    assert got["pearson"] == pytest.approx(100 * pearsonr(expected, gold.numpy())[0])
    assert got["spearman"] == pytest.approx(100 * spearmanr(expected, gold.numpy())[0])
    assert got["pearson_spearman"] == pytest.approx((got["pearson"] + got["spearman"]) / 2)
    assert got["pearson"] != pytest.approx(official_metrics("pearson_spearman", logits6, y6)["pearson"])


def test_missing_file_says_where_it_was_expected(tmp_path):
    with pytest.raises(DataError, match=r"glue/RTE/train.tsv is missing.*<data-dir>/glue/RTE/\{train.tsv,dev.tsv\}"):
        glue.glue_loader(glue.TASKS["rte"])(tmp_path / "rte", False)


def test_bad_label_count_is_a_config_error():
    with pytest.raises(ConfigError, match="bad label count"):
        parse_dataset_name("sst2_x1")


def random_logits(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=g), torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("seed", [0, 1])
def test_official_metrics_match_sklearn_and_scipy(seed):
    logits, y = random_logits(200, 2, seed)
    pred = logits.argmax(1).numpy()
    acc = 100 * accuracy_score(y.numpy(), pred)
    assert official_metrics("accuracy", logits, y) == {"accuracy": pytest.approx(acc)}
    assert official_metrics("f1", logits, y) == {"f1": pytest.approx(100 * f1_score(y.numpy(), pred)),
                                                 "accuracy": pytest.approx(acc)}
    assert official_metrics("matthews", logits, y)["matthews"] == pytest.approx(100 * matthews_corrcoef(y.numpy(), pred))
    logits6, y6 = random_logits(200, 6, seed)
    expected = (logits6.double().softmax(1) * torch.arange(6)).sum(1).numpy()
    got = official_metrics("pearson_spearman", logits6, y6)
    assert got["pearson"] == pytest.approx(100 * pearsonr(expected, y6.numpy())[0])
    assert got["spearman"] == pytest.approx(100 * spearmanr(expected, y6.numpy())[0])  # y6 has many ties


def test_matthews_of_a_constant_prediction_is_zero_as_in_sklearn():
    y = torch.tensor([0, 1, 1, 0])
    logits = torch.tensor([[1.0, 0.0]] * 4)
    assert official_metrics("matthews", logits, y)["matthews"] == 0.0 == matthews_corrcoef(y.numpy(), [0] * 4)


@pytest.mark.parametrize("family", ["sst2", "mrpc", "textfile", "hfdataset"])
def test_text_presets_use_the_learning_rate_chosen_on_validation(family):
    from ssl_kd.run import resolve_config

    t = resolve_config({}, {"algo": "supervised", "dataset": family}, []).train
    assert (t.lr, t.net, t.ema, t.steps) == (2e-4, "hf:minilm-l6", 0.0, 2000)  # 5e-5 left a 2-layer student at chance
