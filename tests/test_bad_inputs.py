"""Every bad input in tests/catalog.py, through the real CLI: exit 2, one short message naming what and where
and the fix, no traceback, nothing in output_dir a later run would trust; and docs/errors.md says the same."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from catalog import CASES, message, run_case
from conftest import ROOT


def documented() -> dict[str, str]:
    rows = {}
    for line in (ROOT / "docs/errors.md").read_text().splitlines():
        cells = re.split(r"(?<!\\)\|", line)
        if len(cells) == 5 and cells[1].strip() not in ("mistake", "---"):
            rows[cells[1].strip()] = cells[3].strip().replace("\\|", "|").replace("<br>", "\n")
    return rows


def test_the_catalogue_is_large_and_named_once():
    names = [c.name for c in CASES]
    assert len(names) >= 60 and len(set(names)) == len(names)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_answered_in_one_message(case, tmp_path: Path, tiny_model_dir):
    root = tmp_path / "case"
    result = run_case(case, root, tiny_model_dir("llama"))
    said = message(result, root)
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert said.startswith("ft: error: ") and "\n\n" not in said and said.count("\n") <= 3, said
    for piece in case.expect:
        assert piece in said, f"{piece!r} not in {said!r}"
    out = root / "out"
    from ft.train.checkpoints import newest_checkpoint

    assert not (out / "summary.json").exists() and not (out / "adapter_model.safetensors").exists()
    assert not out.exists() or newest_checkpoint(out) is None
    assert documented().get(case.name) == said, "docs/errors.md is out of date: python scripts/errors_doc.py"
