"""Hyper-parameter tuning per arm (``rankrobust tune``): spec, Optuna studies, Ray Tune, results.

`rankrobust.tuning.spec` parses a tune spec into arms (each with its trial
base config and the search space its option declarations give);
`rankrobust.tuning.study` runs one Optuna study per arm in ``DIR/study.db``,
every trial an ordinary run folder; `rankrobust.tuning.ray_tune` runs the
same trials through Ray Tune; `rankrobust.tuning.results` summarises a tune
folder.  The protocol is README "Tuning" and docs/tuning.md.
"""
from rankrobust.tuning.spec import Arm, TuneSpec, load_tune_spec, parse_tune_spec

__all__ = ["Arm", "TuneSpec", "load_tune_spec", "parse_tune_spec"]
