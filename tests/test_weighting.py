"""The weighting module (issue 16): one `weights` section for every algorithm, maps that can drop
examples, how the weight meets the algorithm's mask, old keys, and that training never reads the truth."""
from __future__ import annotations

import pytest
import torch

from ssl_kd.errors import ConfigError
from ssl_kd.influence.weights import quantile_admission, threshold_admission
from tests.conftest import make_trainer, quick_args, run_steps

# every algorithm with per-example terms in SSL mode, and the flags that make it weigh from step 0
WEIGHTED = ["pseudolabel", "fixmatch", "flexmatch", "freematch", "softmatch", "uda", "meanteacher", "kd", "mpl",
            "pimodel", "dash", "adamatch", "defixmatch", "openmatch", "iomatch", "simmatch", "comatch"]
NOW = ("--set", "weights.warmup=0", "--set", "weights.refresh_every=2")
EXTRA = {"kd": ("--set", "algo.teacher_warmup=0"), "mpl": ("--set", "algo.student_wait=0"),
         "pseudolabel": ("--set", "algo.threshold=0"), "fixmatch": ("--set", "algo.threshold=0"),
         "flexmatch": ("--set", "algo.threshold=0"), "uda": ("--set", "algo.threshold=0"),
         "dash": ("--set", "algo.warmup_fraction=0", "--set", "algo.c=100"), "adamatch": ("--set", "algo.threshold=0"),
         "defixmatch": ("--set", "algo.threshold=0"), "openmatch": ("--set", "algo.start_fix_fraction=0"),
         "iomatch": ("--set", "algo.p_cutoff=0"), "simmatch": ("--set", "algo.threshold=0"),
         "comatch": ("--set", "algo.threshold=0")}


def weighted_trainer(tmp_path, algo: str, kind: str, *extra: str):
    return make_trainer(tmp_path / kind, algo, 6, *EXTRA.get(algo, ()), "--set", f"weights.kind={kind}", *NOW, *extra)


def force_weights(trainer, value):
    """Replace the influence weights (not the solve) by a fixed value per example."""
    trainer.algorithm.weights.weighter.weights = lambda feats, *args, **kwargs: torch.full((feats.shape[0],), value)


# their unweighted loss keeps the algorithm's own reduction (F.mse_loss / F.cross_entropy's mean, as
# before weights existed); the weighted one reduces per example first, equal up to float rounding
ROUNDING_APART = ("meanteacher", "mpl")


@pytest.mark.parametrize("algo", WEIGHTED)
def test_unit_weights_leave_every_algorithm_bit_identical(tmp_path, algo):
    """The weight is a multiplier after the algorithm's own mask and nothing else: with every
    weight 1 the losses and the trained model equal weights.kind=none exactly."""
    plain = weighted_trainer(tmp_path, algo, "none")  # each trainer seeds the global stream the views draw from
    expected = [o.loss.item() for o in run_steps(plain, 3)]
    weighted = weighted_trainer(tmp_path, algo, "influence")
    force_weights(weighted, 1.0)
    got = [o.loss.item() for o in run_steps(weighted, 3)]
    for p, q in zip(plain.model.parameters(), weighted.model.parameters()):
        if algo in ROUNDING_APART:
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(p, q)
    assert got == pytest.approx(expected, rel=1e-6) if algo in ROUNDING_APART else got == expected


# OpenMatch's untrained one-vs-all heads exclude the whole pool at first, so its unweighted FixMatch
# term is 0 as well here; test_openmatch.py checks its zero weights with every image selected
@pytest.mark.parametrize("algo", [a for a in WEIGHTED if a != "openmatch"])
def test_zero_weights_remove_the_weighted_terms(tmp_path, algo):
    """Weights of 0 (a map that says no) remove every weighted term: the unlabelled loss is 0."""
    weighted = weighted_trainer(tmp_path, algo, "influence")
    force_weights(weighted, 0.0)
    out = run_steps(weighted, 2)[-1]
    key = "loss/student" if algo == "mpl" else "loss/unsup"
    assert float(out.logs[key]) == 0.0
    plain = run_steps(weighted_trainer(tmp_path, algo, "none"), 2)[-1]
    assert float(plain.logs[key]) > 0.0


def test_gate_keeps_what_the_mask_admits_and_lets_influence_admit_the_rest(tmp_path):
    trainer = make_trainer(tmp_path, "fixmatch", 4, "--set", "weights.kind=influence", *NOW, "--set", "weights.combine=gate",
                           "--set", "algo.threshold=0.99")
    module = trainer.algorithm.weights
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    w = torch.tensor([0.2, 0.3, 3.0, 2.0])
    assert torch.equal(module.combine(w, mask), torch.tensor([1.0, 0.3, 1.0, 1.0]))
    trainer.cfg.weights.combine = "multiply"
    assert torch.equal(module.combine(w, mask), torch.tensor([0.2, 0.0, 3.0, 0.0]))


