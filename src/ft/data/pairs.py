"""Preference pairs tokenized: each pair becomes two rows, its chosen text then its rejected text.

The two texts go through ft.data.tokenize exactly as supervised rows do (BOS once, EOS after the answer where
the format does not end its turns itself, labels from the trained segments); here the pair is kept whole: when
either text is longer than sequence_len the pair is dropped, or both are truncated
(`excess_length_strategy`), and a prompt that leaves no room for an answer is an error naming the row. In the
prepared table a pair is rows 2k and 2k+1, and shuffling and the evaluation split move pairs, never rows.
"""

from __future__ import annotations

from typing import Any, Mapping

from ft.config.data import DataConfig, DatasetConfig
from ft.data.formats import FORMATS, Format, Segment
from ft.data.labels import IGNORE
from ft.data.tokenize import RowTokenizer, Tokenized
from ft.errors import DataError


def is_pair_format(ds: DatasetConfig) -> bool:
    return isinstance(ds.type, str) and ds.type in FORMATS and getattr(FORMATS.get(ds.type), "pairs", False)


class _Side(Format):
    """One answer of a pair format's rows, as a format of its own."""

    def __init__(self, pair_format: Any, index: int) -> None:
        super().__init__(pair_format.ds, pair_format.tokenizer)
        self.pair_format, self.index = pair_format, index
        self.append_eos = pair_format.append_eos  # type: ignore[misc]

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:
        return self.pair_format.pair(row)[self.index]


class PairTokenizer:
    """Tokenizes the preference rows of one dataset entry."""

    def __init__(self, ds: DatasetConfig, data: DataConfig, tokenizer: Any, bos: bool) -> None:
        self.data = data
        # lengths are settled per pair below, and only the answers are ever trained
        unlimited = data.model_copy(update={"sequence_len": 1 << 40, "train_on_inputs": False, "min_sample_len": None})
        self.sides = [RowTokenizer(ds, unlimited, tokenizer, bos) for _ in range(2)]
        for index, side in enumerate(self.sides):
            side.fmt = _Side(side.fmt, index)

    def __call__(self, rows: list[dict[str, Any]], first_index: int = 0, progress: Any = None) -> Tokenized:
        fmt = self.sides[0].fmt.pair_format  # type: ignore[union-attr]
        kto = getattr(fmt, "kto", False)
        if kto:  # each row's second text: its prompt with the answer of the row before (ft.data.formats.kto)
            rows = fmt.mismatched(rows)
            signs = []
            for i, row in enumerate(rows):
                try:
                    signs.append(fmt.desirable(row))
                except DataError as exc:
                    raise DataError(f"{self.sides[0].where(first_index + i, row)}: {exc}") from None
        chosen, rejected = (side(rows, first_index) for side in self.sides)
        if not len(chosen.input_ids) == len(rejected.input_ids) == len(rows):  # every answer is non-empty text
            raise AssertionError("a preference row lost one of its texts")
        out = Tokenized()
        c, limit = out.counts, self.data.sequence_len
        for i, texts in enumerate(zip(chosen.input_ids, chosen.labels, rejected.input_ids, rejected.labels)):
            pair = [(texts[0], texts[1]), (texts[2], texts[3])]
            c.rows += 1
            if max(len(ids) for ids, _ in pair) > limit:
                prompt = next((j for j, label in enumerate(pair[0][1]) if label != IGNORE), len(pair[0][1]))
                if prompt >= limit:
                    raise DataError(f"{self.sides[0].where(first_index + i, rows[i])}: the prompt alone is {prompt} tokens, "
                                    f"which leaves no room for an answer within sequence_len ({limit}); raise sequence_len "
                                    "or shorten the prompt")
                if self.data.excess_length_strategy == "drop":
                    c.dropped_long += 1
                    continue
                pair = [(ids[:limit], labels[:limit]) for ids, labels in pair]
                c.truncated += 1
            if kto:
                out.desirable = (out.desirable or []) + [signs[i]] * 2
            for ids, labels in pair:
                out.input_ids.append(ids)
                out.labels.append(labels)
                c.tokens += len(ids)
                c.trained += sum(label != IGNORE for label in labels)
            c.kept += 1
        if progress is not None:
            progress.advance(len(rows))
        return out
