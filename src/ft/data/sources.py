"""Where rows come from: local files and folders (.json, .jsonl, .csv, .parquet, .arrow) or the hub.

Every source becomes a list of plain dicts. Local JSON is parsed here, line by line, so that a broken
line is reported with its file and line number.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ft.config.data import DatasetConfig
from ft.files import file_digest
from ft.errors import DataError

SUFFIX_TYPES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}


def local_files(ds: DatasetConfig) -> list[Path] | None:
    """The local files of a dataset entry, or None when `path` is not on disk (a hub dataset)."""
    root = Path(ds.path)
    if not root.exists():
        if ds.data_files or root.suffix in SUFFIX_TYPES or ds.path.startswith((".", "/")):
            raise DataError(f"dataset `{ds.path}`: no such file or folder")
        return None
    if root.is_file():
        return [root]
    if ds.data_files:
        files = [root / f for f in ds.data_files]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"dataset `{ds.path}`: data_files not found: {', '.join(missing)}")
        return files
    files = sorted(p for p in root.rglob("*") if p.is_file() and (p.suffix in SUFFIX_TYPES or ds.ds_type))
    if not files:
        raise DataError(f"dataset `{ds.path}`: the folder holds no .json, .jsonl, .csv, .parquet or .arrow file")
    return files


def source_fingerprint(ds: DatasetConfig) -> list[str]:
    """What identifies the rows of a dataset entry without reading them into memory."""
    files = local_files(ds)
    if files is None:  # datasets fingerprints what it downloaded; a new hub revision gets a new one
        return [f"hub:{ds.path}:{ds.name}:{ds.split}:{_hub_dataset(ds)._fingerprint}"]
    return [f"{os.fspath(f)}:{file_digest(f)}" for f in files]


def load_rows(ds: DatasetConfig) -> list[dict[str, Any]]:
    files = local_files(ds)
    rows: list[dict[str, Any]] = []
    if files is None:
        return _hub_dataset(ds).to_list()
    for f in files:
        kind = ds.ds_type or SUFFIX_TYPES.get(f.suffix)
        if kind == "json":
            rows += _json_rows(f)
        elif kind in ("csv", "parquet", "arrow"):
            rows += _arrow_rows(f, kind)
        elif kind == "text":
            rows += [{"text": line.rstrip("\n")} for line in f.open(encoding="utf-8") if line.strip()]
        else:
            raise DataError(f"{f}: unknown file type; set `ds_type` (json, csv, parquet, arrow, text)")
    return rows


def _json_rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from None
        bad = next((i for i, r in enumerate(data) if not isinstance(r, dict)), None)
        if bad is not None:
            raise DataError(f"{path}: item {bad} of the JSON list is not an object")
        return data
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: malformed JSON line: {exc.msg} (column {exc.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: each line must be a JSON object, not {type(row).__name__}")
        rows.append(row)
    return rows


def _arrow_rows(path: Path, kind: str) -> list[dict[str, Any]]:
    import pyarrow as pa

    try:
        if kind == "csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
        elif kind == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            table = _read_arrow(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: cannot read as {kind}: {str(exc).splitlines()[0]}") from None
    return table.to_pylist()


def _read_arrow(path: Path) -> Any:
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        try:
            return pa.ipc.open_stream(source).read_all()  # what datasets' save_to_disk writes
        except pa.ArrowInvalid:
            return pa.ipc.open_file(source).read_all()


def _hub_dataset(ds: DatasetConfig) -> Any:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise DataError(f"dataset `{ds.path}` is not a local file or folder, and the hub is offline (HF_HUB_OFFLINE=1)")
    import datasets

    try:
        return datasets.load_dataset(ds.path, ds.name, split=ds.split, revision=ds.revision, data_files=ds.data_files)
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"dataset `{ds.path}`: {str(exc).splitlines()[0]}") from None
