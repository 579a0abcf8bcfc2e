"""Flattened batches compute what the model computes: Gemma-2 keeps its attention soft-capping whatever
attention the settings resolve to, and a model whose attention ignores ft's function is caught before training.

transformers 5.17 (the lower bound, and the GPU machine's) let Gemma-2 load with sdpa, which ignores
soft-capping; 5.24 refuses sdpa for it. The tests give Gemma-2 sdpa support (`_supports_sdpa = True`, as 5.17
has it) so that the settings resolve to sdpa here as they do there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from test_packing import _rows, packed_vs_single
from train_helpers import make_config


@pytest.fixture
def gemma2_sdpa(monkeypatch):
    from transformers.models.gemma2 import modeling_gemma2

    monkeypatch.setattr(modeling_gemma2.Gemma2PreTrainedModel, "_supports_sdpa", True)


def _capped_gemma2(tmp_path: Path, tiny_model_dir) -> Path:
    """The tiny Gemma-2 with q and k scaled 40x: scores above 100, where the soft-cap of 50 bends them."""
    from safetensors.torch import load_file, save_file

    folder = Path(shutil.copytree(tiny_model_dir("gemma2"), tmp_path / "gemma2-capped"))
    weights = load_file(str(folder / "model.safetensors"))
    for name in weights:
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            weights[name] = weights[name] * 40
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _largest_score(model, rows) -> float:
    """The largest |q·k| scaled score of the first layer on these rows (what soft-capping acts on)."""
    seen = []
    attention = model.model.layers[0].self_attn

    def hook(module, args, kwargs):
        hidden = kwargs["hidden_states"]
        q = module.q_proj(hidden)[0].unflatten(-1, (-1, module.head_dim))[:, 0]  # query head 0 ...
        k = module.k_proj(hidden)[0].unflatten(-1, (-1, module.head_dim))[:, 0]  # ... reads kv head 0
        seen.append(float((q @ k.T).abs().max()) * module.scaling)

    handle = attention.register_forward_pre_hook(hook, with_kwargs=True)
    with torch.no_grad():
        model(input_ids=torch.tensor([rows[0]["input_ids"]]))
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("setting", [{"flash_attention": True}, {"sdp_attention": True}], ids=["flash_attention", "sdp_attention"])
@pytest.mark.parametrize("layout", ["packed", "padding-free"])
def test_gemma2_keeps_soft_capping_when_settings_resolve_to_sdpa(setting, layout, gemma2_sdpa, tmp_path: Path, tiny_model_dir, tiny_tokenizer):
    from ft.commands.train import model_for_training
    from ft.tokenizer.load import load_tokenizer

    cfg = make_config(tmp_path, _capped_gemma2(tmp_path, tiny_model_dir), **setting)
    model, got_layout, kernel = model_for_training(cfg, load_tokenizer(cfg.model), layout)
    assert (got_layout, kernel) == (layout, "per-row eager")
    model.eval()
    rows = _rows(tiny_tokenizer)
    assert _largest_score(model, rows) > 2 * model.config.attn_logit_softcapping  # the cap bends these scores
    loss_diff, grad_diff = packed_vs_single(model, rows)  # against Gemma-2's own eager attention, row by row
    assert loss_diff < 1e-5 and grad_diff < 1e-5, (loss_diff, grad_diff)
    # the comparison can fail: a kernel that dropped soft-capping would give these rows other logits
    ids = torch.tensor([rows[0]["input_ids"]])
    with torch.no_grad():
        capped = model(input_ids=ids).logits
        for layer in model.model.layers:
            layer.self_attn.attn_logit_softcapping = None
        uncapped = model(input_ids=ids).logits
    assert float((capped - uncapped).abs().max()) > 1e-2


def test_the_varlen_function_hands_soft_capped_calls_to_the_models_eager_attention(tmp_path: Path, tiny_model_dir, tiny_tokenizer):
    """Whatever chose it, ft's varlen attention never drops a score modification it is handed."""
    from transformers import AutoModelForCausalLM

    from ft.model.packed_attention import VARLEN, register

    register()
    model = AutoModelForCausalLM.from_pretrained(_capped_gemma2(tmp_path, tiny_model_dir), dtype=torch.float32,
                                                 attn_implementation=VARLEN).eval()
    loss_diff, grad_diff = packed_vs_single(model, _rows(tiny_tokenizer))
    assert loss_diff < 1e-5 and grad_diff < 1e-5, (loss_diff, grad_diff)


def test_gemma2_padded_batches_run_eager_when_settings_resolve_to_sdpa(gemma2_sdpa, tmp_path: Path, tiny_model_dir):
    from ft.commands.train import model_for_training
    from ft.tokenizer.load import load_tokenizer

    cfg = make_config(tmp_path, tiny_model_dir("gemma2"), sdp_attention=True)
    model, layout, kernel = model_for_training(cfg, load_tokenizer(cfg.model), "padded")
    assert (layout, kernel, model.config._attn_implementation) == ("padded", "", "eager")


LEAKY_MODEL = '''
"""A Llama whose attention ignores transformers' AttentionInterface: causal sdpa over the whole sequence."""
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama


class LeakyConfig(LlamaConfig):
    model_type = "leaky_llama"


class LeakyAttention(modeling_llama.LlamaAttention):
    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        batch, length, _ = hidden_states.shape
        shape = (batch, length, -1, self.head_dim)
        q, k, v = (proj(hidden_states).view(shape).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))
        q, k = modeling_llama.apply_rotary_pos_emb(q, k, *position_embeddings)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1)), None


class LeakyForCausalLM(LlamaForCausalLM):
    config_class = LeakyConfig

    def __init__(self, config):
        super().__init__(config)
        for i, layer in enumerate(self.model.layers):
            layer.self_attn = LeakyAttention(config, i)
'''


def _leaky_model(tmp_path: Path, tiny_model_dir) -> Path:
    folder = Path(shutil.copytree(tiny_model_dir("llama"), tmp_path / "leaky"))
    (folder / "modeling_leaky.py").write_text(LEAKY_MODEL)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="leaky_llama", architectures=["LeakyForCausalLM"],
                  auto_map={"AutoConfig": "modeling_leaky.LeakyConfig", "AutoModelForCausalLM": "modeling_leaky.LeakyForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_packing_a_model_that_ignores_fts_attention_is_refused_before_training(tmp_path: Path, tiny_model_dir):
    from conftest import run_ft

    make_config(tmp_path, _leaky_model(tmp_path, tiny_model_dir), trust_remote_code=True, sample_packing=True)
    result = run_ft("train", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "LeakyForCausalLM computes its own" in result.stderr and "sample_packing: false" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out/checkpoint-1").exists()


def test_padding_free_batches_fall_back_to_padding_for_such_a_model(tmp_path: Path, tiny_model_dir, tiny_tokenizer):
    """Unpacked rows end to end through the leaky model would see each other: it trains padded, saying why."""
    from ft.commands.train import model_for_training
    from ft.tokenizer.load import load_tokenizer

    cfg = make_config(tmp_path, _leaky_model(tmp_path, tiny_model_dir), trust_remote_code=True, padding_free=True)
    model, layout, kernel = model_for_training(cfg, load_tokenizer(cfg.model), "padding-free")
    assert type(model).__name__ == "LeakyForCausalLM" and (layout, kernel) == ("padded", "")
    # proof that the probe was needed: flattened through this model, rows do see each other
    from ft.model.packed_attention import VARLEN

    model.set_attn_implementation(VARLEN)
    loss_diff, _ = packed_vs_single(model.eval(), _rows(tiny_tokenizer))
    assert loss_diff > 1e-3, loss_diff
