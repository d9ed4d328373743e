"""Issue 30.5: scripts/fault_probe.py, tested by its pieces (the whole --quick probe takes minutes):
its bad-input group passes on today's code, and a failure is counted and named in its report."""
from __future__ import annotations

import importlib.util

from tests.conftest import REPO


def load_probe():
    spec = importlib.util.spec_from_file_location("fault_probe", REPO / "scripts" / "fault_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_bad_input_is_one_error_line(tmp_path, capsys):
    probe = load_probe().Probe(tmp_path)
    probe.bad()
    cases = probe.results["bad"]
    assert len(cases) >= 35 and [c for c in cases if c[1]] == []
    assert any("lr_milestones=[1,2" in name for name, _ in cases)  # the tracebacks are among them


def test_the_report_counts_and_names_failures(tmp_path, capsys):
    module = load_probe()
    probe = module.Probe(tmp_path)
    probe.record("kill", "step:1", "")
    probe.record("kill", "save:2", "final last.pt differs")
    assert probe.report() is False
    out = capsys.readouterr().out
    assert "kill            2       1       1" in out and "FAILED [kill] save:2: final last.pt differs" in out
    assert module.same({"a": [1, 2]}, {"a": [1, 2]}) and not module.same({"a": 1}, {"a": 2})
