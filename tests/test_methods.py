"""The parameter-efficient methods beside LoRA (ft.model.methods): each trains (its loss falls) on a small task;
the mergeable ones merge into the base with the trained model's logits; prompt tuning and prefix tuning stay
separate and still answer; what PEFT cannot do is refused in one sentence before anything loads; LoRA+ gives
the B matrices ratio × the learning rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_ft
from ft.errors import ConfigError
from train_helpers import build, make_config

METHODS = ["ia3", "loha", "lokr", "vera", "prompt_tuning", "prefix_tuning", "bottleneck"]
MERGEABLE = ["ia3", "loha", "lokr", "vera"]


def _train(tmp_path: Path, model_dir: Path, method: str, **keys):
    from ft.commands.train import run_train

    cfg = make_config(tmp_path, model_dir, adapter=method, lora_target_linear=method not in ("prompt_tuning", "prefix_tuning"),
                      max_steps=12, learning_rate=0.02 if method != "vera" else 0.05, **keys)
    run_train(cfg)
    return cfg


@pytest.mark.parametrize("method", METHODS)
def test_each_method_learns_and_the_mergeable_ones_merge_exactly(method: str, tmp_path: Path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ft.model.merge import merge_lora

    cfg = _train(tmp_path, tiny_model_dir("llama"), method)
    out = Path(cfg.training.output_dir)
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3]), losses
    if method == "bottleneck":  # ft's own: saved alone, beside the base
        assert json.loads((out / "bottleneck_config.json").read_text())["bottleneck_size"] == 64
    else:
        assert json.loads((out / "adapter_config.json").read_text())["peft_type"].lower().replace("_", "") == method.replace("_", "")
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 64, 12]])
    if method in MERGEABLE:
        with torch.no_grad():
            trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")), str(out)).eval()(input_ids=ids).logits
        merged_dir = merge_lora(cfg.model, out, tmp_path / "merged")
        with torch.no_grad():
            merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()(input_ids=ids).logits
        assert float((merged - trained).abs().max() / trained.abs().max()) < 1e-5
    else:
        with pytest.raises(ConfigError, match="cannot be merged: "):
            merge_lora(cfg.model, out, tmp_path / "merged")
        answer = run_ft("inference", str(tmp_path / "cfg.yml"), "--prompt", "Reverse the words.", "--input", "cat dog sun",
                        "--max-new-tokens", "4", cwd=tmp_path)
        assert answer.returncode == 0 and "Position ids" not in answer.stderr, answer.stderr
        scored = run_ft("eval", str(tmp_path / "cfg.yml"), "--data", str(tmp_path / "train.jsonl"), "--limit", "8", cwd=tmp_path)
        assert scored.returncode == 0 and "perplexity" in scored.stdout, scored.stderr[-2000:]


@pytest.mark.parametrize("keys, words", [
    ({"adapter": "prompt_tuning", "sample_packing": True}, "set `sample_packing: false`"),
    ({"adapter": "prefix_tuning", "padding_free": True}, "set `padding_free: false`"),
    ({"adapter": "prefix_tuning", "gradient_checkpointing": True}, "set `gradient_checkpointing: false`"),
    ({"adapter": "loha", "load_in_4bit": True}, "`adapter: loha` does not train on a 4-bit base"),
    ({"adapter": "vera", "load_in_8bit": True}, "`adapter: vera` does not train on a 8-bit base"),
    ({"adapter": "ia3", "loraplus_lr_ratio": 16}, "LoRA+ sets the learning rates of LoRA's matrices"),
    ({"adapter": "lokr", "lora_target_parameters": ["mlp.down_proj.weight"]}, "this run has `adapter: lokr`"),
    ({"adapter": "dora"}, "unknown adapter `dora`"),
    ({"adapter": "bottleneck", "lora_model_dir": "old"}, "continuing bottleneck adapters is not supported yet"),
    ({"adapter": "prompt_tuning", "fsdp": ["full_shard"]}, "`adapter: prompt_tuning` is not supported with fsdp yet"),
])
def test_what_a_method_cannot_do_is_refused_by_validate(keys: dict, words: str, tmp_path: Path):
    import yaml

    body = {"base_model": "m", "datasets": [{"path": "d.jsonl", "type": "alpaca"}], **keys}
    (tmp_path / "cfg.yml").write_text(yaml.safe_dump(body))
    result = run_ft("validate", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 2 and words in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_prompt_learning_trains_on_padded_rows_without_the_chunked_loss(tmp_path: Path, tiny_model_dir):
    trainer, _, _ = build(make_config(tmp_path, tiny_model_dir("llama"), adapter="prompt_tuning", num_virtual_tokens=8,
                                      prompt_tuning_init_text="Reverse the words"))
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" in batch and "cu_seq_lens_q" not in batch and not trainer.chunked_loss


def test_loraplus_gives_the_b_matrices_ratio_times_the_learning_rate(tmp_path: Path, tiny_model_dir):
    trainer, model, _ = build(make_config(tmp_path, tiny_model_dir("llama"), adapter="lora", lora_target_linear=True,
                                          loraplus_lr_ratio=16, learning_rate=0.001, weight_decay=0.0))
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    rate = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            rate[names[id(p)]] = group["lr"]
    a = {r for n, r in rate.items() if "lora_A" in n}
    b = {r for n, r in rate.items() if "lora_B" in n}
    assert a == {0.001} and len(b) == 1 and b.pop() == pytest.approx(0.016), (a, b)


@pytest.mark.parametrize("method", MERGEABLE)
def test_packed_rows_equal_rows_one_by_one(method: str, tiny_model_dir, tiny_tokenizer):
    """The methods that may pack: a packed batch gives each row's loss and gradients as the row alone."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from ft.config.adapter import AdapterConfig
    from ft.model.methods import METHODS as REGISTRY
    from ft.model.packed_attention import VARLEN, register
    from test_packing import _rows, packed_vs_single

    register()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"), dtype=torch.float32, attn_implementation=VARLEN)
    a = AdapterConfig(adapter=method, lora_r=4, lora_alpha=8)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, REGISTRY.get(method).build(a, targets, None, "")).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)  # a trained adapter: every weight matters
    loss_diff, grad_diff = packed_vs_single(model, _rows(tiny_tokenizer))
    assert loss_diff < 1e-5 and grad_diff < 1e-5, (loss_diff, grad_diff)


