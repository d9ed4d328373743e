"""Our ports against USB's own code (issue 29): the same inputs through USB's published functions
(semilearn 0.3.2 from PyPI, requirements-reference.txt) and through ours agree to 1e-5.

USB's package cannot be imported here (it needs timm, wandb, torchaudio, ...), so each reference
function or hook class is read out of its source file and executed alone, with the names it uses
from the rest of USB (its hook base classes, `ce_loss`) supplied; nothing of USB is copied into this
repository. The tests skip where semilearn is not installed; `make test` installs it.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from ssl_kd.algorithms.comatch import graph_contrastive_loss
from ssl_kd.algorithms.dash import Dash, DashConfig
from ssl_kd.algorithms.meanteacher import squared_error
from ssl_kd.algorithms.vat import entropy, kl_from_logits
from ssl_kd.align import DistAlign, PredictionAlign
from ssl_kd.components import RelativeThresholder, masked_mean, soft_cross_entropy
from tests.test_baselines import tiny

SPEC = importlib.util.find_spec("semilearn")
pytestmark = pytest.mark.skipif(SPEC is None, reason="USB's code (requirements-reference.txt) is not installed")
ATOL = 1e-5


class _Base:
    """Stands in for USB's Hook and MaskingHook bases (they only hold no-op hook methods)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


def usb(relative: str, *names: str, **extra: Any) -> SimpleNamespace:
    """The named top-level functions or classes (or `Class.method`s, as plain functions) of
    semilearn/<relative>, executed with torch, F, numpy and `extra` in their namespace."""
    assert SPEC is not None and SPEC.submodule_search_locations
    source = (Path(SPEC.submodule_search_locations[0]) / relative).read_text()
    tree = ast.parse(source)
    nodes, found = [], set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
            nodes.append(node)
            found.add(node.name)
        for method in node.body if isinstance(node, ast.ClassDef) else []:
            if isinstance(method, ast.FunctionDef) and f"{node.name}.{method.name}" in names:
                nodes.append(method)
                found.add(f"{node.name}.{method.name}")
    assert found == set(names), f"semilearn/{relative} lacks {set(names) - found}"
    import numpy as np

    namespace: dict[str, Any] = {"torch": torch, "F": F, "np": np, "Hook": _Base, "MaskingHook": _Base, **extra}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), f"semilearn/{relative}", "exec"), namespace)
    return SimpleNamespace(**{n.split(".")[-1]: namespace[n.split(".")[-1]] for n in names})


def ref_losses() -> SimpleNamespace:
    ce = usb("core/criterions/cross_entropy.py", "ce_loss").ce_loss
    return SimpleNamespace(ce_loss=ce, consistency_loss=usb("core/criterions/consistency.py", "consistency_loss",
                                                             ce_loss=ce).consistency_loss)


def test_cross_entropy_and_consistency_losses_match_usb():
    ref = ref_losses()
    g = torch.Generator().manual_seed(0)
    logits, soft = torch.randn(6, 4, generator=g), torch.softmax(torch.randn(6, 4, generator=g), -1)
    hard, mask = torch.randint(0, 4, (6,), generator=g), (torch.rand(6, generator=g) > 0.4).float()
    for targets in (soft, hard):
        torch.testing.assert_close(soft_cross_entropy(logits, targets), ref.ce_loss(logits, targets), atol=ATOL, rtol=0)
        torch.testing.assert_close(masked_mean(soft_cross_entropy(logits, targets), mask),
                                   ref.consistency_loss(logits, targets, "ce", mask=mask), atol=ATOL, rtol=0)
    # Pi-Model's and MixMatch's squared error of the softmax, averaged over classes
    torch.testing.assert_close(squared_error(logits, soft).mean(), ref.consistency_loss(logits, soft, "mse"), atol=ATOL, rtol=0)


def test_comatch_contrastive_loss_matches_usb():
    ref = usb("algorithms/comatch/comatch.py", "comatch_contrastive_loss")
    g = torch.Generator().manual_seed(1)
    z0, z1 = (F.normalize(torch.randn(8, 16, generator=g), dim=1) for _ in range(2))
    q = torch.softmax(torch.randn(8, 8, generator=g), -1)
    torch.testing.assert_close(graph_contrastive_loss(z0, z1, q, 0.2), ref.comatch_contrastive_loss(z0, z1, q, T=0.2),
                               atol=ATOL, rtol=0)


