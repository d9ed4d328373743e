"""No host-device synchronisation inside a training step (counted on the CPU, see sync_counter)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from unittest import mock

import pytest
import torch

from ssl_kd.augment import make_view
from ssl_kd.data.types import AugPolicy
from tests.conftest import make_trainer, run_steps
from tests.sync_counter import count_syncs

# kdaif: a non-refresh step of the periodic (default) schedule and a step after the static schedule's fit
SYNC_FREE = [(algo, ()) for algo in ("supervised", "fixmatch", "flexmatch", "freematch", "softmatch", "pseudolabel",
                                     "meanteacher", "uda", "kd", "kdaif", "mpl")] + [("kdaif", ("--set", "weights.schedule=static"))]


def test_the_counter_sees_every_kind_of_readback() -> None:
    x = torch.arange(6.0)
    with count_syncs() as counts:
        x.sum().item()
        bool(x[0] > 1)
        x.tolist()
        x.cpu()
        x[x > 2]
        x.nonzero()
        torch.bincount(x.long())
    assert counts["_local_scalar_dense"] == 2
    assert counts["tolist"] == 1 and counts["cpu"] == 1 and counts["bincount"] == 1
    assert counts["nonzero"] == 1 and counts["boolean_mask_indexing"] == 1
    with count_syncs() as quiet:
        torch.where(x > 2, x, 0).mul_(2)
    assert not quiet


def test_strong_view_reads_nothing_back() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    with count_syncs() as counts:
        make_view("strong", x, AugPolicy(mean=(0.5,) * 3, std=(0.25,) * 3))
    assert not counts, dict(counts)


@pytest.mark.parametrize(("algo", "extra"), SYNC_FREE, ids=[f"{a}{'-static' if e else ''}" for a, e in SYNC_FREE])
def test_training_step_reads_nothing_back(tmp_path: Path, algo: str, extra: tuple[str, ...]) -> None:
    trainer = make_trainer(tmp_path, algo, 6, *extra)
    run_steps(trainer, 2)  # past one-off set-up (teacher warm-up switches, first-step state)
    # the per-step loss finiteness check (a deliberate sync) is stubbed out where it still exists;
    # with issue 10's divergence guard (`trainer.guard`) a step only records the loss, and this is a non-check step
    no_check = contextlib.nullcontext() if hasattr(trainer, "guard") else mock.patch.object(torch, "isfinite", lambda t: True)
    with no_check, count_syncs() as counts:
        run_steps(trainer, 1)
    assert not counts, f"{algo} step synchronised: {dict(counts)}"
