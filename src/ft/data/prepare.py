"""The prepared-dataset cache behind `ft preprocess` and `ft train`.

The cache key covers everything that changes the result: every dataset option, the content of local
data files, sequence_len and the masking options, the split and shuffle settings, and the tokenizer (its
files' content, special tokens, added tokens, chat template). Computing it loads no tokenizer and no
torch, so a cache hit costs little more than reading the Arrow files. A result is written to a temporary
folder and renamed into place, so a failed run never leaves a partial cache; a file lock makes one
process prepare while the others (under `accelerate launch`) wait and then read the same files.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import random
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from ft.config.data import DataConfig, DatasetConfig
from ft.config.model import ModelConfig
from ft.data.labels import count_trained
from ft.data.sources import load_rows, source_fingerprint
from ft.data.pairs import PairTokenizer, is_pair_format
from ft.data.tokenize import Counts, RowTokenizer, Tokenized
from ft.errors import DataError
from ft.progress import Progress
from ft.tokenizer.load import adds_bos, load_tokenizer, tokenizer_fingerprint

PROGRESS_ROWS = 50_000  # datasets from this many rows show their tokenizing progress

# Bump when the tokenized output of the same inputs changes, so old caches are not reused.
PIPELINE_VERSION = 1


@dataclass
class Prepared:
    path: Path
    train: Any  # pyarrow.Table with input_ids and labels (list<int32>)
    eval: Any  # pyarrow.Table or None
    stats: dict[str, Any]
    hit: bool


def cache_inputs(d: DataConfig, m: ModelConfig, seed: int) -> dict[str, Any]:
    """Everything the prepared rows depend on: the data section, the tokenizer (from the model section), the seed."""
    return {
        "version": PIPELINE_VERSION,
        "datasets": [{**ds.model_dump(mode="json"), "content": source_fingerprint(ds)} for ds in d.datasets],
        "test_datasets": [{**ds.model_dump(mode="json"), "content": source_fingerprint(ds)} for ds in d.test_datasets],
        "sequence_len": d.sequence_len,
        "train_on_inputs": d.train_on_inputs,
        "excess_length_strategy": d.excess_length_strategy,
        "min_sample_len": d.min_sample_len,
        "val_set_size": d.val_set_size,
        "shuffle": d.shuffle_merged_datasets and not d.curriculum_sampling,
        "deduplicate": d.dataset_exact_deduplication,
        "seed": seed,
        "tokenizer": tokenizer_fingerprint(m),
    }


def cache_key(inputs: dict[str, Any]) -> str:
    blob = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare(d: DataConfig, m: ModelConfig, seed: int, root: Path, tokenizer: Any = None) -> Prepared:
    """The tokenized train (and eval) split: from the cache under `root` when it holds them, else built and
    cached there. The tokenizer is loaded from the model section only when the cache misses."""
    inputs = cache_inputs(d, m, seed)
    key = cache_key(inputs)
    target = root / key
    with _locked(root / f"{key}.lock"):
        if (target / "meta.json").is_file():
            return _read(target, hit=True)
        started = time.perf_counter()
        train, evaluation, stats = build(d, seed, tokenizer or load_tokenizer(m))
        stats["seconds"] = round(time.perf_counter() - started, 2)
        stats["key"] = key
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
        try:
            _write(tmp / "train.arrow", train)
            if evaluation is not None:
                _write(tmp / "eval.arrow", evaluation)
            (tmp / "inputs.json").write_text(json.dumps(inputs, indent=1, default=str))
            (tmp / "meta.json").write_text(json.dumps(stats, indent=1))
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _read(target, hit=False)


def cached(d: DataConfig, m: ModelConfig, seed: int, root: Path) -> Prepared | None:
    """The prepared rows when `ft preprocess` (or a run) left them in the cache, else None; never builds.
    Computing the key reads the data files and the tokenizer's files, loads neither."""
    try:
        target = root / cache_key(cache_inputs(d, m, seed))
    except (OSError, DataError, ValueError):
        return None
    return _read(target, hit=True) if (target / "meta.json").is_file() else None


