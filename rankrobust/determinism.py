"""``train.deterministic``: deterministic algorithms for one run, and which ops could not be made so.

`Determinism.start(enabled, device)` (called by `rankrobust.experiment.run_experiment`
before training) turns on, for the run only:

* ``torch.use_deterministic_algorithms(True, warn_only=True)``: every op
  with a deterministic implementation uses it; an op without one still runs
  (nondeterministically) and torch warns, naming it;
* ``torch.backends.cudnn.deterministic = True`` and ``benchmark = False``;
* on CUDA, ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (cuBLAS is deterministic only
  with a fixed workspace).  cuBLAS reads it when CUDA starts in the process,
  so when CUDA had already started without it the run says so.

While the run lasts, torch's "does not have a deterministic implementation"
warnings are collected (not printed) into the set of op names; `record`
returns them for ``metrics.json`` (section ``determinism``) and `warnings`
one line naming them for the run's warnings.  `stop` restores the previous
global settings, so one run's choice never leaks into the next run of the
same process (a sweep runs many).

On CPU (torch 2.13) a run reports no such op: torch's determinism alerts
are raised by CUDA kernels.  On CUDA, expect the scatter / index-add
backward kernels (gather's backward, ``scatter_add_cuda_kernel`` and the
like); this was not measured here (no GPU in the session that wrote it).
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Determinism", "CUBLAS_WORKSPACE", "op_from_warning"]

#: the cuBLAS workspace setting that makes cuBLAS deterministic (NVIDIA's documented values)
CUBLAS_WORKSPACE = ":4096:8"
_DETERMINISTIC_WORKSPACES = (":4096:8", ":16:8")
_NO_DETERMINISTIC = re.compile(r"^\s*(\S.*?) does not have a deterministic implementation")
_CUBLAS = "CUBLAS_WORKSPACE_CONFIG"


def op_from_warning(message: str) -> str | None:
    """The op a torch determinism warning names, or None when ``message`` is not one.

    ``"scatter_add_cuda_kernel does not have a deterministic implementation, but you set …"``
    → ``"scatter_add_cuda_kernel"``; the cuBLAS workspace warning → ``"cuBLAS (CUBLAS_WORKSPACE_CONFIG unset)"``.
    """
    found = _NO_DETERMINISTIC.match(message)
    if found:
        return found.group(1)
    if _CUBLAS in message and "deterministic" in message.lower():
        return f"cuBLAS ({_CUBLAS} unset)"
    return None


@dataclass
class Determinism:
    """The deterministic-algorithms state of one run (see the module docstring); inert when not enabled."""

    enabled: bool
    device: str = "cpu"
    ops: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    _saved: tuple | None = None
    _catcher: Any = None
    _showwarning: Any = None

    @classmethod
    def start(cls, enabled: bool, device: torch.device | str) -> "Determinism":
        """Turn deterministic algorithms on for a run on ``device`` when ``enabled`` (else change nothing)."""
        state = cls(bool(enabled), str(device))
        if state.enabled:
            state._enable(torch.device(device))
        return state

    def _enable(self, device: torch.device) -> None:
        self._saved = (torch.are_deterministic_algorithms_enabled(),
                       torch.is_deterministic_algorithms_warn_only_enabled(),
                       torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        if device.type == "cuda" and os.environ.get(_CUBLAS) not in _DETERMINISTIC_WORKSPACES:
            started = torch.cuda.is_initialized()
            os.environ[_CUBLAS] = CUBLAS_WORKSPACE
            if started:
                self.notes.append(f"CUDA had started before {_CUBLAS} was set, so cuBLAS may still be "
                                  f"nondeterministic; start rankrobust with {_CUBLAS}={CUBLAS_WORKSPACE} in the "
                                  f"environment")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        self._catcher = warnings.catch_warnings()
        self._catcher.__enter__()
        # torch's determinism alerts always reach us (an 'ignore' filter elsewhere would hide the op names)
        warnings.filterwarnings("always", message=r".*does not have a deterministic implementation")
        warnings.filterwarnings("always", message=rf".*{_CUBLAS}")
        self._showwarning = warnings.showwarning
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            op = op_from_warning(str(message))
            if op is not None:
                self.ops.add(op)
                return
            previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show

    def stop(self) -> None:
        """Restore the global settings of before `start` (idempotent)."""
        if self._saved is None:
            return
        if self._catcher is not None:
            self._catcher.__exit__(None, None, None)  # restores the filters and showwarning
            self._catcher = None
        algorithms, warn_only, cudnn_det, cudnn_bench = self._saved
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        torch.backends.cudnn.deterministic = cudnn_det
        torch.backends.cudnn.benchmark = cudnn_bench
        self._saved = None

    def record(self) -> dict[str, Any]:
        """The ``metrics.json`` section: ``{"determinism": {...}}`` when enabled, else ``{}``.

        ``nondeterministic_ops``: sorted names of the ops that ran without a
        deterministic implementation; ``cublas_workspace_config``: the
        environment value on CUDA (None on CPU); ``notes``.
        """
        if not self.enabled:
            return {}
        return {"determinism": {"enabled": True, "device": self.device,
                                "nondeterministic_ops": sorted(self.ops),
                                "cublas_workspace_config": os.environ.get(_CUBLAS) if "cuda" in self.device else None,
                                "notes": list(self.notes)}}

    def warnings(self) -> list[str]:
        """Lines for the run's ``warnings``: the ops that stayed nondeterministic, and notes."""
        if not self.enabled:
            return []
        lines = list(self.notes)
        if self.ops:
            lines.append(f"train.deterministic: {len(self.ops)} op(s) have no deterministic implementation on "
                         f"{self.device} and ran nondeterministically: {', '.join(sorted(self.ops))}")
        return lines
