"""`ft preprocess`: tokenize the datasets once into the prepared cache that `ft train` reuses."""

from __future__ import annotations

import sys

from typing import Any

from ft.config import FtConfig


def prepare_data(cfg: FtConfig, tokenizer: Any = None) -> Any:
    """The prepared rows of the config's datasets (ft.data.prepare), from its cache when they are there."""
    from ft.data.prepare import prepare

    return prepare(cfg.data, cfg.model, cfg.training.seed, cfg.prepared_dir, tokenizer)


def run_preprocess(cfg: FtConfig, show: int = 0) -> None:
    from ft.launch.backend import keep_caches_in

    keep_caches_in(cfg.training.output_dir)
    from ft.data.prepare import report

    prepared = prepare_data(cfg)
    print(report(prepared, cfg.data.sequence_len))
    if show:
        from ft.data.show import show_examples
        from ft.tokenizer.load import load_tokenizer

        print(show_examples(prepared.train, load_tokenizer(cfg.model), show, colour=sys.stdout.isatty()))
