"""The metric registry (`rankrobust.metrics`): every registered metric against a float64 brute-force oracle,
one NDCG discount, and ``results --compare-metric`` for every per-user metric (a global one refused in one line).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import analysis.fairness  # noqa: F401  (registers the fairness probe's metrics)
from rankrobust.cli import main
from rankrobust.data import split_per_user
from rankrobust.evaluate import Evaluator, ips_weights
from rankrobust.metrics import (METRICS, NEEDS, PROBE_K, RUN_KS, Metric, UnknownMetric, compute_metrics, get_metric,
                                metric_inputs, ndcg_discount, parse_metric, per_user_metrics)
from tests.conftest import random_interactions

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- the oracle: Python loops in float64
def _ranked(scores: np.ndarray, masked: set[int]) -> list[int]:
    """Unmasked items by score descending, equal scores by ascending id (a stable sort of −score)."""
    return [int(i) for i in np.argsort(-scores, kind="stable") if int(i) not in masked]


def _dcg(weights_at_ranks) -> float:
    return sum(w / math.log2(r + 2) for r, w in enumerate(weights_at_ranks))


def _oracle(lists, truths, k, n_items, w):
    """{name: value} at cutoff k: per-user metrics averaged over the users, global ones over all lists."""
    per = {name: [] for name in ("recall", "precision", "ndcg", "hit", "mrr", "ips_recall", "ips_ndcg")}
    shown = set()
    for top, truth in zip(lists, truths):
        top = top[:k]
        shown |= set(top)
        rel = [1.0 if i in truth else 0.0 for i in top]
        per["recall"].append(sum(rel) / len(truth))
        per["precision"].append(sum(rel) / k)
        per["ndcg"].append(_dcg(rel) / _dcg([1.0] * min(k, len(truth))))
        per["hit"].append(1.0 if sum(rel) else 0.0)
        first = next((r for r, x in enumerate(rel) if x), None)
        per["mrr"].append(0.0 if first is None else 1.0 / (first + 1))
        per["ips_recall"].append(sum(w[i] for i in top if i in truth) / sum(w[i] for i in truth))
        per["ips_ndcg"].append(_dcg([w[i] if i in truth else 0.0 for i in top])
                               / _dcg(sorted((w[i] for i in truth), reverse=True)[:k]))
    out = {name: sum(v) / len(v) for name, v in per.items()}
    out["coverage"] = len(shown) / n_items
    return out


ORACLE_NAMES = {"recall", "precision", "ndcg", "hit", "mrr", "ips_recall", "ips_ndcg", "coverage"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_registered_test_metric_equals_its_float64_oracle(seed):
    """Rounded scores (ties), every metric of the registry at K = 1, 3, 7, 40 (40 > n_items − a user's seen items)."""
    n_users, n_items, ks = 23, 31, (1, 3, 7, 40)
    train, valid, test = split_per_user(random_interactions(n_users, n_items, 0.3, seed=seed), (0.7, 0.1, 0.2),
                                        seed=seed)
    gen = torch.Generator().manual_seed(seed)
    U = torch.randn(n_users, 4, generator=gen, dtype=torch.float64).round(decimals=1)
    I = torch.randn(n_items, 4, generator=gen, dtype=torch.float64).round(decimals=1)
    result = Evaluator(test, exclude=[train, valid], ks=ks).evaluate(U, I)
    popularity = train.item_counts()
    propensity = ips_weights(popularity, 0.7)
    means, per_user = compute_metrics(metric_inputs(result, popularity, propensity), ks)
    means.update({k: v for k, v in result.metrics.items() if k != "n_users"})

    scores = (U @ I.T).numpy()
    users = result.users.tolist()
    lists = [_ranked(scores[u], set(train.row(u).tolist()) | set(valid.row(u).tolist())) for u in users]
    truths = [set(test.row(u).tolist()) for u in users]
    w = [max(float(p), 1.0) ** -0.7 for p in popularity]
    registered = {key for key, e in METRICS.items() if e.section == "test"}
    assert registered == ORACLE_NAMES, "a registered metric without an oracle here"
    for k in ks:
        want = _oracle(lists, truths, k, n_items, w)
        for name in sorted(registered):
            assert means[f"{name}@{k}"] == pytest.approx(want[name], rel=1e-12, abs=1e-12), (name, k)
    # the per-user values are those of the per-user metrics, user by user
    for name in ("ips_recall", "ips_ndcg"):
        assert per_user[f"{name}@7"].shape == (len(users),)
    assert set(per_user) == {f"{n}@{k}" for n in ("ips_recall", "ips_ndcg") for k in ks}


def test_what_is_computed_follows_the_declared_needs():
    """Without propensities (train.ips_gamma unset) the IPS metrics are left out; coverage needs only the lists."""
    train, test = split_per_user(random_interactions(10, 12, 0.4, seed=3), (0.8, 0.2), seed=3)
    result = Evaluator(test, exclude=[train], ks=(5,)).evaluate(torch.randn(10, 3), torch.randn(12, 3))
    means, per_user = compute_metrics(metric_inputs(result), (5,))
    assert set(means) == {"coverage@5"} and per_user == {}


def test_the_declarations():
    assert per_user_metrics() == ["recall", "precision", "ndcg", "hit", "mrr", "ips_recall", "ips_ndcg"]
    assert not get_metric("coverage").per_user and get_metric("coverage").needs == {"topk"}
    assert get_metric("ips_ndcg").needs == {"topk", "truth", "propensity"}
    fair = [e for e in METRICS.values() if e.section == "fairness"]
    assert {e.name for e in fair} == set(analysis.fairness.FAIRER)
    assert all(not e.per_user and e.cutoffs == PROBE_K and e.higher_is_better == (analysis.fairness.FAIRER[e.name] > 0)
               for e in fair)
    assert all(set(e.needs) <= set(NEEDS) and e.cutoffs in (RUN_KS, PROBE_K) for e in METRICS.values())
    assert parse_metric("test.ndcg@20") == (get_metric("ndcg"), 20)
    assert parse_metric("fairness.aplt") == (get_metric("fairness.aplt"), None)
    assert get_metric("ndcg").column(20) == "test.ndcg@20" and get_metric("fairness.aplt").column() == "fairness.aplt"
    with pytest.raises(UnknownMetric, match="'ndgc' is not a registered metric \\(did you mean 'ndcg'\\?\\)"):
        parse_metric("ndgc@20")
    with pytest.raises(ValueError, match="write ndcg@K"):
        parse_metric("ndcg")
    with pytest.raises(ValueError, match="needs \\['likes'\\]"):
        Metric("x", per_user=True, higher_is_better=True, needs=frozenset({"likes"}), formula="")
    with pytest.raises(ValueError, match="already registered"):
        from rankrobust.metrics import register_metric
        register_metric(get_metric("ndcg"))


def test_one_ndcg_discount():
    """d_r = 1/log2(r+1), and no other module of the package or the analysis layer writes log2 again."""
    assert ndcg_discount(4).tolist() == [1 / math.log2(r + 1) for r in range(1, 5)]
    writers = [str(p.relative_to(ROOT)) for folder in ("rankrobust", "analysis") for p in (ROOT / folder).rglob("*.py")
               if re.search(r"\b(torch|np|numpy|math)\.log2\(", p.read_text()) and p.name != "metrics.py"]
    assert writers == []


# --------------------------------------------------------------------------- results --compare-metric
@pytest.fixture(scope="module")
def two_seed_store(tmp_path_factory):
    """A tiny sweep: SL and BSL, 2 seeds, IPS on (train.ips_gamma), fairness probe on."""
    from tests.test_sweep import tiny_spec

    tmp = tmp_path_factory.mktemp("compare_metric")
    path = tiny_spec(tmp, losses=("sl", "bsl"), ratios=(0.0,), seeds=(0, 1), epochs=1)
    spec = yaml.safe_load(path.read_text())
    spec["base"]["train"]["ips_gamma"] = 0.5
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(path), "--out", str(tmp / "out"), "--quiet"]) == 0
    return tmp / "out"