def build(d: DataConfig, seed: int, tokenizer: Any) -> tuple[Tokenized, Tokenized | None, dict[str, Any]]:
    """Tokenize every dataset, shuffle, split off the eval rows; no files are written here."""
    bos = adds_bos(tokenizer)
    train = _tokenize_all(d.datasets, d, tokenizer, bos)
    evaluation = _tokenize_all(d.test_datasets, d, tokenizer, bos) if d.test_datasets else None
    # preference pairs are rows 2k and 2k+1 (ft.data.pairs): shuffled and split as pairs
    width = 2 if any(map(is_pair_format, d.datasets)) else 1
    order = list(range(len(train.input_ids) // width))
    duplicates = 0
    if d.dataset_exact_deduplication:
        order, evaluation, duplicates = _deduplicate(order, train, evaluation, width)
    if d.shuffle_merged_datasets and not d.curriculum_sampling:
        random.Random(seed).shuffle(order)
    if d.val_set_size:
        n_eval = int(d.val_set_size) if d.val_set_size >= 1 else max(1, math.floor(len(order) * d.val_set_size))
        if n_eval >= len(order):
            raise DataError(f"val_set_size {d.val_set_size:g} takes all {len(order)} usable rows; nothing is left to train on")
        evaluation = _subset(train, _rows(order[:n_eval], width))
        order = order[n_eval:]
    train = _subset(train, _rows(order, width))
    if not train.input_ids:
        raise DataError("no training rows are left after filtering; see the counts above (sequence_len too small?)")
    stats = {"train": _split_stats(train), "eval": _split_stats(evaluation) if evaluation else None,
             "read": asdict(_counts(d, train, evaluation))}
    if d.dataset_exact_deduplication:
        stats["duplicates"] = duplicates
    return train, evaluation, stats


def _deduplicate(order: list[int], train: Tokenized, evaluation: Tokenized | None,
                 width: int) -> tuple[list[int], Tokenized | None, int]:
    """dataset_exact_deduplication: the first of each set of identical items (a row's tokens and labels, or a
    pair's), and the test rows that are not training items; with how many were left out."""
    def item(t: Tokenized, i: int) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(seq) for k in range(width) for seq in (t.input_ids[i * width + k], t.labels[i * width + k]))

    seen: set[tuple[tuple[int, ...], ...]] = set()
    kept = []
    for i in order:
        key = item(train, i)
        if key not in seen:
            seen.add(key)
            kept.append(i)
    dropped = len(order) - len(kept)
    if evaluation is not None:
        tests = [i for i in range(len(evaluation.input_ids) // width) if item(evaluation, i) not in seen]
        dropped += len(evaluation.input_ids) // width - len(tests)
        evaluation = _subset(evaluation, _rows(tests, width))
    return kept, evaluation, dropped


def _tokenize_all(entries: tuple[DatasetConfig, ...], d: DataConfig, tokenizer: Any, bos: bool) -> Tokenized:
    merged = Tokenized()
    for ds in entries:
        rows = load_rows(ds)
        if not rows:
            raise DataError(f"dataset `{ds.path}` (split {ds.split}) has no rows")
        # a progress line (a bar on a terminal) where tokenizing takes a while: a large dataset
        progress = Progress(len(rows), f"tokenizing {ds.path}") if len(rows) >= PROGRESS_ROWS else None
        tokenize = PairTokenizer if is_pair_format(ds) else RowTokenizer
        part = tokenize(ds, d, tokenizer, bos)(rows, progress=progress)
        if progress is not None:
            progress.close()
        if not part.input_ids:
            raise DataError(
                f"dataset `{ds.path}`: all {part.counts.rows} rows were dropped "
                f"({part.counts.dropped_long} longer than sequence_len {d.sequence_len}, "
                f"{part.counts.dropped_no_target} with nothing to train on"
                + (f", {part.counts.dropped_short} shorter than min_sample_len {d.min_sample_len}" if part.counts.dropped_short else "")
                + ")"
            )
        merged.input_ids += part.input_ids
        merged.labels += part.labels
        merged.counts.add(part.counts)
        if part.teacher is not None:  # a teacher's log-probabilities carried by the rows (every entry has them)
            merged.teacher = (merged.teacher or []) + part.teacher
        if part.desirable is not None:  # KTO rows: whether each pair's answer is desirable
            merged.desirable = (merged.desirable or []) + part.desirable
        if part.rewards_read is not None:  # rl: grpo's prompts: what their reward functions read
            merged.rewards_read = (merged.rewards_read or []) + part.rewards_read
    return merged


def _rows(order: list[int], width: int) -> list[int]:
    """The rows of the items (rows, or pairs of rows) in `order`."""
    return [item * width + k for item in order for k in range(width)]


def _subset(t: Tokenized, order: list[int]) -> Tokenized:
    teacher = [t.teacher[i] for i in order] if t.teacher is not None else None
    desirable = [t.desirable[i] for i in order] if t.desirable is not None else None
    read = [t.rewards_read[i] for i in order] if t.rewards_read is not None else None
    return Tokenized([t.input_ids[i] for i in order], [t.labels[i] for i in order], t.counts, teacher, desirable, read)


def _counts(d: DataConfig, train: Tokenized, evaluation: Tokenized | None) -> Counts:
    total = Counts()
    total.add(train.counts)
    if evaluation is not None and d.test_datasets:
        total.add(evaluation.counts)
    return total


def _split_stats(t: Tokenized) -> dict[str, int]:
    tokens = sum(map(len, t.input_ids))
    trained = sum(map(count_trained, t.labels))
    return {"rows": len(t.input_ids), "tokens": tokens, "trained_tokens": trained}


def _write(path: Path, t: Tokenized) -> None:
    import itertools

    import numpy as np
    import pyarrow as pa

    def column(lists: list[list[int]]) -> Any:
        lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        offsets = np.zeros(len(lists) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int32, count=int(offsets[-1]))
        # from_buffers, not pa.array(numpy): the latter imports pandas (0.6 s) to check for pandas types
        values = pa.Array.from_buffers(pa.int32(), len(flat), [None, pa.py_buffer(flat)])
        offset_array = pa.Array.from_buffers(pa.int32(), len(offsets), [None, pa.py_buffer(offsets)])
        return pa.ListArray.from_arrays(offset_array, values)

    columns = {"input_ids": column(t.input_ids), "labels": column(t.labels)}
    if t.teacher is not None:  # logprobs_field: the teacher's entries per trained position (ft.data.teacher_logprobs)
        columns["teacher_counts"] = column([c for c, _, _ in t.teacher])
        columns["teacher_ids"] = column([i for _, i, _ in t.teacher])
        columns["teacher_logp"] = pa.array([lp for _, _, lp in t.teacher], type=pa.list_(pa.float32()))
    if t.desirable is not None:  # rl: kto
        columns["desirable"] = pa.array(t.desirable, type=pa.int8())
    if t.rewards_read is not None:  # rl: grpo
        columns["rewards_read"] = pa.array(t.rewards_read, type=pa.string())
    table = pa.table(columns)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _read(target: Path, hit: bool) -> Prepared:
    import pyarrow as pa

    def table(name: str) -> Any:
        path = target / name
        return pa.ipc.open_file(pa.memory_map(str(path))).read_all() if path.is_file() else None

    stats = json.loads((target / "meta.json").read_text())
    return Prepared(target, table("train.arrow"), table("eval.arrow"), stats, hit)


def report(p: Prepared, sequence_len: int) -> str:
    """What `ft preprocess` prints: where the cache is and what went into it."""
    s, read = p.stats, p.stats["read"]
    how = "found in cache" if p.hit else f"built in {s['seconds']} s"
    lines = [
        f"prepared dataset {how}: {p.path}",
        f"  rows read {read['rows']:,}: kept {read['kept']:,}, dropped {read['dropped_long']:,} longer than "
        f"sequence_len {sequence_len}, truncated {read['truncated']:,}, split into chunks {read['chunked']:,}, "
        f"dropped with nothing to train on {read['dropped_no_target']:,}"
        + (f", dropped as too short (min_sample_len) {read['dropped_short']:,}" if read.get("dropped_short") else ""),
    ]
    if "duplicates" in s:
        lines.append(f"  exact duplicates left out (dataset_exact_deduplication): {s['duplicates']:,}")
    for split in ("train", "eval"):
        if s.get(split):
            x = s[split]
            lines.append(f"  {split}: {x['rows']:,} sequences, {x['tokens']:,} tokens, {x['trained_tokens']:,} trained tokens")
    return "\n".join(lines)
