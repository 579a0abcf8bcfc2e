"""What the measuring scripts share (distill_learns.py, compare_methods.py): an `ft train` run in a folder of its
own, and greedy answers to alpaca rows in the format they trained in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml


def train(folder: Path, body: dict) -> str:
    """`ft train` of the config `body`, written to folder/cfg.yml; exits with its error, else returns its stderr."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.yml").write_text(yaml.safe_dump(body, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "ft", "train", "cfg.yml"], cwd=folder, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"training in {folder} failed:\n{result.stderr[-3000:]}")
    return result.stderr


def greedy_answers(model: Any, tokenizer: Any, rows: list[dict], max_new_tokens: int = 16) -> list[str]:
    import torch

    from ft.config.data import DatasetConfig
    from ft.data.formats import build_format

    fmt = build_format(DatasetConfig(path="x", type="alpaca"), tokenizer)
    model.eval()
    out = []
    for row in rows:
        ids = tokenizer(fmt.prompt(row), return_tensors="pt")
        with torch.no_grad():
            new = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        out.append(tokenizer.decode(new[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out
