"""Sweeps: a YAML spec expanded once into cells (runs), executed resumably into one folder.

``spec``       parse and validate a spec; expand the grid into `Cell` s (once)
``cell``       run one cell into its run folder (`run_cell`), wiring the analysis probes
``executors``  where cells run: in this process, in worker processes, or as Ray tasks
``runner``     `run_sweep`: lock the folder, run what is pending, keep the store current
"""
from rankrobust.sweeps.runner import SweepLocked, SweepReport, SweepTerminated, pending_cells, run_sweep
from rankrobust.sweeps.spec import Cell, SweepSpec, cell_id, load_spec, parse_spec

__all__ = ["Cell", "SweepSpec", "SweepLocked", "SweepReport", "SweepTerminated", "cell_id", "load_spec", "parse_spec",
           "pending_cells", "run_sweep"]
