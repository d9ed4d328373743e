"""The label-noise probe: low influence weight finds flipped labels on digits far above chance."""
import pytest
import torch

from benchmarks.toy import TinyMLP, as_input, digits, fit
from ssl_kd.errors import ConfigError
from ssl_kd.influence import InfluenceConfig, InfluenceError, InfluenceWeighter, flip_detection_auc, flip_labels

MIN_AUC = 0.7  # chance 0.5; measured 0.75 (200 flipped of 1000: one standard error is ~0.02)


def test_flip_labels_flips_exactly_the_fraction():
    y = torch.arange(100) % 10
    noisy, flipped = flip_labels(y, 0.2, 10, seed=3)
    assert int(flipped.sum()) == 20 and bool((noisy[flipped] != y[flipped]).all())
    assert torch.equal(noisy[~flipped], y[~flipped])
    pair, pflipped = flip_labels(y, 0.3, 10, mode="pairwise", seed=3)
    assert torch.equal(pair[pflipped], (y[pflipped] + 1) % 10)
    assert torch.equal(flip_labels(y, 0.2, 10, seed=3)[0], noisy)  # seeded
    with pytest.raises(ConfigError):
        flip_labels(y, 0.2, 10, mode="random")


def test_low_weight_finds_flipped_labels_on_digits():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = digits()
        x = as_input(x)
        y_train, flipped = flip_labels(y[:1000], 0.2, 10, seed=0)
        torch.manual_seed(0)
        model = fit(TinyMLP(), x[:1000], y_train, steps=300, seed=0)
        with torch.no_grad():
            (_, ft), (_, fv) = model(x[:1000]), model(x[1000:1300])
        weighter = InfluenceWeighter(InfluenceConfig(schedule="static"))
        scores = weighter.fit_static(model.head, fv, y[1000:1300], ft, y_train, torch.arange(1000))
        auc = flip_detection_auc(-scores, flipped)  # the weight falls with the score
        print(f"flip-detection ROC-AUC {auc:.3f}")
        assert auc > MIN_AUC
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(InfluenceError, match="both flipped and clean"):
        flip_detection_auc(torch.ones(4), torch.zeros(4, dtype=torch.bool))
