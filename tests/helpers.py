"""Small builders shared by the data tests."""

from __future__ import annotations

from typing import Any

from ft.config.data import DataConfig, DatasetConfig
from ft.data.formats import build_format
from ft.data.labels import IGNORE
from ft.data.tokenize import RowTokenizer, Tokenized
from ft.tokenizer.load import adds_bos


def dataset(type_: Any = "alpaca", **kw: Any) -> DatasetConfig:
    return DatasetConfig.model_validate({"path": "rows.jsonl", "type": type_, **kw})


def data_cfg(ds: DatasetConfig, **kw: Any) -> DataConfig:
    return DataConfig.model_validate({"datasets": [ds.model_dump()], **kw})


def tokenize(rows: list[dict], tok: Any, type_: Any = "alpaca", ds_kw: dict | None = None, **data_kw: Any) -> Tokenized:
    ds = dataset(type_, **(ds_kw or {}))
    return RowTokenizer(ds, data_cfg(ds, **data_kw), tok, adds_bos(tok))(rows)


def render(rows: list[dict], tok: Any, type_: Any = "alpaca", **ds_kw: Any) -> list[list]:
    fmt = build_format(dataset(type_, **ds_kw), tok)
    return [fmt.segments(r) for r in rows]


def trained_text(ids: list[int], labels: list[int], tok: Any) -> str:
    return tok.decode([i for i, l in zip(ids, labels) if l != IGNORE])
