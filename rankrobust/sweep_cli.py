"""Subcommands for sweeps, result stores and figures (filled in by the sweep module)."""
from __future__ import annotations

import argparse
from typing import Callable


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``sweep``, ``results`` and ``figures`` on the main parser."""


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {}
