"""CUDA-only checks (skipped without a GPU): no host sync per batch, determinism, CPU agreement."""
import pytest
import torch

from rankrobust.config import config_from_dict
from rankrobust.evaluate import Evaluator
from rankrobust.experiment import load_data, prepare_data
from rankrobust.train import Trainer
from tests.conftest import epoch_without_host_sync, random_interactions

pytestmark = pytest.mark.cuda


def lastfm_config(**overrides):
    cfg = config_from_dict({"train": {"device": "cuda", "num_negatives": 64}})
    return cfg.with_overrides(overrides)


@pytest.mark.parametrize("sampler,loss,noise", [
    ("uniform", "sl", 0.0), ("uniform_exclude", "bsl", 0.2), ("popularity", "bpr", 0.1), ("in_batch", "bsl", 0.0),
])
def test_epoch_has_no_host_sync(sampler, loss, noise):
    cfg = lastfm_config(**{"train.sampler": sampler, "loss.name": loss, "noise.neg_prob": noise})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    mean = epoch_without_host_sync(Trainer(cfg, data, torch.device("cuda")))
    assert torch.isfinite(mean).all().item()


def test_same_seed_same_numbers_on_cuda():
    cfg = lastfm_config(**{"loss.name": "bsl"})
    data, _ = prepare_data(cfg, load_data(cfg.data))
    losses = []
    for _ in range(2):
        trainer = Trainer(cfg, data, torch.device("cuda"))
        losses.append([trainer.epoch()[0].item() for _ in range(2)])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_cuda_evaluation_matches_cpu():
    truth = random_interactions(300, 500, 0.02, seed=0)
    train = random_interactions(300, 500, 0.05, seed=1).difference(truth)
    g = torch.Generator().manual_seed(0)
    U, I = torch.randn(300, 16, generator=g), torch.randn(500, 16, generator=g)
    cpu = Evaluator(truth, exclude=[train], chunk_size=64).evaluate(U, I)
    gpu = Evaluator(truth, exclude=[train], chunk_size=64, device="cuda").evaluate(U.cuda(), I.cuda())
    for key, value in cpu.metrics.items():
        assert gpu.metrics[key] == pytest.approx(value, abs=1e-6)
