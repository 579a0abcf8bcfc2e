"""The prepared rows as a torch Dataset, and the collator that pads them into batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

from ft.config.data import DataConfig
from ft.data.labels import IGNORE, without_first
from ft.data.packing import PACKED, PADDED, efficiency, pack
from ft.model.packed_attention import boundaries

log = logging.getLogger("ft")

# A batch key the trainer pops before the forward pass: how many of the batch's token slots are real. A
# Python int, counted on the host by the collator: the batch's tensors go to the GPU, and reading a count back
# from there would wait for the device every step.
REAL_TOKENS = "ft_real_tokens"
# A batch key of the places of its rows in the prepared table, in the order they are laid out (only when the
# sets are built `with_rows`: values cached per row, such as a distillation teacher's).
ROW_IDS = "ft_row_ids"


class TokenizedRows:
    """Rows of a prepared Arrow table ({input_ids, labels}), read as Python lists on demand."""

    def __init__(self, table: Any, with_rows: bool = False) -> None:
        self.with_rows = with_rows
        self.input_ids = table.column("input_ids")
        self.labels = table.column("labels")
        self.desirable = table.column("desirable") if "desirable" in table.column_names else None  # rl: kto
        self.rewards_read = table.column("rewards_read") if "rewards_read" in table.column_names else None  # rl: grpo
        self.lengths = [int(n) for n in self.input_ids.combine_chunks().value_lengths().to_numpy()]

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {"input_ids": self.input_ids[i].as_py(), "labels": self.labels[i].as_py()}
        if self.desirable is not None:
            item["desirable"] = self.desirable[i].as_py()
        if self.rewards_read is not None:
            item["rewards_read"] = self.rewards_read[i].as_py()
        return {**item, "row": i} if self.with_rows else item


class PadCollator:
    """Pads a batch to its longest row (or to a fixed length); padding is never trained.

    The attention mask marks real tokens; labels of padding are IGNORE, so a pad token equal to EOS does
    not hide the real EOS from the loss.
    """

    def __init__(self, pad_id: int, pad_to: Optional[int] = None, multiple_of: int = 1) -> None:
        self.pad_id, self.pad_to, self.multiple_of = pad_id, pad_to, multiple_of

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        longest = max(len(r["input_ids"]) for r in rows)
        width = self.pad_to or -(-longest // self.multiple_of) * self.multiple_of
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            labels[i, :n] = torch.tensor(r["labels"])
            mask[i, :n] = 1
        out = {"input_ids": ids, "labels": labels, "attention_mask": mask, REAL_TOKENS: int(mask.sum())}
        if "row" in rows[0]:
            out[ROW_IDS] = torch.tensor([r["row"] for r in rows])
        if "rewards_read" in rows[0]:  # rl: grpo: each prompt's columns, for its reward functions
            import json

            out[REWARDS_READ] = [json.loads(r["rewards_read"]) for r in rows]
        return out


REWARDS_READ = "ft_rewards_read"  # rl: grpo: the batch key of its prompts' columns (a list of mappings)


class PackedBins:
    """Bins of rows (from ft.data.packing.pack); an item is one bin, a batch is micro_batch_size bins."""

    def __init__(self, rows: TokenizedRows, bins: list[list[int]]) -> None:
        self.rows, self.bins = rows, bins

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"rows": [self.rows[j] for j in self.bins[i]]}


class PackedCollator:
    """Lays the rows of a batch's bins end to end in one sequence, position ids restarting per row.

    No attention mask: the attention (ft.model.packed_attention, or flash-attn's varlen) sees the rows through
    the boundaries computed here once per batch (cumulative lengths and the longest row). Each row's first
    label is ignored (ft.data.labels), so no row learns to predict the next row's first token. `pad_to` pads the sequence (e.g. to micro_batch_size × sequence_len) with a
    separate all-ignored row.
    """

    def __init__(self, pad_id: int, pad_to: Optional[int] = None) -> None:
        self.pad_id, self.pad_to = pad_id, pad_to

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        lengths: list[int] = []
        for item in items:
            for row in item["rows"]:
                n = len(row["input_ids"])
                ids += row["input_ids"]
                labels += without_first(row["labels"])
                positions += range(n)
                lengths.append(n)
        real = len(ids)
        if self.pad_to and len(ids) < self.pad_to:
            extra = self.pad_to - len(ids)
            ids += [self.pad_id] * extra
            labels += [IGNORE] * extra
            positions += range(extra)
            lengths.append(extra)
        out = {
            "input_ids": torch.tensor([ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]),
            **boundaries(lengths),
            REAL_TOKENS: real,
        }
        if items and items[0]["rows"] and "row" in items[0]["rows"][0]:
            out[ROW_IDS] = torch.tensor([row["row"] for item in items for row in item["rows"]])
        return out


@dataclass(frozen=True)
class TrainingSets:
    """What the Trainer iterates: the training items (rows or bins), the evaluation items, the collator."""

    train: Any
    eval: Any
    collator: Any


def training_sets(d: DataConfig, layout: str, micro_batch_size: int, prepared: Any, pad_id: int, on_gpu: bool,
                  with_rows: bool = False) -> TrainingSets:
    """Rows, bins of rows (packed) or one-row bins (padding-free), and the collator that batches them;
    `with_rows`: each batch names its rows (ROW_IDS)."""
    train: Any = TokenizedRows(prepared.train, with_rows)
    evaluation: Any = TokenizedRows(prepared.eval, with_rows) if prepared.eval is not None else None
    if layout == PADDED:
        collator = PadCollator(pad_id, pad_to=d.sequence_len if d.pad_to_sequence_len else None, multiple_of=8 if on_gpu else 1)
        return TrainingSets(train, evaluation, collator)
    if layout == PACKED:
        train = packed(train, d.sequence_len, "train")
        if evaluation is not None and d.eval_sample_packing is not False:
            evaluation = packed(evaluation, d.sequence_len, "eval")
    else:
        train = one_row_bins(train)
        evaluation = one_row_bins(evaluation) if evaluation is not None else None
    pad_to = d.sequence_len * micro_batch_size if d.pad_to_sequence_len else None
    return TrainingSets(train, evaluation, Switch(PackedCollator(pad_id, pad_to), PadCollator(pad_id)))


def pair_sets(layout: str, prepared: Any, pad_id: int) -> TrainingSets:
    """Preference pairs (rows 2k and 2k+1 of the prepared table, ft.data.pairs): an item is a pair, a micro batch
    of pairs is their answers end to end without padding (or padded rows, for a model that cannot take them)."""

    def pairs(table: Any) -> PairBins:
        rows = TokenizedRows(table)
        return PairBins(rows, [[k, k + 1] for k in range(0, len(rows), 2)])

    train = pairs(prepared.train)
    evaluation = pairs(prepared.eval) if prepared.eval is not None else None
    return TrainingSets(train, evaluation, PairCollator(PackedCollator(pad_id) if layout != PADDED else PairPadCollator(pad_id)))


DESIRABLE = "ft_desirable"  # rl: kto: the batch key of whether each pair's answer is desirable
PAIRS = "ft_pairs"  # the batch key of its pairs' places in the prepared table (for precomputed reference values)


class PairBins(PackedBins):
    """A pair per item (its two rows), with its place."""

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**super().__getitem__(i), "pair": i}


class PairCollator:
    """A pair collator's batch, with the places of its pairs under PAIRS."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        out = {**self.inner(items), PAIRS: torch.tensor([item["pair"] for item in items])}
        if items and "desirable" in items[0]["rows"][0]:  # rl: kto
            out[DESIRABLE] = torch.tensor([item["rows"][0]["desirable"] for item in items])
        return out


class PairPadCollator(PadCollator):
    """The rows of a batch's pairs as padded rows, in order (chosen, rejected, chosen, ...)."""

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return super().__call__([row for item in rows for row in item["rows"]])


def one_row_bins(rows: TokenizedRows) -> PackedBins:
    """Each row its own bin: a micro batch of them is its rows end to end, no padding (padding-free)."""
    return PackedBins(rows, [[i] for i in range(len(rows))])


def packed(rows: TokenizedRows, capacity: int, split: str) -> PackedBins:
    bins = pack(rows.lengths, capacity)
    log.info(
        "packing %s: %d rows into %d bins of at most %d tokens, efficiency %.3f (real tokens / bin slots)",
        split, len(rows), len(bins), capacity, efficiency(rows.lengths, bins, capacity),
    )
    return PackedBins(rows, bins)


class Switch:
    """Collates packed bins with one collator and plain rows (unpacked evaluation) with another."""

    def __init__(self, packed_collator: PackedCollator, plain: PadCollator) -> None:
        self.packed_collator, self.plain = packed_collator, plain

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return self.packed_collator(items) if "rows" in items[0] else self.plain(items)
