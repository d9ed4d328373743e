import pytest

from ssl_kd.errors import ConfigError
from ssl_kd.registry import ALGORITHMS, DATASETS, NETWORKS, Registry, discover_all


def test_discovery_finds_builtins():
    discover_all()
    assert {"supervised", "fixmatch"} <= set(ALGORITHMS.names())
    assert {"cifar10", "cifar100", "svhn", "digits"} <= set(DATASETS.names())
    assert {"wrn28_2", "wrn28_8", "cnn_small", "digits_net"} <= set(NETWORKS.names())


def test_unknown_name_lists_known_and_closest():
    discover_all()
    with pytest.raises(ConfigError) as err:
        ALGORITHMS.get("fixmach")
    msg = str(err.value)
    assert "'fixmatch'" in msg and "supervised" in msg and "fixmach" in msg


def test_duplicate_registration_is_an_error():
    reg: Registry = Registry("thing")

    @reg.register("a")
    class A:
        pass

    with pytest.raises(ConfigError, match="already registered"):

        @reg.register("a")
        class B:
            pass


def test_discovery_propagates_import_errors(tmp_path, monkeypatch):
    pkg = tmp_path / "brokenpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bad.py").write_text("import does_not_exist_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from ssl_kd.registry import discover

    with pytest.raises(ModuleNotFoundError):
        discover("brokenpkg")
