"""`ft preprocess`: tokenize the datasets once into the prepared cache that `ft train` reuses."""

from __future__ import annotations

import sys

from typing import Any

from ft.config import FtConfig


def prepare_data(cfg: FtConfig, tokenizer: Any = None) -> Any:
    """The prepared rows of the config's datasets (ft.data.prepare), from its cache when they are there."""
    from ft.data.prepare import prepare

    return prepare(cfg.data, cfg.model, cfg.training.seed, cfg.prepared_dir, tokenizer)


def teacher_cache(cfg: FtConfig, prepared: Any, tokenizer: Any, vocab: int) -> Any:
    """The distillation teacher's cached top-k for the prepared rows (kd_cache): found, or computed now with the
    teacher loaded for it and let go after (a run stopped part-way keeps its finished shards)."""
    import logging
    import time

    from ft.model.precision import resolve_dtype
    from ft.progress import Progress
    from ft.train.distill_cache import TeacherCache, cache_key

    k = cfg.distillation
    cache = TeacherCache(prepared.path, cache_key(k, prepared.path.name, vocab, cfg.model.model_dump(mode="json")))
    splits = [(name, table) for name, table in (("train", prepared.train), ("eval", prepared.eval)) if table is not None]
    missing = [(name, table) for name, table in splits if not cache.path(name).is_file()]
    log = logging.getLogger("ft")
    if cfg.logprobs_datasets:  # the rows carry the teacher's entries: taken from the prepared data, no teacher
        for name, table in missing:
            cache.from_rows(name, table, k.kd_top_k, vocab)
        log.info("teacher top-%d from the rows' log-probabilities (logprobs_field): %s", k.kd_top_k, cache.folder)
        return cache
    if not missing:
        log.info("teacher top-%d found in cache: %s", k.kd_top_k, cache.folder)
        return cache
    from ft.model.teacher import load_teacher

    teacher = load_teacher(k, cfg.model, resolve_dtype(cfg.model), vocab)
    started = time.perf_counter()
    for name, table in missing:
        progress = Progress(len(table), f"teacher top-{k.kd_top_k} of the {name} rows")
        cache.build(name, table, teacher, vocab, k.kd_top_k, k.kd_temperature, progress)
        progress.close()
    log.info("teacher top-%d of %s computed in %.1f s: %s", k.kd_top_k, " and ".join(n for n, _ in missing),
             time.perf_counter() - started, cache.folder)
    del teacher
    return cache


def run_preprocess(cfg: FtConfig, show: int = 0) -> None:
    from ft.launch.backend import keep_caches_in

    keep_caches_in(cfg.training.output_dir)
    from ft.data.prepare import report

    prepared = prepare_data(cfg)
    print(report(prepared, cfg.data.sequence_len))
    if cfg.distillation.kd_cache or cfg.logprobs_datasets:
        from ft.model.teacher import shared_vocabulary
        from ft.tokenizer.load import load_tokenizer

        tokenizer = load_tokenizer(cfg.model)
        cache = teacher_cache(cfg, prepared, tokenizer, shared_vocabulary(cfg.distillation, tokenizer, cfg.model.trust_remote_code))
        print(f"teacher top-{cfg.distillation.kd_top_k} log-probabilities: {cache.folder}")
    if show:
        from ft.data.show import show_examples
        from ft.tokenizer.load import load_tokenizer

        print(show_examples(prepared.train, load_tokenizer(cfg.model), show, colour=sys.stdout.isatty()))