def test_compare_metric_works_for_every_registered_per_user_metric(two_seed_store, capsys):
    from rankrobust.store import load_store, stored_metrics

    frame = load_store(two_seed_store)
    computed = stored_metrics(frame, per_user=True)
    assert {m.partition("@")[0] for m in computed} == set(per_user_metrics())  # every one, IPS included
    assert "coverage@20" in stored_metrics(frame, per_user=False)
    # the fairness probe's coverage (at train.metric's K = 20) is the registered coverage@20, run by run
    assert (frame["fairness.coverage"] == frame["test.coverage@20"]).all()
    capsys.readouterr()
    for metric in computed:
        assert main(["results", str(two_seed_store), "--compare", "sl", "bsl", "--compare-metric", metric,
                     "--per-user"]) == 0, metric
        out = capsys.readouterr().out
        assert f"bsl vs sl, test {metric}, over matched seeds" in out and "secondary: per-user" in out, metric


@pytest.mark.parametrize("metric", ["coverage@20", "fairness.aplt", "test.coverage@5"])
def test_compare_metric_refuses_a_global_metric_in_one_line(two_seed_store, capsys, metric):
    assert main(["results", str(two_seed_store), "--compare", "sl", "bsl", "--compare-metric", metric]) == 2
    err = capsys.readouterr().err
    shown = metric.removeprefix("test.")
    assert err.startswith(f"rankrobust results: error: --compare-metric {shown!r} is a global metric (one value per "
                          f"run, over all users' lists): it has no per-user values to pair; per-user metrics: recall, "
                          f"precision, ndcg, hit, mrr, ips_recall, ips_ndcg (per-user metrics of these runs: ")
    assert err.count("\n") == 1


