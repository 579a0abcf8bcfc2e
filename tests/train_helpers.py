"""Building blocks for training tests: a config on a tiny model, and one Trainer run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ft.commands.config import load as load_config

WORDS = "cat dog red blue sun moon tree fish bird star king queen city river lake road".split()


def alpaca_rows(n: int = 32, seed: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(WORDS, 3)
        rows.append({"instruction": "Reverse the words.", "input": " ".join(words), "output": " ".join(words[::-1])})
    return rows


def make_config(tmp: Path, model_dir: Path, **keys: Any) -> Any:
    """A config file in `tmp` training `model_dir` on small alpaca data; `keys` add or replace keys."""
    data = tmp / "train.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows()))
    body = {
        "base_model": str(model_dir),
        "datasets": [{"path": str(data), "type": "alpaca"}],
        "sequence_len": 128,
        "micro_batch_size": 4,
        "max_steps": 4,
        "learning_rate": 0.005,
        "lr_scheduler": "constant",
        "logging_steps": 1,
        "output_dir": str(tmp / "out"),
        "use_tensorboard": False,
    }
    body.update(keys)
    path = tmp / "cfg.yml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return load_config(path)


def fixed_batch(tokenizer: Any, rows: int = 4) -> dict:
    from ft.config.data import DataConfig, DatasetConfig
    from ft.data.tokenize import RowTokenizer
    from ft.tokenizer.load import adds_bos
    from ft.train.batches import PadCollator

    ds = DatasetConfig(path="x", type="alpaca")
    out = RowTokenizer(ds, DataConfig(datasets=[ds], sequence_len=64), tokenizer, adds_bos(tokenizer))(alpaca_rows(rows, seed=1))
    return PadCollator(tokenizer.pad_token_id)([{"input_ids": i, "labels": l} for i, l in zip(out.input_ids, out.labels)])


def loss_on(model: Any, batch: dict) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        return float(model(**batch).loss)


def build(cfg: Any) -> tuple[Any, Any, Any]:
    """(trainer, model, tokenizer) exactly as `ft train` builds them, before training."""
    from ft.commands.train import build_run
    from ft.launch.backend import world_size

    run = build_run(cfg, world_size())
    return run.trainer, run.model, run.tokenizer


def snapshot(model: Any) -> dict[str, Any]:
    return {n: p.detach().float().clone() for n, p in model.named_parameters()}


def sampling_recorded(trainer: Any, model: Any) -> list:
    """For the online trainers' gradient tests: LoRA's B matrices made non-zero (so the adapter changes what the
    model samples and computes), and every (prompt, samples) the trainer draws recorded in the list returned."""
    import torch

    with torch.no_grad():
        for p in (p for n, p in model.named_parameters() if "lora_B" in n):
            p.normal_(0, 0.3)
    drawn: list = []
    generate = trainer._generate
    trainer._generate = lambda m, prompt, limit: drawn.append((prompt, generate(m, prompt, limit))) or drawn[-1][1]
    return drawn
