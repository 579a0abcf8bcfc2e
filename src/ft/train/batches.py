"""The prepared rows as a torch Dataset, and the collator that pads them into batches."""

from __future__ import annotations

from typing import Any, Optional

IGNORE = -100
# A batch key the trainer pops before the forward pass: how many of the batch's token slots are real.
REAL_TOKENS = "ft_real_tokens"


class TokenizedRows:
    """Rows of a prepared Arrow table ({input_ids, labels}), read as Python lists on demand."""

    def __init__(self, table: Any) -> None:
        self.input_ids = table.column("input_ids")
        self.labels = table.column("labels")
        self.lengths = [int(n) for n in self.input_ids.combine_chunks().value_lengths().to_numpy()]

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids[i].as_py(), "labels": self.labels[i].as_py()}


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
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, REAL_TOKENS: mask.sum()}


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

    No attention mask: the attention sees the rows through the position ids (per-row sdpa/eager or
    flash-attn varlen). The first label of every row is IGNORE, so no row learns to predict the next
    row's first token. `pad_to` pads the sequence (e.g. to micro_batch_size × sequence_len) with a
    separate all-ignored row.
    """

    def __init__(self, pad_id: int, pad_to: Optional[int] = None) -> None:
        self.pad_id, self.pad_to = pad_id, pad_to

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        real = 0
        for item in items:
            for row in item["rows"]:
                n = len(row["input_ids"])
                ids += row["input_ids"]
                labels += [IGNORE] + row["labels"][1:]
                positions += range(n)
                real += n
        if self.pad_to and len(ids) < self.pad_to:
            extra = self.pad_to - len(ids)
            ids += [self.pad_id] * extra
            labels += [IGNORE] * extra
            positions += range(extra)
        return {
            "input_ids": torch.tensor([ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]),
            REAL_TOKENS: torch.tensor(real),
        }
