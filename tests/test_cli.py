"""The `rankrobust` command (rankrobust/cli.py): flags from the registries, typos, train end to end."""
import json

import pytest

from rankrobust.cli import build_parser, main, train_config
from rankrobust.config import ConfigError
from tests.test_sweep import write_tiny_data


def test_cli_train_prints_table(tmp_path, capsys):
    train, test = write_tiny_data(tmp_path / "data")
    code = main(["train", "--set", f"data.train_path={train}", "--set", f"data.test_path={test}", "--loss", "bsl",
                 "--tau1", "0.5", "--tau2", "0.1", "--epochs", "2", "--negatives", "8", "--batch-size", "64",
                 "--device", "cpu", "--dim", "8", "--out", str(tmp_path / "run"), "--quiet", "--fairness"])
    out = capsys.readouterr().out
    assert code == 0 and "recall" in out and "ndcg" in out and "@20" in out and "group" in out
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["loss"] == {**cfg["loss"], "name": "bsl", "tau1": 0.5, "tau2": 0.1}


@pytest.mark.parametrize("argv,needle", [
    (["train", "--nosie-pos", "0.2"], "did you mean '--noise-pos'"),
    (["trian"], "did you mean 'train'"),
])
def test_cli_typos_name_closest(argv, needle, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert needle in capsys.readouterr().err


def test_cli_invalid_values(capsys):
    assert main(["train", "--loss", "bls", "--epochs", "1"]) == 2
    assert "did you mean 'bsl'" in capsys.readouterr().err
    assert main(["train", "--set", "train.epoch=3"]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err


def test_cli_datasets(capsys):
    assert main(["datasets", "--no-stats"]) == 0
    out = capsys.readouterr().out
    assert "lastfm" in out and "yelp2018" in out


# ---------------------------------------------------------------------------- train_config (no training)
def parsed(*argv: str):
    return train_config(build_parser().parse_args(["train", *argv]))


def test_train_config_merges_only_what_was_written():
    """``--loss bpr`` on the default config is fine (SL's default τ is not carried over)."""
    cfg = parsed("--loss", "bpr", "--epochs", "3")
    assert cfg.loss.name == "bpr" and cfg.train.epochs == 3
    assert cfg.to_dict()["loss"] == {"name": "bpr"}


def test_train_config_rejects_option_of_another_entry():
    with pytest.raises(ConfigError, match=r"loss\.tau does not apply to loss\.name = 'bpr'; it is an option of loss .*bsl"):
        parsed("--loss", "bpr", "--tau", "0.2")


def test_train_config_order_config_then_flags_then_set(tmp_path):
    preset = tmp_path / "x.yaml"
    preset.write_text("train: {epochs: 7, lr: 0.5}\nloss: {name: sl, tau: 0.3}\n")
    cfg = parsed("--config", str(preset), "--epochs", "5", "--set", "train.epochs=4", "--tau", "0.2")
    assert cfg.train.epochs == 4 and cfg.train.lr == 0.5 and cfg.loss.options.tau == 0.2
