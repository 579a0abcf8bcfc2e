"""A distillation run's teacher top-k, computed once (`kd_cache`) and kept beside the prepared data.

For every row of the prepared table and every trained position of it (one whose next label is trained), the
teacher's k most likely tokens at temperature T and their log-probabilities (ft.train.distill.teacher_top_k),
each row run alone through the teacher. The folder's name holds a key of everything they depend on: the
prepared data (its own key), the teacher's files (ft.train.reference.folder_fingerprint), its loading
settings, k, T and the shared vocabulary, so values made for other data or another teacher are never found.
It is built a shard of rows at a time, each shard written whole and renamed into place: a run stopped (even
by SIGKILL) and started again keeps the finished shards and computes the rest, to the same values.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Optional

from ft.config.distillation import DistillationConfig
from ft.data.labels import IGNORE

SHARD_ROWS = 256


def cache_key(k: DistillationConfig, data_key: str, vocab: int, model_section: dict[str, Any]) -> str:
    from ft.train.reference import folder_fingerprint

    inputs = {"data": data_key, "teacher_files": folder_fingerprint(k.teacher_model) if k.teacher_model else "the rows'",
              "vocab": vocab,
              "teacher": {key: getattr(k, key) for key in ("teacher_model", "teacher_load_in_4bit", "teacher_load_in_8bit",
                                                            "teacher_dtype", "teacher_attn_implementation", "kd_top_k",
                                                            "kd_temperature")},
              "precision": {key: model_section.get(key) for key in ("bf16", "fp16")}}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:20]


def trained_positions(labels: list[int]) -> list[int]:
    """The positions whose next token is trained: where the loss compares the two distributions."""
    return [j for j in range(len(labels) - 1) if labels[j + 1] != IGNORE]


class TeacherCache:
    def __init__(self, prepared: Path, key: str) -> None:
        self.folder = prepared / f"teacher-{key}"
        self._loaded: dict[str, tuple[Any, Any, Any]] = {}

    def path(self, split: str) -> Path:
        return self.folder / f"{split}.arrow"

    def build(self, split: str, table: Any, teacher: Any, vocab: int, top_k: int, temperature: float,
              progress: Optional[Any] = None) -> bool:
        """Compute what is missing for `split` (a prepared Arrow table); True when anything was computed."""
        if self.path(split).is_file():
            return False
        import torch

        from ft.train.distill import teacher_logits, teacher_top_k
        from ft.train.loss import catch_hidden_states

        shards = self.folder / f".{split}-shards"
        shards.mkdir(parents=True, exist_ok=True)
        ids_column, labels_column = table.column("input_ids"), table.column("labels")
        device = next(teacher.parameters()).device
        softcap = getattr(teacher.config.get_text_config(), "final_logit_softcapping", None)
        for start in range(0, len(table), SHARD_ROWS):
            done = shards / f"{start:09d}.arrow"
            if done.is_file():
                if progress is not None:
                    progress.advance(min(SHARD_ROWS, len(table) - start))
                continue
            rows_ids, rows_logp = [], []
            for i in range(start, min(start + SHARD_ROWS, len(table))):
                labels = labels_column[i].as_py()
                keep = trained_positions(labels)
                if not keep:
                    rows_ids.append([]), rows_logp.append([])
                    continue
                ids = torch.tensor([ids_column[i].as_py()], device=device)
                with torch.no_grad(), catch_hidden_states(teacher) as hidden:
                    teacher(input_ids=ids, logits_to_keep=1)
                    states = hidden.value[0, keep]
                    top_ids, top_logp = teacher_top_k(teacher_logits(states, teacher.get_output_embeddings(), softcap)[:, :vocab],
                                                      temperature, top_k)
                rows_ids.append(top_ids.to(torch.int32).cpu().reshape(-1).tolist())
                rows_logp.append(top_logp.float().cpu().reshape(-1).tolist())
            _write(done, rows_ids, rows_logp)
            if progress is not None:
                progress.advance(min(SHARD_ROWS, len(table) - start))
        _concatenate(sorted(shards.glob("*.arrow")), self.path(split))
        shutil.rmtree(shards, ignore_errors=True)
        return True

    def from_rows(self, split: str, table: Any, top_k: int, vocab: int) -> bool:
        """The cache of `split` from the teacher's entries the prepared rows carry (logprobs_field): the first
        `top_k` of each trained position. True when it was written now."""
        if self.path(split).is_file():
            return False
        from ft.errors import DataError

        counts, ids, logp = (table.column(c).to_pylist() for c in ("teacher_counts", "teacher_ids", "teacher_logp"))
        rows_ids, rows_logp = [], []
        for row, (row_counts, row_ids, row_logp) in enumerate(zip(counts, ids, logp)):
            kept_ids: list[int] = []
            kept_logp: list[float] = []
            at = 0
            for n in row_counts:
                if n < top_k:
                    raise DataError(f"{split} row {row}: a position has {n} teacher entries in `logprobs_field`, fewer "
                                    f"than kd_top_k {top_k}; lower kd_top_k")
                kept_ids += row_ids[at: at + top_k]
                kept_logp += row_logp[at: at + top_k]
                at += n
            if kept_ids and max(kept_ids) >= vocab:
                raise DataError(f"{split} row {row}: `logprobs_field` names token id {max(kept_ids)}, beyond the "
                                f"tokenizer's {vocab} tokens: the log-probabilities were made with another tokenizer")
            rows_ids.append(kept_ids)
            rows_logp.append(kept_logp)
        self.folder.mkdir(parents=True, exist_ok=True)
        _write(self.path(split), rows_ids, rows_logp)
        return True

    def load(self, split: str) -> tuple[Any, Any, Any]:
        """(first flat position of each row, ids, log-probabilities) of a split, read once."""
        if split not in self._loaded:
            import numpy as np
            import pyarrow as pa
            import torch

            table = pa.ipc.open_file(pa.memory_map(str(self.path(split)))).read_all()
            ids, logp = table.column("ids").combine_chunks(), table.column("logp").combine_chunks()
            offsets = ids.offsets.to_numpy()
            flat_ids = torch.from_numpy(np.array(ids.values.to_numpy(zero_copy_only=False), dtype=np.int64))
            flat_logp = torch.from_numpy(np.array(logp.values.to_numpy(zero_copy_only=False), dtype=np.float32))
            self._loaded[split] = (offsets, flat_ids, flat_logp)
        return self._loaded[split]

    def for_batch(self, split: str, rows: Any, labels: Any, top_k: int) -> tuple[Any, Any]:
        """The cached (ids, log-probabilities) of a batch's trained positions, in the order the loss takes them:
        row after row (a flattened batch lays its rows end to end; a padded one has a row per line)."""
        import torch

        offsets, flat_ids, flat_logp = self.load(split)
        parts = [slice(int(offsets[r]), int(offsets[r + 1])) for r in rows.tolist()]
        ids = torch.cat([flat_ids[p] for p in parts]).view(-1, top_k).to(labels.device)
        logp = torch.cat([flat_logp[p] for p in parts]).view(-1, top_k).to(labels.device)
        if ids.shape[0] != int((labels[:, 1:] != IGNORE).sum()):
            raise RuntimeError("the cached teacher values do not match this batch's trained positions")
        return ids, logp


def _write(path: Path, ids: list[list[int]], logp: list[list[float]]) -> None:
    import pyarrow as pa

    table = pa.table({"ids": pa.array(ids, type=pa.list_(pa.int32())), "logp": pa.array(logp, type=pa.list_(pa.float32()))})
    tmp = path.with_name(f".{path.name}.tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    tmp.rename(path)


def _concatenate(parts: list[Path], target: Path) -> None:
    import pyarrow as pa

    tables = [pa.ipc.open_file(pa.memory_map(str(p))).read_all() for p in parts]
    table = pa.concat_tables(tables) if tables else pa.table({"ids": pa.array([], type=pa.list_(pa.int32())),
                                                             "logp": pa.array([], type=pa.list_(pa.float32()))})
    tmp = target.with_name(f".{target.name}.tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    tmp.rename(target)
