"""`use_onebitllms: true` (BitNet b1.58 training, Falcon-E's onebitllms): the layers compute with ternary weights and
8-bit inputs as the formulas say, gradients pass straight through to the full-precision weights, and a run trains
every linear layer that way but the head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train_helpers import build, make_config, snapshot
from ft.model.bitnet import BitLinear, eight_bit, ternary


def test_bitlinear_is_the_formula_with_gradients_straight_through():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8, bias=True)
    layer.__class__ = BitLinear
    x = torch.randn(3, 5, 16, requires_grad=True)
    y = layer(x)
    w = layer.weight.detach()
    scale = 1 / w.abs().mean()
    w_q = torch.floor(w * scale + 0.5).clamp(-1, 1) / scale
    assert set((w_q * scale).round().unique().tolist()) <= {-1.0, 0.0, 1.0}
    xs = 127 / x.detach().abs().amax(-1, keepdim=True)
    x_q = torch.floor(x.detach() * xs + 0.5).clamp(-128, 127) / xs
    assert torch.allclose(y, x_q @ w_q.T + layer.bias, atol=1e-6)
    grad = torch.randn_like(y)
    y.backward(grad)
    g = grad.reshape(-1, 8)
    assert torch.allclose(layer.weight.grad, g.T @ x_q.reshape(-1, 16), atol=1e-5)  # ∂/∂W as if W_q = W
    assert torch.allclose(x.grad, grad @ w_q, atol=1e-5)  # ∂/∂x as if x_q = x
    assert torch.equal(ternary(torch.zeros(4, 4)), torch.zeros(4, 4)) and torch.equal(eight_bit(torch.zeros(2, 3)), torch.zeros(2, 3))


def test_a_bitnet_run_trains_every_linear_layer_but_the_head(tmp_path: Path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir("llama"), use_onebitllms=True, max_steps=2, learning_rate=1e-3)
    trainer, model, _ = build(cfg)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is BitLinear for m in linears if m is not model.lm_head)
    assert type(model.lm_head) is torch.nn.Linear
    before = snapshot(model)
    trainer.train()
    after = snapshot(model)
    assert all(not torch.equal(before[n], after[n]) for n, p in model.named_parameters() if p.requires_grad)


def test_bitnet_is_full_fine_tuning(tmp_path: Path, tiny_model_dir):
    from ft.errors import ConfigError

    with pytest.raises(ConfigError, match="remove `adapter: lora`"):
        make_config(tmp_path, tiny_model_dir("llama"), use_onebitllms=True, adapter="lora", lora_target_linear=True)
