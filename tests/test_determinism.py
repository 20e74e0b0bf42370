"""``train.deterministic``: deterministic algorithms during the run (on CPU here), ops without one named, state
restored."""
from __future__ import annotations

import warnings

import pytest
import torch

from rankrobust.config import config_from_template
from rankrobust.determinism import Determinism, op_from_warning
from rankrobust.experiment import run_experiment
from rankrobust.probes import Probe

TORCH_ALERT = ("scatter_add_cuda_kernel does not have a deterministic implementation, but you set "
               "'torch.use_deterministic_algorithms(True, warn_only=True)'. You can file an issue at "
               "https://github.com/pytorch/pytorch/issues to help us prioritize adding deterministic support for "
               "this operation.")


class Watch(Probe):
    """Records, at every epoch, whether deterministic algorithms are on; optionally emits a torch alert."""

    name = "watch"

    def __init__(self, alert: str | None = None) -> None:
        self.alert, self.seen = alert, []

    def epoch_end(self, epoch, model, row):
        self.seen.append((torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.deterministic))
        if self.alert:
            warnings.warn(self.alert, UserWarning)  # what torch emits for a CUDA kernel without a deterministic twin


def _cfg(deterministic: bool):
    return config_from_template({"train.epochs": 2, "train.device": "cpu", "model.dim": 8,
                                 "train.deterministic": deterministic})


def test_deterministic_run_on_cpu_records_it_and_restores_the_global_state():
    assert not torch.are_deterministic_algorithms_enabled()
    watch = Watch()
    summary = run_experiment(_cfg(True), progress=False, probes=[watch])
    assert watch.seen == [(True, True, True)] * 2  # on during training
    assert summary.metrics["determinism"] == {"enabled": True, "device": "cpu", "nondeterministic_ops": [],
                                              "cublas_workspace_config": None, "notes": []}
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic  # restored
    again = run_experiment(_cfg(True), progress=False)
    assert again.metrics["test"] == summary.metrics["test"]


def test_off_by_default_and_then_nothing_is_recorded():
    watch = Watch()
    summary = run_experiment(_cfg(False), progress=False, probes=[watch])
    assert watch.seen == [(False, False, False)] * 2 and "determinism" not in summary.metrics


def test_ops_without_a_deterministic_implementation_are_named():
    watch = Watch(alert=TORCH_ALERT)
    summary = run_experiment(_cfg(True), progress=False, probes=[watch])
    assert summary.metrics["determinism"]["nondeterministic_ops"] == ["scatter_add_cuda_kernel"]
    assert ("train.deterministic: 1 op(s) have no deterministic implementation on cpu and ran nondeterministically: "
            "scatter_add_cuda_kernel") in summary.metrics["warnings"]


def test_other_warnings_still_reach_the_user_and_stop_is_idempotent():
    state = Determinism.start(True, "cpu")
    try:
        with pytest.warns(UserWarning, match="something else"):
            warnings.warn("something else", UserWarning)
        warnings.warn(TORCH_ALERT, UserWarning)
    finally:
        state.stop()
        state.stop()
    assert state.ops == {"scatter_add_cuda_kernel"}
    assert not torch.are_deterministic_algorithms_enabled()


def test_op_names_from_torch_messages():
    assert op_from_warning(TORCH_ALERT) == "scatter_add_cuda_kernel"
    assert op_from_warning("Deterministic behavior was enabled with either `torch.use_deterministic_algorithms(True)` "
                           "or `at::Context::setDeterministicAlgorithms(true)`, but this operation is not "
                           "deterministic "
                           "because it uses CuBLAS and you have CUDA >= 10.2. To enable deterministic behavior in this "
                           "case, you must set an environment variable before running your PyTorch application: "
                           "CUBLAS_WORKSPACE_CONFIG=:4096:8") == "cuBLAS (CUBLAS_WORKSPACE_CONFIG unset)"
    assert op_from_warning("some other warning") is None


@pytest.mark.cuda
def test_cuda_run_sets_the_cublas_workspace(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cfg = config_from_template({"train.epochs": 1, "train.device": "cuda", "model.dim": 8,
                                "train.deterministic": True})
    summary = run_experiment(cfg, progress=False)
    record = summary.metrics["determinism"]
    assert record["cublas_workspace_config"] == ":4096:8"
    assert isinstance(record["nondeterministic_ops"], list)
