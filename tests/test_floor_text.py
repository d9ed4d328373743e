"""The text compute floor (issue 21): random ids inside the vocabulary with the dataset's sentence
lengths, padded as the real feed pads, AdamW with its schedule; `bench.py --floor` on text."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import ClassVar

import pytest
import torch
from torch import nn

from ssl_kd.errors import ConfigError
from ssl_kd.floor import floor_inputs, make_floor, sentence_lengths, vocabulary_size
from ssl_kd.run import build_network
from tests.conftest import REPO
from tests.text_fixtures import make_text_trainer, text_env  # noqa: F401 (fixture)

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def fixmatch_floor(text_env, tmp_path_factory):  # noqa: F811
    trainer = make_text_trainer(text_env, tmp_path_factory.mktemp("floor"), "fixmatch", 4)
    floor = make_floor(build_network(trainer.cfg.train.net, trainer.data), trainer.data, trainer.cfg.train, 1, 2,
                       torch.device("cpu"))
    return trainer, floor


def test_text_floor_draws_word_ids_with_the_datasets_lengths_padded_to_the_longest(fixmatch_floor) -> None:
    trainer, floor = fixmatch_floor
    data, policy = trainer.data, trainer.data.policy
    vocab = vocabulary_size(floor.net)
    assert vocab == floor.net.hf.config.vocab_size
    lengths_l = set(sentence_lengths(data, data.labelled_idx).tolist())
    lengths_u = set(sentence_lengths(data, data.unlabelled_idx).tolist())
    widths = set()
    for _ in range(20):
        x = floor.inputs()
        assert x.shape[0] == 4 + 2 * 8 and x.dtype == torch.long
        content = x != policy.pad_id
        n = content.sum(1)
        widths.add(x.shape[1])
        assert int(n.max()) == x.shape[1], "the batch is padded to its longest row, no further"
        assert torch.equal(content, torch.arange(x.shape[1]) < n[:, None]), "padding only at the right"
        words = x[content]
        assert ((words >= 0) & (words < vocab)).all() and not torch.isin(words, torch.tensor(policy.special_ids)).any()
        assert set(n[:4].tolist()) <= lengths_l and set(n[4:].tolist()) <= lengths_u
        assert torch.equal(n[4:12], n[12:]), "both unlabelled views of a sentence are as long"
    assert len(widths) > 1, "every step draws new lengths, as real batches differ"


def test_text_floor_steps_adamw_on_its_schedule(fixmatch_floor) -> None:
    trainer, floor = fixmatch_floor
    assert isinstance(floor.optimizer, torch.optim.AdamW)
    before = [p.detach().clone() for p in floor.net.parameters()]
    floor()
    assert any(not torch.equal(b, p) for b, p in zip(before, floor.net.parameters()))
    assert floor.scheduler.last_epoch == 1  # the scheduler steps with the optimiser, as the trainer's does
    assert floor.decay == trainer.cfg.train.ema == 0.0  # GLUE runs keep no EMA, nor does their floor


@dataclass(frozen=True)
class AudioPolicy:
    modality: ClassVar[str] = "audio"


def test_floor_without_inputs_for_the_data_says_why_in_one_line(fixmatch_floor) -> None:
    trainer, _ = fixmatch_floor
    audio = replace(trainer.data, policy=AudioPolicy())
    with pytest.raises(ConfigError, match=r"^--floor: no floor inputs for 'audio' data .*without --floor$"):
        floor_inputs(nn.Linear(2, 2), audio, trainer.cfg.train, 1, 0, torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"^--floor: network Linear takes token ids but has no nn.Embedding"):
        floor_inputs(nn.Linear(2, 2), trainer.data, trainer.cfg.train, 1, 0, torch.device("cpu"))


def test_bench_floor_runs_on_text(text_env, tmp_path) -> None:  # noqa: F811
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "tools/bench.py", "--floor", "--algos", "supervised,fixmatch", "--dataset", "sst2_8",
                           "--net", text_env["net"], "--data-dir", text_env["data"], "--batch-size", "4", "--uratio", "2",
                           "--steps", "2", "--warmup", "1", "--device", "cpu", "--json", str(out)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["algo"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"supervised", "fixmatch"}
    for row in rows.values():
        assert row["ratio_to_floor"] == pytest.approx(row["s_per_step"] / row["floor_s_per_step"])


def test_seeded_text_floor_has_the_width_of_each_real_step(text_env, tmp_path) -> None:  # noqa: F811
    sys.path.insert(0, str(REPO / "tools"))
    import bench

    trainer = make_text_trainer(text_env, tmp_path, "fixmatch", 8)
    floor = bench.floor_of_trainer(trainer)
    pad = trainer.data.policy.pad_id
    widths = []
    real_next_batch = trainer.next_batch

    def record() -> object:  # the width of the batch each real step draws
        batch = real_next_batch()
        x = torch.cat([batch.x_l["weak"], batch.x_u["weak"], batch.x_u["strong"]])
        widths.append(int((x != pad).sum(1).max()))
        return batch

    trainer.next_batch = record
    occasional = bench.OccasionalWork(trainer.algorithm)
    for _ in range(4):
        _, view_s, _ = bench.time_step(trainer, occasional)
        assert view_s > 0
    assert len(widths) == 4, "one batch per timed step, as in a run"
    assert [floor.inputs().shape[1] for _ in range(4)] == widths