def test_vat_divergence_and_entropy_match_usb():
    ref = usb("algorithms/vat/vat.py", "VAT.kl_div_with_logit", "VAT.entropy_loss")
    g = torch.Generator().manual_seed(2)
    q, p = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    torch.testing.assert_close(kl_from_logits(q, p), ref.kl_div_with_logit(None, q, p), atol=ATOL, rtol=0)
    torch.testing.assert_close(entropy(q), ref.entropy_loss(None, q), atol=ATOL, rtol=0)


def test_distribution_alignment_matches_usb_over_several_steps():
    hook_cls = usb("algorithms/hooks/dist_align.py", "DistAlignEMAHook", concat_all_gather=None).DistAlignEMAHook
    algorithm = SimpleNamespace(distributed=False, world_size=1)
    g = torch.Generator().manual_seed(3)
    batches = [(torch.softmax(torch.randn(6, 4, generator=g), -1), torch.softmax(torch.randn(3, 4, generator=g), -1)) for _ in range(4)]
    uniform, ours = hook_cls(num_classes=4, momentum=0.9, p_target_type="uniform"), DistAlign(torch.full((4,), 0.25), 0.9)
    model, adamatch = hook_cls(num_classes=4, momentum=0.9, p_target_type="model"), PredictionAlign(4, 0.9)
    for probs_u, probs_l in batches:
        torch.testing.assert_close(ours(probs_u), uniform.dist_align(algorithm, probs_u), atol=ATOL, rtol=0)
        adamatch.update_target(probs_l)
        torch.testing.assert_close(adamatch(probs_u), model.dist_align(algorithm, probs_u, probs_l), atol=ATOL, rtol=0)


def test_adamatch_relative_threshold_matches_usb():
    hook = usb("algorithms/adamatch/utils.py", "AdaMatchThresholdingHook").AdaMatchThresholdingHook()
    g = torch.Generator().manual_seed(4)
    probs_l, probs_u = torch.softmax(2 * torch.randn(6, 4, generator=g), -1), torch.softmax(2 * torch.randn(2000, 4, generator=g), -1)
    ours = RelativeThresholder(0.9, 4)
    ours.observe_labelled(probs_l)
    algorithm = SimpleNamespace(p_cutoff=0.9)
    expected = hook.masking(algorithm, probs_l, probs_u, softmax_x_lb=False, softmax_x_ulb=False)
    assert 0 < expected.sum() < 2000  # a threshold that separates this batch, with confidences dense around it
    assert torch.equal(ours.mask(probs_u), expected)


@pytest.mark.parametrize("rho,hard", [(0.9, False), (0.05, True)])
def test_dash_mask_and_loss_match_usb(rho, hard):
    ref = ref_losses()
    hook_cls = usb("algorithms/dash/utils.py", "DashThresholdingHook").DashThresholdingHook
    hook = hook_cls(rho_min=0.05, gamma=1.27, C=1.0)
    hook.rho_init, hook.rho = rho, rho  # the threshold in force (its schedule is tested in test_usb_algorithms)
    algorithm = SimpleNamespace(it=1, num_iter_per_epoch=1000, T=0.5, ce_loss=ref.ce_loss,
                                compute_prob=lambda x: torch.softmax(x, dim=-1))
    ours, _ = tiny(Dash, DashConfig(c=1.0, rho_min=0.05, warmup_fraction=0.0))
    ours.rho_hat, ours.step = rho, 0
    g = torch.Generator().manual_seed(5)
    weak, strong = 2 * torch.randn(1000, 3, generator=g), torch.randn(1000, 3, generator=g)
    loss, mask = ours.unsup_loss(weak, strong)
    expected_mask = hook.masking(algorithm, weak)
    assert algorithm.use_hard_label is hard and 0 < expected_mask.sum() < 1000
    assert torch.equal(mask, expected_mask)
    target = weak.argmax(-1) if hard else torch.softmax(weak / 0.5, dim=-1)
    torch.testing.assert_close(loss, ref.consistency_loss(strong, target, "ce", mask=expected_mask), atol=ATOL, rtol=0)
