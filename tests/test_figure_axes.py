"""A figure never averages over a setting it does not show (analysis/figures.py `require_named`), and the store's
column names live in rankrobust/store.py only."""
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.figures import UnnamedAxis, Sweep, accuracy_frame, noise_frame, require_named
from rankrobust import store
from rankrobust.store import LOSS, MODEL, NOISE_POS_KIND, NOISE_POS_RATIO, RUN_DIR, SEED, STATUS

REPO = Path(__file__).parent.parent


def fake_sweep(**columns) -> Sweep:
    """A noisy-positives store of 2 losses × 2 ratios × 2 seeds (+ ``columns``: name → one value per row)."""
    rows = [{LOSS: loss, MODEL: "mf", NOISE_POS_RATIO: r, SEED: s, "loss.tau": 0.1 if loss == "sl" else 0.2,
             STATUS: "done", RUN_DIR: f"runs/{loss}-{r}-{s}", "train.metric": "recall@20",
             "test.recall@20": 0.1 + r, "test.ndcg@20": 0.05 + r}
            for loss in ("sl", "bsl") for r in (0.0, 0.2) for s in (0, 1)]
    frame = pd.DataFrame(rows)
    for name, values in columns.items():
        frame[name] = values
    return Sweep(Path("sweeps/np"), "noisy-positives-test", frame)


def test_a_setting_that_varies_within_a_point_is_refused_in_one_line():
    kinds = ["uniform", "popularity"] * 4  # the two seeds of each point differ in the noise kind
    with pytest.raises(UnnamedAxis) as err:
        noise_frame(fake_sweep(**{NOISE_POS_KIND: kinds}), axis=NOISE_POS_RATIO)
    message = str(err.value)
    assert "\n" not in message
    assert message == ("sweeps/np: its runs differ in noise.pos_kind = popularity, uniform, which the figure does "
                       "not show (it shows loss.name, noise.pos_ratio); it would average those runs as seeds: draw "
                       "it from a sweep with one noise.pos_kind")
    with pytest.raises(UnnamedAxis, match="differ in noise.pos_ratio = 0, 0.2"):  # figure 1 does not show r
        accuracy_frame(fake_sweep())


def test_settings_fixed_by_what_the_figure_shows_pass():
    """One noise kind everywhere, τ that differs only between losses, a key older runs lack (NaN), seeds."""
    sweep = fake_sweep(**{NOISE_POS_KIND: ["uniform"] * 4 + [np.nan] * 4, "train.epochs": [20] * 8})
    frame = noise_frame(sweep, axis=NOISE_POS_RATIO)
    assert len(frame) == 16 and set(frame["seed"]) == {0, 1}
    require_named(sweep, sweep.done, [LOSS, NOISE_POS_RATIO])


def test_a_varying_setting_named_as_a_panel_passes():
    """The same store is fine for a frame that shows the noise kind (as a panel or hue): it names it."""
    sweep = fake_sweep(**{NOISE_POS_KIND: ["uniform", "popularity"] * 4})
    require_named(sweep, sweep.done, [LOSS, NOISE_POS_RATIO, NOISE_POS_KIND])
    with pytest.raises(UnnamedAxis, match="differ in noise.pos_kind"):
        require_named(sweep, sweep.done, [LOSS, NOISE_POS_RATIO])


# ---------------------------------------------------------------------------- store column names in one place
#: the store's column constants, less the metrics.json keys it copies (`store.RUN_KEYS`: the CLI reads those from
#: metrics.json itself) and its values (a status, a stop reason)
COLUMNS = {name: value for name, value in vars(store).items()
           if name.isupper() and isinstance(value, str) and name not in ("STATUS_CORRUPT", "EPOCH_CAP")
           and value not in store.RUN_KEYS}


@pytest.mark.parametrize("path", ["rankrobust/cli.py", "analysis/figures.py", "analysis/negative_share.py"])
def test_store_columns_are_not_spelled_outside_the_store(path):
    """The layers above the store index its columns through rankrobust.store's constants, not string literals."""
    code = (REPO / path).read_text()
    spelled = sorted({v for v in COLUMNS.values() if re.search(r'\[\s*"' + re.escape(v) + r'"\s*\]', code)})
    assert not spelled, f"{path} indexes {spelled} by string; use rankrobust.store's constants"
