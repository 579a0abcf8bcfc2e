"""Process-environment settings that must come before the libraries are imported; imports nothing, so that
the command line's start-up (`ft --help`) stays light."""

from __future__ import annotations

import os


def quiet_progress_bars() -> None:
    """The libraries' own progress bars (transformers' "Loading weights", "Writing model shards"; datasets')
    redraw into logs and say nothing ft does not say; a choice the user made stays theirs."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def quiet_other_ranks() -> None:
    """On every process but the first, the libraries' warnings (transformers', datasets') are said once, by the
    first process: the others show errors only."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
