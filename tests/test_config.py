import pytest
import yaml

from ssl_kd.cli import parser, prepare
from ssl_kd.errors import ConfigError


def resolve(argv):
    cfg, _, _ = prepare(parser().parse_args(argv))
    return cfg


def test_preset_defaults_apply():
    cfg = resolve(["--algo", "fixmatch", "--dataset", "cifar10_4k"])
    assert (cfg.train.net, cfg.train.batch_size, cfg.train.uratio, cfg.train.steps) == ("wrn28_2", 64, 7, 2**20)
    cfg = resolve(["--algo", "fixmatch", "--dataset", "cifar100_10k"])
    assert cfg.train.net == "wrn28_8" and cfg.train.weight_decay == 1e-3
    assert resolve(["--dataset", "digits_30"]).train.net == "digits_net"


def test_precedence_yaml_flag_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"lr": 0.1, "steps": 7, "batch_size": 16}, "algo": {"threshold": 0.8}}))
    cfg = resolve(["--dataset", "digits_30", "--config", str(path), "--lr", "0.2", "--set", "train.lr=0.3"])
    assert cfg.train.steps == 7  # yaml beats preset default
    assert cfg.train.batch_size == 16
    assert cfg.train.lr == 0.3  # --set beats flag beats yaml
    assert cfg.algo.threshold == 0.8
    cfg = resolve(["--dataset", "digits_30", "--config", str(path), "--lr", "0.2"])
    assert cfg.train.lr == 0.2  # flag beats yaml


def test_yaml_can_pick_algorithm(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"train": {"algo": "supervised", "dataset": "digits"}}))
    cfg = resolve(["--config", str(path)])
    assert cfg.train.algo == "supervised" and cfg.train.dataset == "digits"


@pytest.mark.parametrize("argv,needle", [
    (["--set", "train.lrr=0.1"], "train.lr"),
    (["--set", "algo.thresh=0.1"], "algo.threshold"),
    (["--set", "train.steps=abc"], "train.steps"),
    (["--set", "train.steps=1.5"], "train.steps"),
    (["--set", "bogus.x=1"], "bogus"),
    (["--set", "noequals"], "key=value"),
    (["--algo", "fixmach"], "fixmatch"),
    (["--dataset", "cifar11_4k"], "cifar10"),
    (["--net", "wrn28_3"], "wrn28_2"),
])
def test_bad_values_name_the_problem(argv, needle):
    with pytest.raises(ConfigError) as err:
        resolve(["--dataset", "digits_30", *argv] if "--dataset" not in argv else argv)
    assert needle in str(err.value)


def test_bool_and_type_coercion():
    cfg = resolve(["--dataset", "digits_30", "--set", "train.amp=false", "--set", "train.steps=1e3", "--set", "data.label_noise=0.2"])
    assert cfg.train.amp is False and cfg.train.steps == 1000 and cfg.data.label_noise == 0.2
