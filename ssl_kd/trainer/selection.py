"""What `best.pt` is chosen on (`train.select_on`, `--select-on`): never the test split unless asked.

- `val`: the best evaluation on the validation split (the default when there is one);
- `last`: the last evaluation (the default without a validation split: best.pt is last.pt; a
  benchmark's reported figure is then the median of the last evaluations, the FixMatch protocol);
- `test`: the best test figure, an oracle (summary.json names it so).
"""
from __future__ import annotations

from ssl_kd.errors import ConfigError

SELECT_ON = ("val", "last", "test")
LAST_KEY = "step"  # ranking evaluations by their step picks the last one


def resolve_select_on(choice: str, has_val: bool) -> str:
    """`choice` checked against the data ("" picks val when there is a validation split, else last)."""
    if choice and choice not in SELECT_ON:
        raise ConfigError(f"train.select_on={choice!r} is not valid; use one of: {', '.join(SELECT_ON)}")
    if choice == "val" and not has_val:
        raise ConfigError("train.select_on=val needs a validation split: give one (val/, validation.*, a validation "
                          "split) or carve one with --set data.val_per_class=N, or use --select-on last")
    return choice or ("val" if has_val else "last")


def select_key(select_on: str, eval_key: str, val_key: str) -> str:
    """The evaluation row's key best.pt maximises."""
    return {"val": val_key, "last": LAST_KEY, "test": eval_key}[select_on]


def selected_on(select_key: str, eval_key: str) -> str:
    """summary.json's `selected_on` for a logger's keys: val, last or test."""
    return "last" if select_key == LAST_KEY else "test" if select_key == eval_key else "val"


def describe(select_on: str, median_last: int) -> str:
    """One line for the start of a run."""
    return {"val": "best.pt: the best evaluation on the validation split (--select-on val)",
            "last": f"best.pt: the last evaluation, no validation split (--select-on last); the figure to report is "
                    f"median_<metric> over the last {median_last} evaluations (the FixMatch protocol) or last_<metric>",
            "test": "best.pt: chosen on the test split, an oracle (--select-on test): its test figure is optimistic"}[select_on]
