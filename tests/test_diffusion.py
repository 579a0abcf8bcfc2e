"""`diffusion:` (Axolotl's diffusion plugin, LLaDA): the loss equals, row by row, the cross-entropy of the masked
tokens predicted with full attention over that row alone, weighted by 1/p and divided by the row's trained
tokens; the draws mask only trained tokens at the row's rate; packed and padded runs train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from train_helpers import build, make_config, snapshot
from ft.data.labels import IGNORE

LORA = {"adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_target_linear": True}
DIFFUSION = {"plugins": ["axolotl.integrations.diffusion.DiffusionPlugin"],
             "diffusion": {"eps": 1e-3, "importance_weighting": True, "mask_token_id": 128002, "generate_samples": True}}


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_the_loss_is_each_rows_masked_cross_entropy_alone(packing: bool, tmp_path: Path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir("llama"), sample_packing=packing, **LORA, **DIFFUSION)
    trainer, model, tokenizer = build(cfg)
    assert trainer.mask_id == len(tokenizer) - 1  # 128002 is past the tiny vocabulary: <|diffusion_mask|> added
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    batch.pop("real_tokens", None)
    from ft.train.diffusion import segments

    seg = segments(batch)
    trained = (batch["labels"] != IGNORE) & (seg > 0)
    gen = torch.Generator().manual_seed(0)
    masked = (torch.rand(trained.shape, generator=gen) < 0.5) & trained
    p = 0.2 + 0.6 * torch.rand(trained.shape, generator=gen)
    with torch.no_grad():
        loss = float(trainer.masked_loss(model, dict(batch), masked, p))
        expected = []
        for row in torch.unique(seg[seg > 0]):
            b, at = (seg == row).nonzero(as_tuple=True)
            ids = batch["input_ids"][b[0], at].clone()
            here = masked[b[0], at]
            ids[here] = trainer.mask_id
            n = len(ids)
            full = torch.ones(1, 1, n, n, dtype=torch.bool)  # every token of the row sees every other
            logits = model(input_ids=ids[None], attention_mask=full).logits[0].float()
            where = here.nonzero()[:, 0]
            targets = batch["input_ids"][b[0], at][where]
            ce = torch.nn.functional.cross_entropy(logits[where - 1], targets, reduction="none")
            expected.append(float((ce / p[b[0], at][where]).sum()) / int(trained[b[0], at].sum()))
    assert len(expected) > 1
    want = sum(expected) / len(expected)
    assert abs(loss - want) <= 1e-5 * want, (loss, want)


def test_the_draws_mask_trained_tokens_at_each_rows_rate(tmp_path: Path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir("llama"), **LORA, **DIFFUSION)
    trainer, model, tokenizer = build(cfg)
    batch = next(iter(trainer.get_train_dataloader()))
    seen = []
    trainer.masked_loss = lambda m, inputs, masked, p: seen.append((masked, p)) or torch.zeros(())
    torch.manual_seed(0)
    for _ in range(200):
        trainer.compute_loss(model, dict(batch))
    trained = (batch["labels"] != IGNORE) & ~torch.isin(batch["input_ids"], torch.tensor(trainer.special_ids))
    masked = torch.stack([m for m, _ in seen]).float()
    assert not bool((masked.sum(0)[~trained] > 0).any())  # never a prompt, special or padding token
    p = torch.stack([q for _, q in seen])
    real = batch["attention_mask"].bool()
    assert bool(((p >= 1e-3) & (p <= 1)).all()) and bool(((p == p[:, :, :1]) | ~real).all())  # one rate per row
    ratio = float(masked.sum() / (trained.float().sum() * 200))
    assert abs(ratio - float(p[:, :, 0].mean())) < 0.03  # masked at the drawn rate, on average (E[p] ≈ 0.5)


def test_diffusion_trains_packed_and_refuses_what_does_not_go_with_it(tmp_path: Path, tiny_model_dir):
    from ft.errors import ConfigError

    cfg = make_config(tmp_path, tiny_model_dir("llama"), sample_packing=True, max_steps=2, **LORA, **DIFFUSION)
    trainer, model, _ = build(cfg)
    before = snapshot(model)
    trainer.train()
    after = snapshot(model)
    assert all(not torch.equal(before[n], after[n]) for n, p in model.named_parameters() if p.requires_grad)
    rows = [json.loads(line) for line in (Path(cfg.training.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert all("diffusion/mask_ratio" in r for r in rows if "loss" in r)
    with pytest.raises(ConfigError, match="not supported with diffusion training"):
        make_config(tmp_path, tiny_model_dir("llama"), use_eaft=True, **DIFFUSION)
