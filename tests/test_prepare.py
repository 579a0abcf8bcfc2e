"""Sources, the prepared cache (keys, hits, no stale data, no partial cache) and `ft preprocess` errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import ftproc
from conftest import run_ft
from ft.commands.config import load as load_config
from ft.commands.preprocess import prepare_data as prepare
from ft.data import prepare as prepare_module
from ft.data.sources import load_rows
from ft.errors import DataError
from helpers import dataset

ROWS = [{"instruction": f"Repeat {w}.", "input": "" if i % 3 else "twice", "output": f"{w} {w}"}
        for i, w in enumerate("cat dog red blue sun moon tree fish bird star".split())]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def project(tmp_path: Path, tiny_model_dir) -> Path:
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    (tmp_path / "cfg.yml").write_text(
        f"base_model: {tiny_model_dir('llama')}\n"
        "datasets:\n  - path: train.jsonl\n    type: alpaca\n"
        "sequence_len: 128\nval_set_size: 0.2\noutput_dir: out\n"
    )
    return tmp_path


def load(project: Path, *overrides):
    import os

    cwd = os.getcwd()
    os.chdir(project)
    try:
        return load_config("cfg.yml", list(overrides))
    finally:
        os.chdir(cwd)


def cache_key(cfg):
    return prepare_module.cache_key(prepare_module.cache_inputs(cfg.data, cfg.model, cfg.training.seed))


def in_dir(project: Path, fn, *args):
    import os

    cwd = os.getcwd()
    os.chdir(project)
    try:
        return fn(*args)
    finally:
        os.chdir(cwd)


def test_split_is_deterministic_and_cache_hits(project: Path):
    cfg = load(project)
    first = in_dir(project, prepare, cfg)
    assert not first.hit
    assert first.train.num_rows == 8 and first.eval.num_rows == 2
    again = in_dir(project, prepare, cfg)
    assert again.hit and again.path == first.path
    assert again.train.column("input_ids").to_pylist() == first.train.column("input_ids").to_pylist()
    assert load(project, ("val_set_size", 3)) and in_dir(project, prepare, load(project, ("val_set_size", 3))).eval.num_rows == 3


def test_changed_file_changes_the_key(project: Path):
    cfg = load(project)
    before = in_dir(project, cache_key, cfg)
    write_jsonl(project / "train.jsonl", ROWS[:-1] + [dict(ROWS[-1], output="changed")])
    assert in_dir(project, cache_key, cfg) != before


def test_changed_tokenizer_changes_the_key(project: Path, tmp_path_factory):
    import shutil

    from ft.tiny import build_tokenizer

    model = tmp_path_factory.mktemp("model-copy")
    cfg0 = load(project)
    shutil.copytree(cfg0.model.base_model, model, dirs_exist_ok=True)
    cfg = load(project, ("base_model", str(model)))
    before = in_dir(project, cache_key, cfg)
    build_tokenizer(vocab_size=900).save_pretrained(model)  # same folder, other vocabulary
    assert in_dir(project, cache_key, cfg) != before


@pytest.mark.parametrize(
    "override",
    [("sequence_len", 64), ("train_on_inputs", True), ("seed", 7), ("val_set_size", 0.3),
     ("datasets.0.type", "completion"), ("special_tokens.pad_token", "<unk>"), ("chat_template", "llama3"),
     ("excess_length_strategy", "truncate"), ("tokens", ["<new>"])],
    ids=lambda o: o[0] if isinstance(o, tuple) else str(o),
)
def test_every_option_changes_the_key(project: Path, override):
    assert in_dir(project, cache_key, load(project, override)) != in_dir(project, cache_key, load(project))


def test_training_only_options_keep_the_key(project: Path):
    base = in_dir(project, cache_key, load(project))
    for override in (("learning_rate", 0.1), ("micro_batch_size", 3), ("lora_r", 4), ("sample_packing", True)):
        assert in_dir(project, cache_key, load(project, override)) == base


def test_failed_run_leaves_no_partial_cache(project: Path):
    write_jsonl(project / "train.jsonl", ROWS + [{"instruction": "x"}])
    cfg = load(project)
    with pytest.raises(DataError, match="missing column `output`"):
        in_dir(project, prepare, cfg)
    root = project / cfg.prepared_dir
    assert not [p for p in root.iterdir() if p.is_dir()]


def test_sources_json_csv_parquet_arrow_folder(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(ROWS)
    (tmp_path / "d").mkdir()
    (tmp_path / "d/a.json").write_text(json.dumps(ROWS[:2]))
    write_jsonl(tmp_path / "d/b.jsonl", ROWS[2:4])
    pcsv.write_csv(table.slice(4, 2), tmp_path / "d/c.csv")
    pq.write_table(table.slice(6, 2), tmp_path / "d/e.parquet")
    with pa.OSFile(str(tmp_path / "d/f.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table.slice(8, 2))
    rows = load_rows(dataset(path=str(tmp_path / "d")))
    assert [r["output"] for r in rows] == [r["output"] for r in ROWS]
    only = load_rows(dataset(path=str(tmp_path / "d"), data_files=["c.csv"]))
    assert len(only) == 2


def test_malformed_jsonl_names_file_and_line(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": }\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON line"):
        load_rows(dataset(path=str(path)))


DATA_ERRORS = {
    "missing file": ("datasets:\n  - path: nope.jsonl\n    type: alpaca\n", None, "dataset `nope.jsonl`: no such file"),
    "malformed line": ("datasets:\n  - path: t.jsonl\n    type: alpaca\n", '{"a": 1}\n{oops\n', "t.jsonl:2: malformed JSON line"),
    "missing column": (
        "datasets:\n  - path: t.jsonl\n    type: alpaca\n",
        '{"instruction": "a", "answer": "b"}\n',
        "dataset `t.jsonl` row 0 (columns: instruction, answer): missing column `output`",
    ),
    "empty dataset": ("datasets:\n  - path: t.jsonl\n    type: alpaca\n", "\n", "dataset `t.jsonl` (split train) has no rows"),
    "non-text field": (
        "datasets:\n  - path: t.jsonl\n    type: alpaca\n",
        '{"instruction": ["a"], "output": "b"}\n',
        "column `instruction` holds list, not text",
    ),
    "all rows too long": (
        "sequence_len: 16\ndatasets:\n  - path: t.jsonl\n    type: alpaca\n",
        '{"instruction": "a", "output": "b"}\n',
        "all 1 rows were dropped (1 longer than sequence_len 16",
    ),
    "val split takes all": (
        "val_set_size: 5\ndatasets:\n  - path: t.jsonl\n    type: alpaca\n",
        '{"instruction": "a", "output": "b"}\n',
        "val_set_size 5 takes all 1 usable rows",
    ),
}


@pytest.mark.parametrize("name", list(DATA_ERRORS))
def test_preprocess_data_errors_exit_2(name: str, tmp_path: Path, tiny_model_dir):
    text, rows, expected = DATA_ERRORS[name]
    if rows is not None:
        (tmp_path / "t.jsonl").write_text(rows)
    (tmp_path / "cfg.yml").write_text(f"base_model: {tiny_model_dir('llama')}\noutput_dir: out\n" + text)
    result = run_ft("preprocess", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in result.stderr, result.stderr
    prepared = tmp_path / "out/prepared"
    assert not prepared.exists() or not [p for p in prepared.iterdir() if p.is_dir()]


def test_preprocess_cli_reports_and_debug_marks_trained_tokens(project: Path):
    result = run_ft("--debug", "preprocess", "cfg.yml", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "built in" in result.stdout and "rows read 10: kept 10" in result.stdout
    assert re.search(r"### Response:\n\[\[(\w+) \1</s>\]\]", result.stdout), result.stdout
    assert "trained text inside [[ ]]" in result.stdout
    again = run_ft("preprocess", "cfg.yml", cwd=project)
    assert "found in cache" in again.stdout


def test_concurrent_processes_prepare_once(project: Path):
    """Two processes at once (as under accelerate launch): one builds, the other waits and reads."""
    procs = [ftproc.FtProcess(["preprocess", "cfg.yml"], cwd=project) for _ in range(2)]
    codes = [p.wait(300) for p in procs]
    outs = [p.output() for p in procs]
    assert codes == [0, 0], outs
    said = sorted("built" if "built in" in o else "hit" for o, _ in outs)
    assert said == ["built", "hit"]
