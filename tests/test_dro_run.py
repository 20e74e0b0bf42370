"""`rankrobust dro-check` on a trained run, and the helpers behind check (d)."""
import numpy as np

from analysis.dro_run import positive_temperature
from analysis.probes import probes_for
from rankrobust.cli import main
from rankrobust.config import config_from_dict
from rankrobust.experiment import run_experiment
from tests.test_train import tiny_config


def test_positive_temperature():
    def cfg(**loss):
        return config_from_dict({"loss": loss})

    assert positive_temperature(cfg(name="bsl", mode="paper", tau=0.1, tau1=0.5)) == 0.5
    assert positive_temperature(cfg(name="bsl", mode="paper", tau=0.1, tau1=None)) == 0.1
    assert positive_temperature(cfg(name="bsl", mode="multi", tau=0.2)) == 0.2  # (τ₁ is refused in multi mode)
    assert positive_temperature(cfg(name="sl", tau=0.3)) == 0.3


def test_dro_check_on_a_noisy_run(tmp_path, capsys):
    cfg = tiny_config(tmp_path, loss={"name": "bsl", "tau1": 0.5}, noise={"pos_ratio": 0.3})
    summary = run_experiment(cfg, tmp_path / "run", progress=False, probes=probes_for())
    share = summary.metrics["gradient_share"]
    assert 0 <= share["bsl_noisy_share"] <= 1 and 0 < share["noisy_fraction"] < 1
    assert share["sl_noisy_share"] == share["noisy_fraction"]  # uniform weights put exactly the noisy fraction
    assert main(["dro-check", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "(d) positive-side gradient" in out and "all checks passed" in out
    # an impossible tolerance makes the command fail with a non-zero exit
    assert main(["dro-check", str(tmp_path / "run"), "--tol", "1e-300"]) == 1


def test_check_d_on_a_trained_synthetic_run(tmp_path):
    """Clustered users/items, 30% random noisy positives: BSL down-weights them after training, SL cannot."""
    from rankrobust.data import Interactions, split_per_user, write_lightgcn

    rng = np.random.default_rng(0)
    n_users, n_items, k = 60, 80, 4
    u_cluster, i_cluster = rng.integers(0, k, n_users), rng.integers(0, k, n_items)
    mask = (u_cluster[:, None] == i_cluster[None, :]) & (rng.random((n_users, n_items)) < 0.6)
    users, items = np.nonzero(mask)
    train, test = split_per_user(Interactions.from_pairs(users, items, n_users, n_items), (0.8, 0.2), seed=0)
    write_lightgcn(train, tmp_path / "train.txt")
    write_lightgcn(test, tmp_path / "test.txt")
    cfg = tiny_config(tmp_path, data={"train_path": str(tmp_path / "train.txt"), "test_path": str(tmp_path / "test.txt")},
                      loss={"name": "bsl", "tau1": 0.2, "tau2": 0.1}, noise={"pos_ratio": 0.3},
                      train={"epochs": 15, "lr": 0.01})
    share = run_experiment(cfg, None, progress=False, probes=probes_for()).metrics["gradient_share"]
    assert share["sl_noisy_share"] == share["noisy_fraction"]
    assert share["bsl_noisy_share"] < 0.8 * share["sl_noisy_share"]


def test_dro_check_on_a_file_names_the_run_folder(tmp_path, capsys):
    """A run's file given for its folder: one line naming the folder to pass, exit 2, no advice to delete."""
    run = tmp_path / "demo"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    (run / "status").write_text("done\n")
    assert main(["dro-check", str(run / "metrics.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"rankrobust dro-check: error: {run / 'metrics.json'} is a file, not a run folder: pass the "
                   f"folder that holds it ({run})")
    assert "delete" not in err and "permissions" not in err
