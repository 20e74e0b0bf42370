"""Inputs that would allocate absurd memory are refused before allocation, with one line naming the key and the fix."""
from __future__ import annotations

import pytest

from rankrobust import memory
from rankrobust.cli import main
from rankrobust.config import ConfigError, config_from_template, load_config
from rankrobust.data import load_files
from rankrobust.runs import RunDir
from tests.conftest import REPO

GiB = 2**30


def test_cli_absurd_dim_is_one_line_before_the_model_is_built(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(memory, "device_memory", lambda device: 16 * GiB)
    code = main(["train", "--dim", "100000000", "--epochs", "1", "--device", "cpu", "--quiet",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err == ("rankrobust train: error: model.dim = 100,000,000 needs about 11.6 TiB for the embedding tables "
                   "(1,812 users + 2,762 items) with their gradients, optimiser state and copies, more than the 16.0 "
                   "GiB of memory of cpu; lower model.dim (--dim)\n")
    assert not RunDir(tmp_path / "run").has_table("epochs") and not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.parametrize("overrides, shape, message", [
    ({"train.batch_size": 50_000, "train.num_negatives": 100_000, "train.scorer": "gather"}, (1_000, 2_000, 10**6),
     "train.batch_size × train.num_negatives × model.dim = 50,000 × 100,000 × 64 needs about 3.5 TiB for one batch's "
     "[50,000 × 100,001 × 64] gathered negative embeddings, more than the 16.0 GiB of memory of cpu; lower "
     "train.batch_size (--batch-size), train.num_negatives (--negatives) or model.dim (--dim)"),
    ({"train.sampler": "in_batch", "train.batch_size": 10**7}, (1_000, 2_000, 10**7),
     "train.batch_size = 10,000,000 needs about 1.4 PiB for one batch's [10,000,000 × 10,000,000] in-batch score "
     "blocks, more than the 16.0 GiB of memory of cpu; lower train.batch_size (--batch-size)"),
    ({"train.scorer": "dense", "train.batch_size": 10**6}, (1_000, 10**6, 10**7),
     "train.batch_size = 1,000,000 needs about 14.6 TiB for one batch's [1,000,000 × 1,000,000] dense score blocks "
     "(train.scorer = dense), more than the 16.0 GiB of memory of cpu; lower train.batch_size (--batch-size) or set "
     "train.scorer=sparse"),
    ({"model.dim": 10**8, "train.scorer": "gather"}, (1_000, 2_000, 10**6),
     "model.dim = 100,000,000 is too large: one batch's [1,024 × 65 × 100,000,000] gathered negative embeddings "
     "would need about 72.6 TiB and the embedding tables (1,000 users + 2,000 items) with their gradients, optimiser "
     "state and copies would need about 7.6 TiB, more than the 16.0 GiB of memory of cpu; lower model.dim (--dim)"),
])
def test_each_large_block_is_named_with_its_key_and_fix(overrides, shape, message, monkeypatch):
    monkeypatch.setattr(memory, "chunk_rows", lambda row_bytes, device, cap: 64)  # not this machine's cache
    cfg = config_from_template({"train.device": "cpu", **overrides})
    with pytest.raises(ConfigError) as info:
        memory.check_memory(cfg, *shape, "cpu", budget=16 * GiB)
    assert str(info.value) == message


def test_blocks_clamp_to_the_data_so_large_but_harmless_values_pass():
    cfg = config_from_template({"train.batch_size": 10**9, "train.eval_chunk": 10**9, "train.scorer": "gather"})
    blocks = memory.check_memory(cfg, 1_812, 2_762, 66_688, "cpu", budget=16 * GiB)  # batch ≤ pairs, chunk ≤ users
    assert {b.keys[0] for b in blocks} == {"model.dim", "train.batch_size", "train.eval_chunk"}


def test_only_the_sum_too_large_names_the_largest_block(monkeypatch):
    monkeypatch.setattr(memory, "chunk_rows", lambda row_bytes, device, cap: 256)  # not this machine's cache
    cfg = config_from_template({"train.scorer": "gather"})
    blocks = memory.estimate_memory(cfg, 31_668, 38_048, 1_237_259, "cpu")
    budget = max(b.bytes for b in blocks) + 1  # each block fits, their sum does not
    with pytest.raises(ConfigError, match=r"^model.dim = 64: the run needs about 215.0 MiB in all "
                                          r"\(the largest part, 119.1 MiB, for the embedding tables "
                                          r"\(31,668 users \+ 38,048 items\) with their gradients, optimiser state "
                                          r"and copies\), more than the 119.1 MiB of memory of cpu; lower model.dim"):
        memory.check_memory(cfg, 31_668, 38_048, 1_237_259, "cpu", budget=budget)


def test_the_evaluation_block_is_the_evaluators_score_buffer():
    """The estimate's chunk is the one the evaluator allocates: a huge train.eval_chunk is capped the same way
    (whole 64-user blocks sized to the device), and its bytes are the reused buffer plus one int64 per masked pair."""
    from rankrobust.evaluate import Evaluator
    from tests.conftest import random_interactions

    train, truth = random_interactions(300, 5_000, 0.02, seed=1), random_interactions(300, 5_000, 0.01, seed=2)
    for eval_chunk in (64, 10**9):
        cfg = config_from_template({"train.eval_chunk": eval_chunk})
        block = next(b for b in memory.estimate_memory(cfg, 300, 5_000, train.nnz, "cpu")
                     if b.keys == ("train.eval_chunk",))
        ev = Evaluator(truth, exclude=[train], chunk_size=eval_chunk, device="cpu")
        assert f"[{ev.chunk_size:,} × 5,000]" in block.what
        buffer = ev.chunk_size * ev.n_cols * 4  # what `Evaluator._run` allocates once per evaluation
        assert buffer <= block.bytes <= buffer + train.nnz * 8 + 4 * ev.chunk_size * (ev.n_cols - 5_000)


def test_graph_layers_cost_time_not_memory():
    """propagate_layers saves no layer: LightGCN's estimate does not grow with model.layers (a huge value passes);
    XSimGCL's noise buffer does (one [n, d] table per layer), named with model.layers."""
    small, large = (memory.estimate_memory(config_from_template({"model.name": "lightgcn", "model.layers": layers}),
                                           1_812, 2_762, 66_688, "cpu") for layers in (1, 10**9))
    assert [b.bytes for b in small] == [b.bytes for b in large]
    memory.check_memory(config_from_template({"model.name": "lightgcn", "model.layers": 10**9}),
                        1_812, 2_762, 66_688, "cpu", budget=16 * GiB)
    x1, x3 = (memory.estimate_memory(config_from_template({"model.name": "xsimgcl", "model.layers": layers}),
                                     1_812, 2_762, 66_688, "cpu") for layers in (1, 3))
    assert sum(b.bytes for b in x3) - sum(b.bytes for b in x1) == 2 * (1_812 + 2_762) * 64 * 4


@pytest.mark.parametrize("preset", ["mf-yelp2018-bsl.yaml", "lightgcn-gowalla-sl.yaml"])
def test_the_authors_settings_pass_on_a_16_gib_machine(preset):
    cfg = load_config(REPO / "configs" / preset)
    memory.check_memory(cfg, 31_668, 40_981, 1_237_259, "cpu", budget=16 * GiB)


def test_huge_ids_in_user_files_are_remapped_not_allocated(tmp_path):
    """Ids up to 10^15 give a 3 × 3 dataset (user files are remapped), so they never reach the memory check."""
    (tmp_path / "train.txt").write_text("7 1000000000000000 5\n900000000000000 5 42\n3 42\n")
    (tmp_path / "test.txt").write_text("7 42\n900000000000000 1000000000000000\n")
    ds = load_files(tmp_path / "train.txt", tmp_path / "test.txt", valid_fraction=0.0)
    assert ds.train.shape == (3, 3)


@pytest.mark.parametrize("overrides, named", [
    ({"train.num_negatives": 10**9, "train.scorer": "dense"},
     "train.num_negatives × train.batch_size = 1,000,000,000 × 1,024 needs about 7.5 TiB for one batch's [1,024 × "
     "1,000,000,000] sampled negative ids"),
    ({"model.name": "xsimgcl", "model.layers": 10**9, "model.cl_layer": 1},
     "model.layers × model.dim = 1,000,000,000 × 64 needs about 1.0 PiB for XSimGCL's noise for 1,000,000,000 "
     "layers"),
])
def test_the_refusal_names_the_key_that_is_absurd(overrides, named):
    cfg = config_from_template({"train.device": "cpu", **overrides})
    with pytest.raises(ConfigError) as info:
        memory.check_memory(cfg, 1_812, 2_762, 66_688, "cpu", budget=16 * GiB)
    assert str(info.value).startswith(named)
