"""`ft preprocess`: tokenize the datasets once into the prepared cache that `ft train` reuses."""

from __future__ import annotations

import sys

from ft.config import FtConfig


def run_preprocess(cfg: FtConfig, show: int = 0) -> None:
    from ft.data.prepare import prepare, report

    prepared = prepare(cfg)
    print(report(prepared, cfg.data.sequence_len))
    if show:
        from ft.data.show import show_examples
        from ft.model.tokenizer import load_tokenizer

        print(show_examples(prepared.train, load_tokenizer(cfg.model), show, colour=sys.stdout.isatty()))
