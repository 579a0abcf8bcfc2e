"""`optimizer: muon` (ft.train.muon): on one process the same steps as torch.optim.Muon on the hidden weight
matrices and torch.optim.AdamW on the rest; `ft train` with it; its refusals. Under FSDP2: tests/test_fsdp_cpu.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train_helpers import build, fixed_batch, make_config


def test_muon_steps_equal_pytorchs_muon_and_adamw(tmp_path: Path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from ft.config.model import ModelConfig
    from ft.tokenizer.load import load_tokenizer
    from ft.train.muon import Muon, muon_groups

    folder = tiny_model_dir("llama")
    mine, theirs = (AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32) for _ in range(2))
    groups = muon_groups(mine)
    names = {id(p): n for n, p in mine.named_parameters()}
    matrices = sorted(names[id(p)] for p in groups[0]["params"])
    assert len(matrices) == 7 * mine.config.num_hidden_layers  # q k v o gate up down of each layer
    assert not any("embed" in n or "lm_head" in n or "norm" in n for n in matrices)
    hyper = dict(lr=0.02, weight_decay=0.01)
    ours = Muon(groups, betas=(0.9, 0.95), eps=1e-8, ns_dtype=torch.bfloat16, **hyper)  # bf16: as PyTorch's
    by_name = dict(theirs.named_parameters())
    reference = [torch.optim.Muon([by_name[n] for n in matrices], momentum=0.95, nesterov=True, **hyper),
                 torch.optim.AdamW([p for n, p in theirs.named_parameters() if n not in matrices], betas=(0.9, 0.95),
                                   eps=1e-8, **hyper)]
    batch = fixed_batch(load_tokenizer(ModelConfig(base_model=str(folder))))
    for _ in range(3):
        for model, optimizers in ((mine, [ours]), (theirs, reference)):
            for o in optimizers:
                o.zero_grad()
            model(**batch).loss.backward()
            for o in optimizers:
                o.step()
    base = dict(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).named_parameters())
    for n, p in mine.named_parameters():
        want = by_name[n]
        assert not torch.equal(want, base[n]), n  # every weight moved
        assert float((p - want).norm() / want.norm()) < 1e-6, n


def test_ft_train_with_muon_trains_every_weight(tmp_path: Path, tiny_model_dir):
    trainer, model, _ = build(make_config(tmp_path, tiny_model_dir("llama"), optimizer="muon", max_steps=6,
                                          learning_rate=0.01))
    trainer.train()
    assert type(trainer.optimizer).__name__ == "Muon" or type(trainer.optimizer.optimizer).__name__ == "Muon"
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 6 and losses[-1] < losses[0]


@pytest.mark.parametrize("keys, said", [
    ({"adapter": "lora", "lora_target_linear": True}, "`adapter: lora` trains low-rank factors"),
    ({"deepspeed": "deepspeed_configs/zero2.json"}, "DeepSpeed builds its own optimizer"),
    ({"fsdp": ["full_shard", "auto_wrap"], "fsdp_config": {"fsdp_version": 1}}, "FSDP1 flattens the weight matrices"),
])
def test_muon_refusals(keys: dict, said: str, tmp_path: Path, tiny_model_dir):
    from conftest import ROOT
    from ft.errors import ConfigError

    if "deepspeed" in keys:
        keys = {"deepspeed": str(ROOT / keys["deepspeed"])}
    with pytest.raises(ConfigError, match=said):
        make_config(tmp_path, tiny_model_dir("llama"), optimizer="muon", **keys)


def test_ft_plan_counts_muons_state(tmp_path: Path, tiny_model_dir):
    """`ft plan`'s optimizer states for muon are the bytes the optimizer holds after a step: a momentum per hidden
    matrix weight, AdamW's two moments (and step) for the rest."""
    from ft.plan.estimate import estimate
    from ft.plan.shapes import read_shape

    cfg = make_config(tmp_path, tiny_model_dir("llama"), optimizer="muon", max_steps=1, bf16=False)
    trainer, _, _ = build(cfg)
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    held = sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values() if v.dim() > 0)
    planned = estimate(cfg, read_shape(str(tiny_model_dir("llama")))).parts["optimizer states (muon)"]
    assert planned == held, (planned, held)