@pytest.mark.parametrize("method", METHODS)
def test_stop_and_resume_give_the_same_weights(method: str, tmp_path: Path, tiny_model_dir):
    from safetensors.torch import load_file

    from ft.commands.train import run_train

    weights = []
    for name, stops in (("straight", [4]), ("resumed", [2, 4])):
        (tmp_path / name).mkdir()
        for steps in stops:
            cfg = make_config(tmp_path / name, tiny_model_dir("llama"), adapter=method, max_steps=steps, save_steps=2,
                              lora_target_linear=method in MERGEABLE)
            run_train(cfg)
        saved = "bottleneck_model.safetensors" if method == "bottleneck" else "adapter_model.safetensors"
        weights.append(load_file(str(Path(cfg.training.output_dir) / saved)))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.allclose(weights[0][n], weights[1][n], rtol=1e-5, atol=1e-7) for n in weights[0])


@pytest.mark.parametrize("keys", [
    {"adapter": "ia3"}, {"adapter": "ia3", "lora_target_linear": True}, {"adapter": "loha", "lora_target_linear": True},
    {"adapter": "lokr", "lora_target_linear": True}, {"adapter": "lokr", "lora_r": 64, "lora_target_linear": True},
    {"adapter": "vera", "lora_r": 16}, {"adapter": "prompt_tuning", "num_virtual_tokens": 7},
    {"adapter": "prefix_tuning"}, {"adapter": "prefix_tuning", "prefix_projection": True, "prefix_encoder_hidden_size": 24},
    {"adapter": "bottleneck", "bottleneck_size": 24},
], ids=lambda k: "-".join(f"{v}" for v in k.values()))
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_plan_counts_each_methods_parameters_exactly(keys: dict, arch: str, tmp_path: Path, tiny_model_dir):
    from ft.plan.estimate import estimate
    from ft.plan.shapes import read_shape

    cfg = make_config(tmp_path, tiny_model_dir(arch), bf16=False, **keys)
    trainer, model, _ = build(cfg)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    plan = estimate(cfg, read_shape(str(tiny_model_dir(arch))))
    assert plan.parts["trainable weights (fp32)"] == 4 * trained, (plan.parts["trainable weights (fp32)"] // 4, trained)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_adapters_apply_to_the_original_base(init: str, tmp_path: Path, tiny_model_dir):
    """They start from the base weights and take that part out of them; the adapter saved at the end, on the
    original base, gives the trained model's logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = make_config(tmp_path, tiny_model_dir("llama"), adapter="lora", lora_r=4, lora_target_linear=True,
                      peft_init_lora_weights=init, max_steps=4, learning_rate=0.01)
    trainer, model, _ = build(cfg)
    trainer.train()
    trainer.save_model(cfg.training.output_dir)
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 64, 12]])
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=ids).logits
        saved = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")),
                                          cfg.training.output_dir).eval()(input_ids=ids).logits
    config = json.loads((Path(cfg.training.output_dir) / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["init_lora_weights"] is True  # converted: a plain LoRA of rank 2r
    assert float((saved - trained).abs().max() / trained.abs().max()) < 1e-5


def test_prompt_learning_is_refused_under_zero3_before_anything_loads(tmp_path: Path, tiny_model_dir):
    """Seen on two CPU ranks: prompt tuning under ZeRO-3 never finished its first step (ZeRO-2 trains)."""
    from ft.commands.train import build_run
    from ft.errors import UserError

    cfg = make_config(tmp_path, tiny_model_dir("llama"), adapter="prefix_tuning",
                      deepspeed=str(Path(__file__).parents[1] / "deepspeed_configs/zero3.json"))
    with pytest.raises(UserError, match="`adapter: prefix_tuning` is not supported with DeepSpeed ZeRO-3 yet"):
        build_run(cfg, 2)


@pytest.mark.parametrize("bits, iterations", [(4, 1), (8, 2)])
def test_loftq_starts_from_the_quantization_error_and_loads_and_merges_as_trained(bits: int, iterations: int,
                                                                                  tmp_path: Path, tiny_model_dir):
    """LoftQ (Axolotl's `peft: loftq_config`): each targeted base weight becomes its quantized value and LoRA starts
    as the rank-r fit of what that lost (closer to the base than the quantized weight alone); the saved adapter
    records it, and ft's loading (inference, eval, merge) quantizes the original base again: the trained logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ft.model.loftq import load_adapter, lora_layers, roundtrip
    from ft.model.merge import merge_lora

    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    cfg = make_config(tmp_path, tiny_model_dir("llama"), adapter="lora", lora_r=4, lora_target_linear=True, bf16=False,
                      peft={"loftq_config": {"loftq_bits": bits, "loftq_iter": iterations}}, max_steps=4, learning_rate=0.01)
    trainer, model, _ = build(cfg)
    weights = dict(original.named_parameters())
    layers = lora_layers(model)
    assert len(layers) == 7 * original.config.num_hidden_layers
    for name, layer in layers:
        w = weights[name.removeprefix("base_model.model.") + ".weight"].detach()
        q = layer.get_base_layer().weight.detach()
        start = q + layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        assert float((start - w).norm()) < 0.95 * float((q - w).norm())  # the adapter takes up part of the error
        if iterations == 1:
            assert torch.equal(q, roundtrip(w, bits))
    trainer.train()
    trainer.save_model(cfg.training.output_dir)
    out = Path(cfg.training.output_dir)
    assert json.loads((out / "adapter_config.json").read_text())["loftq_config"] == {"loftq_bits": bits, "loftq_iter": iterations}
    ids = torch.tensor([[5, 17, 42, 99, 7, 3, 64, 12]])
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=ids).logits
        loaded = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")), out).eval()(input_ids=ids).logits
        bare = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama")), str(out)).eval()(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merge_lora(cfg.model, out, tmp_path / "merged")).eval()(input_ids=ids).logits
    scale = float(trained.abs().max())
    assert float((loaded - trained).abs().max()) / scale < 1e-5
    assert float((merged - trained).abs().max()) / scale < 1e-5
    assert float((bare - trained).abs().max()) / scale > 1e-3  # on the unquantized base it is another model


@pytest.mark.parametrize("keys, words", [
    ({"adapter": "qlora", "load_in_4bit": True}, "needs `adapter: lora` on a 16-bit base; this run has `adapter: qlora`"),
    ({"adapter": "lora", "load_in_8bit": True}, "LoftQ is not supported with a 8-bit base"),
    ({"adapter": "lora", "peft_use_dora": True}, "LoftQ is not supported with DoRA"),
    ({"adapter": "lora", "fsdp": ["full_shard"]}, "LoftQ is not supported with FSDP"),
    ({"adapter": "lora", "peft_init_lora_weights": "pissa"}, "this run has `peft_init_lora_weights: pissa`"),
    ({"adapter": "lora", "lora_target_parameters": ["mlp.experts.down_proj"]}, "which it does not start"),
])
def test_loftq_where_it_cannot_start_is_refused_by_validate(keys: dict, words: str, tmp_path: Path):
    test_what_a_method_cannot_do_is_refused_by_validate({**keys, "peft": {"loftq_config": {"loftq_bits": 4}}}, words, tmp_path)
