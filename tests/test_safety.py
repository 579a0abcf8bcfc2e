"""Safe by default: a run writes only where it says, YAML and chat templates cannot run code, remote code
runs only when asked (and is announced), weights are safetensors, nothing is unpickled unchecked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import ROOT, run_ft

BASE = "base_model: {model}\ndatasets:\n  - path: data.jsonl\n    type: {type}\nsequence_len: 128\nmax_steps: 2\n" \
       "micro_batch_size: 2\noutput_dir: out\nuse_tensorboard: false\n"


@pytest.fixture
def project(tmp_path: Path, tiny_model_dir) -> Path:
    from train_helpers import alpaca_rows

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows(12)))
    (folder / "cfg.yml").write_text(BASE.format(model=tiny_model_dir("llama"), type="alpaca") + "adapter: lora\n")
    return folder


@pytest.mark.slow
def test_a_run_writes_only_in_output_dir(project: Path, tmp_path: Path):
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {"HOME": str(home), "TMPDIR": str(tmp), "XDG_CACHE_HOME": "", "XDG_CONFIG_HOME": ""}
    for command in ("preprocess", "train", "merge-lora"):
        result = run_ft(command, "cfg.yml", cwd=project, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    assert not list(home.rglob("*")) and not list(tmp.rglob("*")), sorted(map(str, [*home.rglob("*"), *tmp.rglob("*")]))
    assert sorted(p.name for p in project.iterdir()) == ["cfg.yml", "data.jsonl", "out"]
    weights = [p.name for p in (project / "out").glob("*") if p.suffix in (".bin", ".pt", ".pth", ".safetensors")]
    assert "adapter_model.safetensors" in weights and not [w for w in weights if w.endswith((".pt", ".pth")) or "model" in w and w.endswith(".bin")]
    assert all(p.suffix != ".bin" or p.name == "training_args.bin" for p in (project / "out/merged").iterdir())


def test_yaml_cannot_run_code(project: Path):
    (project / "cfg.yml").write_text('base_model: !!python/object/apply:os.system ["touch pwned"]\n')
    result = run_ft("validate", "cfg.yml", cwd=project)
    assert result.returncode == 2 and "malformed YAML" in result.stderr, result.stderr
    assert not (project / "pwned").exists()


def test_chat_templates_render_in_a_sandbox(project: Path, tiny_model_dir):
    escape = "{{ ''.__class__.__mro__[1].__subclasses__() }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (project / "chat.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                                 {"role": "assistant", "content": "yo"}]}) + "\n")
    text = BASE.format(model=tiny_model_dir("llama"), type="chat_template").replace("data.jsonl", "chat.jsonl")
    (project / "cfg.yml").write_text(text + f"chat_template_jinja: {json.dumps(escape)}\n")
    result = run_ft("preprocess", "cfg.yml", cwd=project)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "the chat template rejected the conversation" in result.stderr and "unsafe" in result.stderr


def test_remote_code_runs_only_when_asked_and_is_announced(project: Path):
    from ft.config.model import ModelConfig

    assert ModelConfig.model_fields["trust_remote_code"].default is False
    (project / "cfg.yml").write_text((project / "cfg.yml").read_text() + "trust_remote_code: true\n")
    result = run_ft("train", "cfg.yml", cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trust_remote_code: true: Python code shipped with" in result.stderr


def test_ft_unpickles_nothing_unchecked():
    """Every torch.load in ft's source passes weights_only=True (the Trainer's own loads do too)."""
    for path in (ROOT / "src/ft").rglob("*.py"):
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
            assert "weights_only=True" in call, (path, call)