def test_quantile_admission_drops_the_least_helpful_share():
    z = torch.tensor([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert torch.equal(quantile_admission(z, None, 0.3, 2), (z <= 3.0).float())  # the three highest scores go
    keys = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])  # per class: the highest of each class goes
    w = quantile_admission(z, keys, 0.2, 2)
    assert w.tolist() == [1, 1, 1, 1, 0, 1, 1, 1, 1, 0]


def test_labelled_threshold_admits_what_is_as_helpful_as_the_labelled_set():
    own = torch.linspace(-10, 0, 11)  # the labelled reference's own (helpful) scores
    z = torch.tensor([-12.0, -5.0, -0.5, 3.0])
    assert threshold_admission(z, own, 0.1).tolist() == [1.0, 1.0, 0.0, 0.0]  # at most the 90th percentile, -1


@pytest.mark.parametrize("weight_map", ["quantile", "labelled_threshold"])
def test_hard_maps_reach_zero_in_a_run_and_are_not_renormalised(tmp_path, weight_map):
    trainer = make_trainer(tmp_path, "kdaif", 6, "--set", "algo.teacher_warmup=0", *NOW, "--set", f"weights.map={weight_map}",
                           "--set", "weights.drop=0.5")
    weights = torch.cat([o.weights for o in run_steps(trainer, 4)])
    assert set(weights.unique().tolist()) <= {0.0, 1.0} and (weights == 0).any()


def test_an_old_algo_influence_key_names_its_new_key(tmp_path, run_cli, capsys):
    code, _ = run_cli(quick_args(tmp_path / "run", "kdaif", 2, "--set", "algo.weight_warmup=0"))
    assert code == 2
    err = capsys.readouterr().err
    assert "algo.weight_warmup moved to weights.warmup" in err and len(err.strip().splitlines()) == 1
    code, _ = run_cli(quick_args(tmp_path / "gate", "kdaif", 2, "--set", "algo.gate=0.9"))
    assert code == 2 and "weights.combine=gate" in capsys.readouterr().err


def test_weights_on_an_algorithm_without_terms_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no per-example terms"):
        make_trainer(tmp_path, "supervised", 2, "--set", "weights.kind=influence")


def test_kdaif_is_kd_with_influence_and_kd_without(tmp_path):
    kdaif = make_trainer(tmp_path / "a", "kdaif", 2)
    assert kdaif.cfg.weights.kind == "influence" and kdaif.algorithm.weights.active
    off = make_trainer(tmp_path / "b", "kdaif", 2, "--set", "weights.kind=none")
    assert not off.algorithm.weights.active
    expected = [o.loss.item() for o in run_steps(off, 2)]
    kd = make_trainer(tmp_path / "c", "kd", 2)
    assert not kd.algorithm.weights.active and [o.loss.item() for o in run_steps(kd, 2)] == expected


@pytest.mark.parametrize("algo,kind", [(a, k) for a in WEIGHTED for k in ("none", "influence")])
def test_training_never_reads_the_truth_of_unlabelled_examples(tmp_path, algo, kind):
    """Scrambling the labels of every example that is neither labelled nor validation changes no
    loss and no weight: only the monitoring (pseudo-label accuracy) may read them."""
    runs = []
    for name in ("true", "scrambled"):
        trainer = weighted_trainer(tmp_path / name, algo, kind)
        if name == "scrambled":
            d = trainer.data
            hidden = torch.ones(d.train_y.numel(), dtype=torch.bool)
            hidden[d.labelled_idx] = False
            hidden[d.val_idx] = False
            gen = torch.Generator().manual_seed(0)
            d.train_y = d.train_y.clone()  # never the loader's tensor
            d.train_y[hidden] = torch.randint(0, d.num_classes, (int(hidden.sum()),), generator=gen)
        runs.append(run_steps(trainer, 3))
    for a, b in zip(*runs):
        assert a.loss.item() == b.loss.item()
        assert (a.weights is None and b.weights is None) or torch.equal(a.weights, b.weights)


def test_crossfit_keeps_the_held_out_fold_out_of_the_unlabelled_terms_too(tmp_path):
    """The fold held out of the labelled loss for a period is also a pool image: it must not be
    trained on as a pseudo-label either, or the cross-fitted reference leaks."""
    from ssl_kd.weighting.spec import WeightRequest

    trainer = make_trainer(tmp_path, "kdaif", 40, "--set", "algo.teacher_warmup=0", "--set", "weights.warmup=0.25",
                           "--set", "weights.reference=crossfit", "--set", "weights.refresh_every=5")
    algo, data = trainer.algorithm, trainer.data
    algo.step = 12  # past the warm-up (10 steps): fold 1 is held out
    labelled = data.labelled_idx
    held = labelled[algo.weights.fold_of[labelled] == 1][:4]
    others = data.unlabelled_idx[~torch.isin(data.unlabelled_idx, labelled)][:6]
    idx = torch.cat([held, others])
    gen = torch.Generator().manual_seed(0)
    request = WeightRequest(torch.randn(10, algo.student.head.in_features, generator=gen), torch.randn(10, 10, generator=gen),
                            data.train_y[idx], idx)
    w = algo.weights.apply(torch.ones(10), request)
    assert (w[:4] == 0).all() and (w[4:] > 0).all()
