"""KD mode's influence weighters (ssl_kd.distill): scores of packed targets and their accumulation keys."""
import torch
from torch import nn

from ssl_kd.distill import DistillWeighter, pack_targets
from ssl_kd.influence import InfluenceConfig

D, C = 5, 4


def test_accumulation_restarts_when_the_teachers_top_class_changes():
    """Issue 16: the packed row's argmax was the label's column for every label >= 1, so the key
    never changed and the running mean never restarted."""
    torch.manual_seed(0)
    w = DistillWeighter(InfluenceConfig(accumulate=True, renormalise=False), alpha=0.5)
    w.refresh(nn.Linear(D, C), torch.randn(16, D), torch.randint(0, C, (16,)), torch.randn(32, D), 0)
    f, logits, idx, labels = torch.randn(2, D), torch.randn(2, C), torch.tensor([3, 4]), torch.tensor([2, 2])
    first = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1]])
    w.weights(f, logits, pack_targets(first, labels), 0, idx)
    second = torch.tensor([[0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.6, 0.2]])  # index 3's teacher changes its mind
    w.weights(f, logits, pack_targets(second, labels), 1, idx)
    assert w.acc_count[idx].tolist() == [1.0, 2.0]
    keys = w.target_keys(pack_targets(second, torch.tensor([1, 3])))
    assert keys.tolist() == [1 * C + 1, 3 * C + 2]
