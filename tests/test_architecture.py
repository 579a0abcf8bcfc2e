"""The architecture is enforced: import-linter checks the contracts in pyproject.toml (docs/architecture.md).

The second test plants a wrong import in a copy of the package, so the contracts are shown to fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(python_path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"PYTHONPATH": python_path} if python_path else {})}
    return subprocess.run([LINT, "--no-cache", "--config", str(ROOT / "pyproject.toml")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_the_contracts_hold():
    result = lint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_a_wrong_import_breaks_a_contract(tmp_path: Path):
    copy = tmp_path / "ft"
    shutil.copytree(ROOT / "src/ft", copy, ignore=shutil.ignore_patterns("__pycache__"))
    base = copy / "config/base.py"
    base.write_text(base.read_text() + "\nfrom ft.train.optimizers import OPTIMIZERS  # noqa\n")
    result = lint(str(tmp_path))
    assert result.returncode == 1, result.stdout
    assert "BROKEN" in result.stdout and "ft.config.base -> ft.train.optimizers" in result.stdout, result.stdout
