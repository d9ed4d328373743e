"""Per-example loss weights as a module any algorithm takes (DESIGN.md 5.1).

An algorithm computes its per-example terms and its own mask, hands the module what it needs
(`WeightRequest`: the targets it trains on, the teacher's confidence, the dataset indices, the
student's features and logits) and multiplies its terms by what `apply` returns; it describes once
how its targets are made (`WeightSpec`). The module owns the influence solve, the schedule, the
reference, the map from score to weight, its state in the checkpoint, its logs and diagnostics.

- `config.py`: the `weights` config section;
- `spec.py`: what an algorithm hands the module;
- `module.py`: `NoWeights` (kind none: the mask comes back unchanged) and `build_weights`;
- `influence.py`: `InfluenceWeights` (kind influence).
"""
