"""The checks of tests/test_qat.py, run in a process of their own where torchao can be imported (.venv/qat, see
README's test command): installed beside the suite, transformers would import it in every process.

    python tests/qat_checks.py CHECK WORK_DIR MODEL_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from train_helpers import build, make_config

QAT = {"activation_dtype": "int8", "weight_dtype": "int4", "group_size": 32}


def groups_and_head(tmp_path: Path, model_dir: Path) -> None:
    from ft.model.qat import fake_quantizers, set_fake_quantization

    trainer, model, _ = build(make_config(tmp_path, model_dir, qat=QAT, bf16=False))
    layers = [m for m in model.modules() if type(m).__name__ == "FakeQuantizedLinear"]
    assert len(layers) == 7 * model.config.num_hidden_layers and type(model.get_output_embeddings()).__name__ == "Linear"
    assert len(fake_quantizers(model)) == 2 * len(layers)
    for layer in layers:
        seen = layer.weight_fake_quantizer(layer.weight).detach()
        groups = seen.reshape(seen.shape[0], -1, 32)
        assert max(len(torch.unique(g)) for g in groups.reshape(-1, 32)) <= 16  # int4: 16 levels a group
        assert not torch.equal(seen, layer.weight.detach())
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 64, 12]])
    plain = type(model).from_pretrained(model_dir).eval()
    model.eval()
    with torch.no_grad():
        quantized = model(input_ids=ids).logits
        set_fake_quantization(model, False)
        off = model(input_ids=ids).logits
        want = plain(input_ids=ids).logits
    assert torch.allclose(off, want, rtol=1e-5, atol=1e-6) and not torch.allclose(quantized, want, rtol=1e-3, atol=1e-4)


def trains_and_saves(tmp_path: Path, model_dir: Path) -> None:
    """The weights move (the straight-through gradient reaches them), fake quantization starts at
    fake_quant_after_n_steps, and the saved model loads as the plain architecture with the trained weights."""
    from transformers import AutoModelForCausalLM, TrainerCallback

    from ft.model.qat import fake_quantizers

    cfg = make_config(tmp_path, model_dir, qat={**QAT, "fake_quant_after_n_steps": 2}, max_steps=4, bf16=False)
    trainer, model, _ = build(cfg)
    seen = []

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(all(q.enabled for q in fake_quantizers(model)))

    trainer.add_callback(Watch())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    trainer.save_model(cfg.training.output_dir)
    assert seen == [False, False, True, True]
    moved = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert any("q_proj" in n for n in moved) and any("down_proj" in n for n in moved)
    saved = AutoModelForCausalLM.from_pretrained(cfg.training.output_dir)
    assert all(type(m).__name__ != "FakeQuantizedLinear" for m in saved.modules())
    trained = dict(model.named_parameters())
    assert all(torch.equal(p.detach(), trained[n].detach()) for n, p in saved.named_parameters())


def fp8_trains_and_saves(tmp_path: Path, model_dir: Path) -> None:
    """fp8: every linear layer but the first and the head is torchao's Float8Linear; its logits are the plain
    model's within float8's error and not equal to them; the weights train; what is saved is the plain model."""
    from transformers import AutoModelForCausalLM

    cfg = make_config(tmp_path, model_dir, fp8=True, max_steps=2, bf16=False)
    trainer, model, _ = build(cfg)
    kinds = [(n, type(m).__name__) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert kinds[0][1] == "Linear" and kinds[-1][1] == "Linear" and kinds[-1][0] == "lm_head"
    assert all(kind == "Float8Linear" for _, kind in kinds[1:-1]) and len(kinds) == 7 * model.config.num_hidden_layers + 1
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 64, 12]])
    plain = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    model.eval()
    with torch.no_grad():
        got, want = model(input_ids=ids).logits, plain(input_ids=ids).logits
    error = float((got - want).norm() / want.norm())
    assert 0 < error < 0.1, error
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    trainer.save_model(cfg.training.output_dir)
    assert all(not torch.equal(before[n], p.detach()) for n, p in model.named_parameters() if "proj" in n)
    saved = AutoModelForCausalLM.from_pretrained(cfg.training.output_dir)
    trained = dict(model.named_parameters())
    assert all(type(m).__name__ != "Float8Linear" for m in saved.modules())
    assert all(torch.equal(p.detach(), trained[n].detach()) for n, p in saved.named_parameters())


if __name__ == "__main__":
    {"groups_and_head": groups_and_head, "trains_and_saves": trains_and_saves,
     "fp8_trains_and_saves": fp8_trains_and_saves}[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))
    print("ok")
