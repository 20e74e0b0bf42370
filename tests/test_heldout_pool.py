"""The held-out false-negative pool is withheld at every p, p = 0 included."""
import json

import numpy as np
import pytest

from rankrobust.experiment import load_data, prepare_data, run_experiment
from rankrobust.noise import NOISE_PROTOCOL, outdated_noise_protocol
from rankrobust.runs import RunDir
from rankrobust.sweeps.cell import is_finished
from tests.test_train import tiny_config


def pairs(inter) -> set[tuple[int, int]]:
    users, items = inter.to_pairs()
    return set(zip(users.tolist(), items.tolist()))


@pytest.mark.parametrize("pos_ratio", [0.0, 0.2])
def test_heldout_cells_share_their_training_positives_at_every_p(tmp_path, pos_ratio):
    base = tiny_config(tmp_path, noise={"neg_pool": "heldout", "pos_ratio": pos_ratio})
    dataset = load_data(base.data)
    prepared = {p: prepare_data(base.with_overrides({"noise.neg_prob": p}), dataset) for p in (0.0, 0.1, 0.3)}
    zero, _ = prepared[0.0]
    assert zero.fn_pool is not None and zero.fn_pool.nnz > 0
    assert pairs(zero.train) | pairs(zero.fn_pool) >= pairs(dataset.train)  # nothing lost but to the pool
    assert not pairs(zero.train) & pairs(zero.fn_pool)
    for p in (0.1, 0.3):
        data, table = prepared[p]
        assert pairs(data.train) == pairs(zero.train)  # the same positives at p = 0 and p > 0
        assert pairs(data.fn_pool) == pairs(zero.fn_pool)  # the same withheld pairs (the draw ignores p)
        np.testing.assert_array_equal(data.train.indptr, zero.train.indptr)
        np.testing.assert_array_equal(data.train.indices, zero.train.indices)
        if pos_ratio == 0:
            assert data.noisy is None and zero.noisy is None
        else:
            np.testing.assert_array_equal(data.noisy, zero.noisy)
    assert set(prepared[0.0][1]["kind"]) >= {"heldout_negative"}  # recorded in noise.parquet at p = 0 as well


def test_train_pool_at_p0_changes_nothing(tmp_path):
    cfg = tiny_config(tmp_path)  # neg_pool = train, neg_prob = 0
    dataset = load_data(cfg.data)
    data, table = prepare_data(cfg, dataset)
    assert data.fn_pool is None and pairs(data.train) == pairs(dataset.train)
    assert len(table) == 0
    with_p, _ = prepare_data(cfg.with_overrides({"noise.neg_prob": 0.2}), dataset)
    assert pairs(with_p.train) == pairs(dataset.train) and pairs(with_p.fn_pool) == pairs(dataset.train)


def test_outdated_noise_protocol_names_only_old_heldout_p0_runs():
    recorded = {"training_data": {"noise_protocol": NOISE_PROTOCOL}}
    heldout0 = {"noise": {"neg_pool": "heldout", "neg_prob": 0.0}}
    assert outdated_noise_protocol(heldout0, {})  # made before the rule: trained on 100 % of the positives
    assert outdated_noise_protocol(heldout0, {"training_data": {"noise_protocol": 1}})
    assert not outdated_noise_protocol(heldout0, recorded)
    for config in ({"noise": {"neg_pool": "heldout", "neg_prob": 0.1}},  # p > 0 trained the same before and after
                   {"noise": {"neg_pool": "train", "neg_prob": 0.0}}, {"noise": {}}, {}):
        assert not outdated_noise_protocol(config, {})


def test_old_heldout_p0_run_is_redone_by_a_sweep(tmp_path):
    cfg = tiny_config(tmp_path, noise={"neg_pool": "heldout"}, train={"epochs": 1})
    out = tmp_path / "run"
    summary = run_experiment(cfg, out, progress=False)
    record = summary.metrics["training_data"]
    assert record == {"noise_protocol": NOISE_PROTOCOL, "train_pairs": summary.data.train.nnz,
                      "fn_pool_pairs": summary.data.fn_pool.nnz}
    run = RunDir(out)
    assert is_finished(run, cfg.to_dict())
    metrics = json.loads((out / "metrics.json").read_text())
    del metrics["training_data"]  # as a run of the old protocol wrote it
    (out / "metrics.json").write_text(json.dumps(metrics))
    assert not is_finished(run, cfg.to_dict())
    from rankrobust.store import run_row  # results leave it out as outdated, as the sweep redoes it

    assert run_row(out)["outdated_protocol"] is True
