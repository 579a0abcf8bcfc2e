"""The one place that turns segments into input_ids and labels, and applies train_on_inputs.

A format renders a row as segments with train flags; the whole text is tokenized at once (so the tokens
are exactly what the tokenizer makes of the text, chat templates included), and each token is trained
when its characters overlap a trained segment. BOS is added once, when the tokenizer adds it to plain
text and the text does not already start with it; EOS follows the output and is trained with it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from ft.config.data import DataConfig, DatasetConfig
from ft.data.formats import Format, Segment, build_format
from ft.data.labels import IGNORE, count_trained
from ft.data.teacher_logprobs import flatten, position_targets
from ft.errors import DataError

BATCH = 2000


@dataclass
class Counts:
    rows: int = 0
    kept: int = 0
    dropped_long: int = 0
    dropped_no_target: int = 0
    dropped_short: int = 0
    truncated: int = 0
    chunked: int = 0
    tokens: int = 0
    trained: int = 0

    def add(self, other: "Counts") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Tokenized:
    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    # rows with a logprobs_field (ft.data.teacher_logprobs): per row, for each trained position in order, how many
    # teacher entries it has, and their ids and log-probabilities laid end to end (most likely first)
    teacher: Optional[list[tuple[list[int], list[int], list[float]]]] = None
    # KTO rows (rl: kto): per row, 1 when its pair's answer is desirable, 0 when not (both rows of a pair alike)
    desirable: Optional[list[int]] = None
    # prompt rows (rl: grpo, a Python transform): per row, the columns its reward functions read, as JSON
    rewards_read: Optional[list[str]] = None


def trained_ranges(segments: Sequence[Segment], train_on_inputs: bool) -> tuple[str, list[tuple[int, int]]]:
    """The text and the character ranges the loss is taken on."""
    text = "".join(s.text for s in segments)
    if train_on_inputs:
        return text, [(0, len(text))]
    ranges, pos = [], 0
    for s in segments:
        if s.train and s.text:
            if ranges and ranges[-1][1] == pos:
                ranges[-1] = (ranges[-1][0], pos + len(s.text))
            else:
                ranges.append((pos, pos + len(s.text)))
        pos += len(s.text)
    return text, ranges


def build_labels(ids: list[int], offsets: list[tuple[int, int]], ranges: list[tuple[int, int]]) -> list[int]:
    """Labels for `ids`: the id where the token's characters overlap a trained range, else IGNORE."""
    labels = [IGNORE] * len(ids)
    for a, b in ranges:
        first = bisect_right(offsets, a, key=lambda o: max(o[1], o[0] + 1))  # first token ending after a
        last = bisect_left(offsets, b, key=lambda o: o[0])  # first token starting at or after b
        labels[first:last] = ids[first:last]
    return labels


