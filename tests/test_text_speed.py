"""Speed options of text networks leave their logits equal (issue 21): SDPA attention, bf16
autocast on the CPU (to bf16 tolerance), torch.compile with dynamic shapes (no recompilation
per sentence length), fused AdamW."""
from __future__ import annotations

import pytest
import torch

from ssl_kd.config import TrainConfig
from ssl_kd.run import build_network
from ssl_kd.trainer import compile as compile_module
from ssl_kd.trainer.amp import autocast_for
from ssl_kd.trainer.optim import make_adamw
from tests.text_fixtures import make_text_trainer, text_env  # noqa: F401 (fixture)

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def text_trainer(text_env, tmp_path_factory):  # noqa: F811
    return make_text_trainer(text_env, tmp_path_factory.mktemp("speed"), "supervised", 2)


def padded_batch(trainer, lengths: list[int], trim: bool = True) -> torch.Tensor:
    """Test sentences cut to `lengths` tokens, right-padded to the longest (`trim`) or, as the feed
    hands them to the network, to the data's width (the network trims them)."""
    pad = trainer.data.policy.pad_id
    x = trainer.data.test_x[: len(lengths)].clone()
    cols = torch.arange(x.shape[1])
    x = x.masked_fill(cols >= torch.tensor(lengths)[:, None], pad)
    return x[:, : max(lengths)] if trim else x


def test_hf_networks_use_sdpa_attention_with_the_eager_logits(text_trainer) -> None:
    from transformers import AutoModelForSequenceClassification

    net = text_trainer.model.eval()
    assert net.hf.config._attn_implementation == "sdpa"
    eager = AutoModelForSequenceClassification.from_pretrained(text_trainer.cfg.train.net[3:], num_labels=2,
                                                               attn_implementation="eager").eval()
    eager.load_state_dict(net.hf.state_dict())
    x = padded_batch(text_trainer, [3, 7, 9, 5])
    with torch.no_grad():
        mask = (x != net.pad_id).long()
        expected = eager(input_ids=x, attention_mask=mask, token_type_ids=net.segment_ids(x, net.sep_id)).logits
        torch.testing.assert_close(net(x)[0], expected, rtol=1e-5, atol=1e-5)


def test_cpu_bf16_autocast_is_an_option_with_logits_to_bf16_tolerance(text_trainer) -> None:
    cpu = torch.device("cpu")
    with autocast_for(cpu, TrainConfig()):
        assert not torch.is_autocast_enabled("cpu")  # off by default: the CPU keeps fp32
    net = text_trainer.model.eval()
    x = padded_batch(text_trainer, [4, 9, 6])
    with torch.no_grad():
        fp32 = net(x)[0]
        with autocast_for(cpu, TrainConfig(cpu_amp=True)):
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            bf16 = net(x)[0]
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), fp32, rtol=2e-2, atol=2e-2)  # bf16 keeps 8 bits of mantissa


def test_text_networks_compile_once_for_every_sentence_length(text_trainer, monkeypatch) -> None:
    graphs: list[int] = []
    real_compile = torch.compile

    def counting_backend(gm, example_inputs):  # noqa: ANN001 - torch.compile's backend signature
        graphs.append(1)
        return gm.forward

    seen: dict = {}

    def compile_counting(module, **kwargs):  # noqa: ANN001
        seen.update(kwargs)
        return real_compile(module, backend=counting_backend, **kwargs)

    monkeypatch.setattr(compile_module.torch, "compile", compile_counting)
    torch._dynamo.reset()
    net = build_network(text_trainer.cfg.train.net, text_trainer.data).eval()
    compiled = compile_module.compile_network(net, "text")
    assert seen == {"dynamic": True}
    with torch.no_grad():
        for step, lengths in enumerate(([5, 8, 3, 6], [4, 9, 7, 2], [8, 3, 5, 6], [6, 6, 2, 4])):
            x = padded_batch(text_trainer, lengths, trim=False)
            assert x.shape[1] > max(lengths)
            torch.testing.assert_close(compiled(x)[0], net(x)[0], rtol=1e-5, atol=1e-5)
            if step == 0:
                after_first = len(graphs)
    assert not compiled.failed and after_first > 0
    assert len(graphs) == after_first, "a new sentence length compiled the network again"
    compile_module.compile_network(torch.nn.Linear(2, 2), "image")
    assert seen == {"dynamic": None}  # images keep torch's default (static, then automatic dynamic)
    torch._dynamo.reset()


def test_fused_adamw_matches_the_per_parameter_update(text_trainer) -> None:
    nets = [build_network(text_trainer.cfg.train.net, text_trainer.data) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    loop, fused = make_adamw(nets[0], 1e-3, 0.01, fused=False), make_adamw(nets[1], 1e-3, 0.01)
    assert fused.defaults["fused"] and not loop.defaults["fused"]  # CPU parameters: fused by default
    x, y = padded_batch(text_trainer, [5, 8, 3, 6]), torch.tensor([0, 1, 1, 0])
    for _ in range(3):
        for net, opt in zip(nets, (loop, fused)):
            torch.manual_seed(0)  # the same dropout masks
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x)[0], y).backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algo", ["fixmatch", "kdaif"])
def test_text_training_steps_run_under_cpu_bf16_autocast(text_env, tmp_path, algo) -> None:  # noqa: F811
    trainer = make_text_trainer(text_env, tmp_path, algo, 4, "sst2_8", "--set", "train.cpu_amp=true",
                                *(("--set", "weights.warmup=0") if algo == "kdaif" else ()))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    for _ in range(2):
        _, out = trainer.train_one_step()
        trainer.step += 1
        assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32  # losses are taken in fp32
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # autocast leaves the weights fp32
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))