def test_compare_metric_unknown_or_not_computed_is_one_line(two_seed_store, capsys):
    assert main(["results", str(two_seed_store), "--compare", "sl", "bsl", "--compare-metric", "ndgc@20"]) == 2
    err = capsys.readouterr().err
    assert "'ndgc@20' is not a registered metric" in err and err.count("\n") == 1
    assert main(["results", str(two_seed_store), "--compare", "sl", "bsl", "--compare-metric", "ndcg@7"]) == 2
    err = capsys.readouterr().err
    assert "'ndcg@7' is not a test metric of these runs" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- docs/EXTENDING.md, section 7: a metric
def test_extending_metric_example(monkeypatch, tmp_path):
    """The novelty@K block of docs/EXTENDING.md, run as written in a copy of METRICS: equal to a float64 loop,
    and, with no other edit, in a run's metrics.json and per_user.parquet; nothing stays registered."""
    import rankrobust.metrics as metrics
    from rankrobust.experiment import run_experiment
    from rankrobust.runs import RunDir
    from tests.test_noise import _extending_block
    from tests.test_train import tiny_config

    monkeypatch.setattr(metrics, "METRICS", dict(metrics.METRICS))
    namespace: dict = {}
    exec(compile(_extending_block("## 7. A metric"), "docs/EXTENDING.md#7", "exec"), namespace)
    assert metrics.get_metric("novelty").per_user and "novelty" in metrics.per_user_metrics()

    train, test = split_per_user(random_interactions(15, 20, 0.3, seed=4), (0.8, 0.2), seed=4)
    gen = torch.Generator().manual_seed(4)
    U, I = torch.randn(15, 3, generator=gen), torch.randn(20, 3, generator=gen)
    result = Evaluator(test, exclude=[train], ks=(3, 30)).evaluate(U, I)
    phi = train.item_counts()
    means, per_user = compute_metrics(metric_inputs(result, popularity=phi), (3, 30))
    share = [(float(p) + 1) / (float(phi.sum()) + len(phi)) for p in phi]
    scores = (U.double() @ I.double().T).numpy()
    for k in (3, 30):
        want = []
        for row, u in enumerate(result.users.tolist()):
            top = _ranked(scores[u], set(train.row(u).tolist()))[:k]
            want.append(sum(-math.log2(share[i]) for i in top) / len(top) if top else 0.0)
        assert per_user[f"novelty@{k}"] == pytest.approx(want, rel=1e-12)
        assert means[f"novelty@{k}"] == pytest.approx(sum(want) / len(want), rel=1e-12)

    summary = run_experiment(tiny_config(tmp_path, train={"epochs": 1}), tmp_path / "run", progress=False)
    assert {"novelty@5", "novelty@20", "coverage@20"} <= set(summary.metrics["test"])
    table = RunDir(tmp_path / "run").table("per_user")
    assert "novelty@20" in table and "coverage@20" not in table  # per-user values only for a per-user metric
    assert math.fsum(table["novelty@20"]) / len(table) == summary.metrics["test"]["novelty@20"]


def test_extending_metric_is_gone_after_the_test():
    assert "novelty" not in METRICS


def test_docs_metrics_table_is_the_registry():
    """docs/METRICS.md's registry table lists every registered metric with its kind, cutoffs and direction."""
    text = (ROOT / "docs" / "METRICS.md").read_text()
    rows = {}
    for line in text[text.index("## The registry"):text.index("## Popularity and fairness")].splitlines():
        cells = [c.strip() for c in line.replace("\\|", "¦").strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("`"):
            for key in re.findall(r"`([a-z_.]+)`", cells[0]):
                rows[key] = cells[1:4]
    assert set(rows) == set(METRICS)
    for key, entry in METRICS.items():
        kind, cutoffs, better = rows[key]
        assert kind == ("per-user" if entry.per_user else "global"), key
        assert cutoffs == ("@K" if entry.cutoffs == RUN_KS else "probe's K"), key
        assert better == ("higher" if entry.higher_is_better else "lower"), key
