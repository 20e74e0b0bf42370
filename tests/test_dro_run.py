"""`rankrobust dro-check` on a trained run, and the helpers behind check (d)."""
import numpy as np

from analysis.dro_run import noisy_mask, positive_temperature
from rankrobust.cli import main
from rankrobust.experiment import run_experiment
from tests.conftest import random_interactions
from tests.test_train import tiny_config


def test_noisy_mask_matches_brute_force():
    train = random_interactions(20, 30, 0.2, seed=4)
    users, items = train.to_pairs()
    rng = np.random.default_rng(0)
    pick = rng.choice(len(users), size=15, replace=False)
    mask = noisy_mask(train, users[pick], items[pick])
    expect = np.array([(u, i) in set(zip(users[pick], items[pick])) for u, i in zip(users, items)])
    assert (mask == expect).all()
    assert not noisy_mask(train, np.array([], dtype=np.int64), np.array([], dtype=np.int64)).any()


def test_positive_temperature():
    assert positive_temperature({"name": "bsl", "mode": "paper", "tau": 0.1, "tau1": 0.5}) == 0.5
    assert positive_temperature({"name": "bsl", "mode": "paper", "tau": 0.1, "tau1": None}) == 0.1
    assert positive_temperature({"name": "bsl", "mode": "multi", "tau": 0.2, "tau1": 0.5}) == 0.2
    assert positive_temperature({"name": "sl", "tau": 0.3}) == 0.3


def test_dro_check_on_a_noisy_run(tmp_path, capsys):
    cfg = tiny_config(tmp_path, loss={"name": "bsl", "tau1": 0.5}, noise={"pos_ratio": 0.3})
    summary = run_experiment(cfg, tmp_path / "run", progress=False)
    share = summary.metrics["gradient_share"]
    assert 0 <= share["bsl_noisy_share"] <= 1 and 0 < share["noisy_fraction"] < 1
    assert share["sl_noisy_share"] == share["noisy_fraction"]  # uniform weights put exactly the noisy fraction
    assert main(["dro-check", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "(d) positive-side gradient" in out and "all checks passed" in out
    # an impossible tolerance makes the command fail with a non-zero exit
    assert main(["dro-check", str(tmp_path / "run"), "--tol", "1e-300"]) == 1
