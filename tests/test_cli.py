"""The CLI's shape: --help, python -m ft, no torch at start-up, the generated config reference."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, run_ft


def test_help_lists_the_commands():
    result = run_ft("--help")
    assert result.returncode == 0
    for command in ("train", "preprocess", "merge-lora", "inference", "validate", "config-schema"):
        assert command in result.stdout


def test_help_and_validate_import_no_torch():
    code = (
        "import sys\n"
        "from ft.cli import main\n"
        "for argv in (['--help'], ['validate', 'examples/quickstart/config.yml']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'peft', 'accelerate') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_config_reference_is_current():
    """docs/config.md is generated (`ft config-schema > docs/config.md`); it must match the code."""
    result = run_ft("config-schema")
    assert result.returncode == 0
    assert (ROOT / "docs/config.md").read_text() == result.stdout


def test_every_field_documents_itself():
    from ft.config.reference import NESTED
    from ft.config.schema import FtConfig

    models = [FtConfig.model_fields[s].annotation for s in FtConfig.model_fields] + list(NESTED.values())
    missing = [f"{m.__name__}.{n}" for m in models for n, f in m.model_fields.items() if not f.description]
    assert not missing, missing


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    test_line = next(line for line in ci.splitlines() if "pytest" in line)
    assert test_line.strip() in readme