class RowTokenizer:
    """Tokenizes the rows of one dataset entry with its format, under the data section's rules."""

    def __init__(self, ds: DatasetConfig, data: DataConfig, tokenizer: Any, bos: bool, fmt: Format | None = None) -> None:
        """`fmt`: a format to render with instead of the entry's own (multiple-choice scoring's prompt + choice)."""
        self.ds, self.data, self.tok = ds, data, tokenizer
        self.fmt: Format | None = fmt or (build_format(ds, tokenizer) if ds.type is not None else None)
        self.bos = bos and not (self.fmt and not self.fmt.append_eos)  # chat templates write their own BOS
        self.backend = tokenizer.backend_tokenizer

    def where(self, index: int, row: Mapping[str, Any]) -> str:
        return f"dataset `{self.ds.path}` row {index} (columns: {', '.join(map(str, row)) or 'none'})"

    def __call__(self, rows: list[dict[str, Any]], first_index: int = 0, progress: Any = None) -> Tokenized:
        """`progress` (ft.progress.Progress), when given, advances by each batch of rows done."""
        out = Tokenized()
        if self.fmt is None:
            for i, row in enumerate(rows):
                self._fit(first_index + i, row, *self._pretokenized(first_index + i, row), out)
            return out
        if getattr(self.fmt, "steps", False):  # class labels on some tokens (stepwise_supervised), not trained text
            encode = lambda text: self.tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
            for i, row in enumerate(rows):
                try:
                    ids, labels = self.fmt.class_labels(row, encode, self.tok.bos_token_id)  # type: ignore[attr-defined]
                except DataError as exc:
                    raise DataError(f"{self.where(first_index + i, row)}: {exc}") from None
                self._fit(first_index + i, row, ids, labels, out)
            return out
        # The Rust tokenizer releases the GIL: batch k is encoded in a worker thread while Python renders
        # batch k+1 and builds the labels of batch k-1.
        import gc
        from concurrent.futures import ThreadPoolExecutor

        pending = None
        gc_was_on = gc.isenabled()
        gc.disable()  # millions of small lists and no cycles: the cyclic GC would only rescan them
        try:
            with ThreadPoolExecutor(max_workers=1) as pool:
                for start in range(0, len(rows), BATCH):
                    batch = rows[start : start + BATCH]
                    texts, ranges, ends, columns = self._render(batch, first_index + start)
                    encoding = pool.submit(self.backend.encode_batch, texts, add_special_tokens=False)
                    if pending is not None:
                        self._finish(*pending, out)
                        if progress is not None:
                            progress.advance(len(pending[3]))
                    pending = (encoding, ranges, ends, batch, first_index + start, columns)
                if pending is not None:
                    self._finish(*pending, out)
                    if progress is not None:
                        progress.advance(len(pending[3]))
        finally:
            if gc_was_on:
                gc.enable()
        return out

    def _render(self, batch: list[dict[str, Any]], first: int) -> tuple[list[str], list[Any], list[bool], list[Any]]:
        """Texts, trained ranges, whether each ends trained, and (rl: grpo's prompts) what each row's reward
        functions read (None for other formats)."""
        assert self.fmt is not None
        texts, ranges, ends_trained, columns = [], [], [], []
        prompts = getattr(self.fmt, "prompts_only", False)
        for i, row in enumerate(batch):
            try:
                if prompts:
                    segments, read = self.fmt.prompt_and_columns(row)  # type: ignore[attr-defined]
                    columns.append(read)
                else:
                    segments = self.fmt.segments(row)
                    columns.append(None)
            except DataError as exc:
                raise DataError(f"{self.where(first + i, row)}: {exc}") from None
            text, trained = trained_ranges(segments, self.data.train_on_inputs)
            texts.append(text)
            ranges.append(trained)
            ends_trained.append(self.data.train_on_inputs or bool(segments and segments[-1].train))
        return texts, ranges, ends_trained, columns

    def _finish(self, encoding: Any, ranges: list[Any], ends: list[bool], batch: list[dict], first: int,
                columns: list[Any], out: Tokenized) -> None:
        assert self.fmt is not None
        bos_id, eos_id = self.tok.bos_token_id, self.tok.eos_token_id
        for i, (enc, trained, eos_trained) in enumerate(zip(encoding.result(), ranges, ends)):
            ids = enc.ids
            labels = build_labels(ids, enc.offsets, trained)
            if self.bos and (not ids or ids[0] != bos_id):
                ids, labels = [bos_id] + ids, [IGNORE] + labels
            if self.fmt.append_eos and eos_id is not None:
                ids, labels = ids + [eos_id], labels + [eos_id if eos_trained else IGNORE]
            targets = None
            if self.ds.logprobs_field:
                try:
                    targets = position_targets(batch[i], self.ds.logprobs_field, ids, labels)
                except DataError as exc:
                    raise DataError(f"{self.where(first + i, batch[i])}: {exc}") from None
            self._fit(first + i, batch[i], ids, labels, out, targets, columns[i])

    def _pretokenized(self, index: int, row: dict[str, Any]) -> tuple[list[int], list[int]]:
        ids = row.get("input_ids")
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise DataError(
                f"{self.where(index, row)}: no `type:` is set, so rows must hold `input_ids` (a list of token ids); "
                "set `type:` (alpaca, chat_template, completion, ...) to tokenize text"
            )
        labels = row.get("labels", ids)
        if not isinstance(labels, list) or len(labels) != len(ids):
            raise DataError(f"{self.where(index, row)}: `labels` must be a list as long as `input_ids`")
        return list(ids), list(labels)

    def _fit(self, index: int, row: dict[str, Any], ids: list[int], labels: list[int], out: Tokenized,
             targets: Optional[list[Any]] = None, columns: Any = None) -> None:
        """Apply sequence_len (split, drop or truncate), drop rows with nothing to learn, and count. `targets`:
        the teacher's entries per position (logprobs_field), cut as the row is."""
        limit, c = self.data.sequence_len, out.counts
        c.rows += 1
        pieces = [(ids, labels, 0)]
        prompts = getattr(self.fmt, "prompts_only", False)  # rl: grpo's prompts: nothing of them is trained
        if prompts and len(ids) > limit:
            c.dropped_long += 1  # a prompt is not cut: the samples continue its end
            return
        if len(ids) > limit:
            if self.fmt is not None and self.fmt.split_long:
                pieces = [(ids[i : i + limit], labels[i : i + limit], i) for i in range(0, len(ids), limit)]
                c.chunked += 1
            elif self.data.excess_length_strategy == "drop":
                c.dropped_long += 1
                return
            else:
                pieces = [(ids[:limit], labels[:limit], 0)]
                c.truncated += 1
                if all(label == IGNORE for label in pieces[0][1]):
                    raise DataError(
                        f"{self.where(index, row)}: the prompt alone is longer than sequence_len ({limit} tokens), "
                        "so truncating leaves nothing to train on; raise sequence_len or use excess_length_strategy: drop"
                    )
        kept, short = False, False
        for piece_ids, piece_labels, start in pieces:
            if self.data.min_sample_len and len(piece_ids) < self.data.min_sample_len:
                short = True
                continue
            trained = count_trained(piece_labels)
            if trained == 0 and not prompts:
                continue
            if prompts:
                import json

                if out.rewards_read is None:
                    out.rewards_read = []
                out.rewards_read.append(json.dumps(columns, default=str))
            out.input_ids.append(piece_ids)
            out.labels.append(piece_labels)
            if targets is not None:
                if out.teacher is None:
                    out.teacher = []
                out.teacher.append(flatten(targets[start : start + len(piece_ids)], piece_labels))
            c.tokens += len(piece_ids)
            c.trained += trained
            kept = True
        if kept:
            c.kept += 1
        elif short:
            c.dropped_short += 1
        else:
            c.dropped_no_target += 1
