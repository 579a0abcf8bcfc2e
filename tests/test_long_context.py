"""Long context: the chunked loss equals the plain loss, and activation offloading changes no gradient."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from compare import relative_difference
from train_helpers import build, make_config


def _model(tiny_model_dir, arch):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch), dtype=torch.float32)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])  # gemma2: the final logit soft-capping
@pytest.mark.parametrize("items", [None, 37])
def test_chunked_loss_equals_the_plain_loss(arch, items, tiny_model_dir):
    """Value and gradients within 1e-6 in fp32: ignored labels, two packed rows, chunks smaller than the
    sequence, and the sum over num_items_in_batch as the Trainer normalizes across accumulation."""
    from ft.train.loss import catch_hidden_states, chunked_cross_entropy

    model = _model(tiny_model_dir, arch)
    torch.manual_seed(1)
    ids = torch.randint(5, 1000, (2, 48))
    labels = ids.clone()
    labels[:, :10] = -100  # prompts
    labels[0, 30] = -100  # the first label of a second packed row
    kwargs = {"num_items_in_batch": torch.tensor(items)} if items else {}
    plain = model(input_ids=ids, labels=labels, **kwargs).loss
    plain_grads = torch.autograd.grad(plain, list(model.parameters()), allow_unused=True)
    with catch_hidden_states(model) as hidden:
        out = model(input_ids=ids, logits_to_keep=1)
    assert out.logits.shape[1] == 1  # the full logits were never built
    softcap = getattr(model.config, "final_logit_softcapping", None)
    chunked = chunked_cross_entropy(hidden.value, labels, model.get_output_embeddings(), softcap=softcap,
                                    num_items_in_batch=kwargs.get("num_items_in_batch"), chunk=7)
    chunked_grads = torch.autograd.grad(chunked, list(model.parameters()), allow_unused=True)
    assert abs(float(plain - chunked)) < 1e-6 * float(plain)
    assert relative_difference(chunked_grads, plain_grads) < 1e-5


def _train(tmp_path: Path, tiny_model_dir, name: str, offload=None, **keys):
    folder = tmp_path / name
    folder.mkdir()
    cfg = make_config(folder, tiny_model_dir("llama"), max_steps=3, adapter="lora", lora_target_linear=True, **keys)
    trainer, model, _ = build(cfg)
    if offload is not None:
        trainer.offload = offload
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return trainer, losses, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_ft_train_with_the_chunked_loss_equals_the_plain_loss(tmp_path: Path, tiny_model_dir):
    """Through the Trainer: packed rows, gradient accumulation (num_items_in_batch), three steps."""
    keys = {"sample_packing": True, "sequence_len": 256, "micro_batch_size": 1, "gradient_accumulation_steps": 2}
    chunked, chunked_losses, chunked_weights = _train(tmp_path, tiny_model_dir, "chunked", **keys)
    plain, plain_losses, plain_weights = _train(tmp_path, tiny_model_dir, "plain", chunked_cross_entropy=False, **keys)
    assert chunked.chunked_loss and not plain.chunked_loss
    assert chunked_losses == pytest.approx(plain_losses, rel=1e-6)
    assert relative_difference(chunked_weights, plain_weights) < 1e-5


@pytest.mark.parametrize("selective", [False, True], ids=["plain", "selective"])
def test_activation_offloading_changes_no_gradient(selective, tmp_path: Path, tiny_model_dir):
    """The pack/unpack hooks really move the checkpointed layer inputs (on CPU: to other host buffers),
    and training comes out the same to the bit; with selective_checkpointing too (the layers keeping their
    attention outputs while their inputs move) against plain checkpointing without offloading."""
    from ft.train.offload import ActivationOffload

    offload = ActivationOffload(devices=("cpu",), min_bytes=0)
    keys = {"gradient_checkpointing": True}
    _, moved_losses, moved_weights = _train(tmp_path, tiny_model_dir, "offloaded", offload=offload,
                                            selective_checkpointing=selective, **keys)
    _, kept_losses, kept_weights = _train(tmp_path, tiny_model_dir, "kept", **keys)
    assert offload.moved >= 3 * 2  # at least each layer's input, every step
    assert moved_losses == kept_losses
    assert relative_difference(moved_weights, kept_weights) == 0.0


def test_activation_offloading_moves_every_checkpointed_layer_input(tmp_path: Path, tiny_model_dir):
    """The first layer's input too: with frozen embeddings it is a leaf made to require grad, not the output
    of a differentiable op."""
    from train_helpers import fixed_batch

    from ft.train.offload import ActivationOffload

    cfg = make_config(tmp_path, tiny_model_dir("llama"), adapter="lora", lora_target_linear=True, gradient_checkpointing=True)
    trainer, model, tokenizer = build(cfg)
    inputs, moved = [], set()

    class Recording(ActivationOffload):
        def pack(self, tensor):
            packed = super().pack(tensor)
            if packed is not tensor:
                moved.add(tensor.data_ptr())
            return packed

    layers = model.get_base_model().model.layers
    for layer in layers:
        layer.register_forward_pre_hook(lambda module, args, kwargs: inputs.append(kwargs.get("hidden_states", args[0] if args else None).data_ptr()),
                                        with_kwargs=True)
    model.train()
    offload = Recording(devices=("cpu",), min_bytes=0)
    with offload.active():
        model(**fixed_batch(tokenizer)).loss.backward()
    first_pass = inputs[: len(layers)]  # the recompute in the backward pass calls the layers again
    assert len(first_pass) == len(layers) and all(ptr in moved for ptr in first_pass)


def test_activation_offloading_needs_checkpointing(tmp_path: Path):
    from conftest import run_ft

    base = "base_model: m\ndatasets:\n  - path: d\n    type: alpaca\nactivation_offloading: true\n"
    (tmp_path / "cfg.yml").write_text(base)
    result = run_ft("validate", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 2 and "turn on `gradient_checkpointing`" in result.stderr, result.stderr
    (tmp_path / "cfg.yml").write_text(base + "gradient_checkpointing: true\nfsdp: [full_shard]\n")
    result = run_ft("validate", "cfg.yml", cwd=tmp_path)  # FSDP2 and ZeRO take it (tests/test_fsdp_cpu.py, test_distributed.py)
    assert result.returncode == 0, result.stderr


def _one_packed_step(folder: Path, model_dir: Path, **keys) -> tuple[float, dict, Any]:
    """One packed batch of rows up to 256 tokens through ft's own trainer, forward and backward: (the loss, the
    trainable weights' gradients, the model)."""
    folder.mkdir()
    trainer, model, _ = build(make_config(folder, model_dir, sample_packing=True, sequence_len=256, **keys))
    batch = next(iter(trainer.get_train_dataloader()))
    batch.pop("ft_real_tokens")
    model.train()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, model


@pytest.mark.parametrize("checkpointing", [False, True])
def test_tiled_mlp_gives_the_gradients_of_the_whole_mlp(checkpointing, tmp_path: Path, tiny_model_dir):
    """Tiles of 16 tokens (every row spans several), one packed batch through ft's own trainer: the same
    loss and LoRA gradients to fp32 round-off."""
    import functools

    def grads(name: str, **keys):
        loss, grads, model = _one_packed_step(tmp_path / name, tiny_model_dir("llama"), adapter="lora", lora_target_linear=True,
                                              gradient_checkpointing=checkpointing, **keys)
        return loss, grads, [isinstance(m.forward, functools.partial) for n, m in model.named_modules() if n.endswith(".mlp")]

    tiled_loss, tiled_grads, tiled = grads("tiled", tiled_mlp=True, tiled_mlp_tokens=16)
    whole_loss, whole_grads, whole = grads("whole")
    assert tiled and all(tiled) and not any(whole)
    assert abs(tiled_loss - whole_loss) < 1e-6 * abs(whole_loss)
    assert relative_difference(tiled_grads, whole_grads) < 1e-5


def test_activation_offloading_moves_no_view_and_no_cast_weight(tmp_path: Path, tiny_model_dir):
    """What a copy cannot free stays: views (the chunked loss's chunk inputs are slices of the final hidden
    states) and autocast's bf16 copies of the LoRA weights (a linear layer saves its cast weight as a transposed
    view of it). The hooks are offered both, so this can fail. Without checkpointing, so that what each layer
    saves reaches the hooks too. On PEFT's LoRA path (`lora_fused: false`): ft's fused update keeps the fp32 LoRA
    weights themselves, not autocast's copies."""
    from ft.train.offload import ActivationOffload, cast_of_parameter

    cfg = make_config(tmp_path, tiny_model_dir("llama"), adapter="lora", lora_target_linear=True, sample_packing=True, sequence_len=256,
                      lora_fused=False)
    trainer, model, _ = build(cfg)
    offered, moved = [], []

    def kind(tensor) -> str:
        if cast_of_parameter(tensor) or (tensor._base is not None and cast_of_parameter(tensor._base)):
            return "cast weight"
        return "view" if tensor._base is not None else "other"

    class Recording(ActivationOffload):
        def pack(self, tensor):
            packed = super().pack(tensor)
            offered.append(kind(tensor))
            if packed is not tensor:
                moved.append(kind(tensor))
            return packed

    trainer.offload = Recording(devices=("cpu",), min_bytes=0)
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16), trainer.offload.active():
        trainer.compute_loss(model, {k: v for k, v in batch.items() if k != "ft_real_tokens"}).backward()
    assert trainer.chunked_loss and {"view", "cast weight", "other"} <= set(offered), set(offered)
    assert moved and set(moved) == {"other"}, moved


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma2", "phi3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_chunked_rms_norm_is_each_architectures_own_norm(arch, dtype, tiny_model_dir, monkeypatch):
    """chunked_rms_norm (ft.model.rms_norm), chunks of 3 tokens over 2 rows of 7: the forward equals the model's own
    norm bit for bit; the gradients of the input and of the weight (a full fine-tune trains it) equal autograd's
    through the model's norm within fp32 round-off (bf16: within a unit of its last place)."""
    import functools

    from ft.model import rms_norm

    model = _model(tiny_model_dir, arch).to(dtype)
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    monkeypatch.setattr(rms_norm, "CHUNK_BYTES", 4 * norms[0].weight.shape[0] * 3)
    torch.manual_seed(1)
    for norm in norms:  # the models start their norms at one weight (Gemma's at zero): a random one here
        torch.nn.init.normal_(norm.weight)
    x = torch.randn(2, 7, norms[0].weight.shape[0], dtype=dtype, requires_grad=True)
    grad = torch.randn(2, 7, norms[0].weight.shape[0], dtype=dtype)

    def run(norm):
        x.grad, norm.weight.grad = None, None
        out = norm(x)
        out.backward(grad)
        return out.detach(), x.grad.clone(), norm.weight.grad.clone()

    own = [run(norm) for norm in norms]
    assert rms_norm.chunk_norms(model) == len(norms) > 0
    assert all(isinstance(norm.forward, functools.partial) for norm in norms)
    bound = 1e-5 if dtype == torch.float32 else 1e-2
    for norm, (out, dx, dw) in zip(norms, own):
        ours, our_dx, our_dw = run(norm)
        assert torch.equal(ours, out)
        assert relative_difference({"dx": our_dx.float(), "dw": our_dw.float()}, {"dx": dx.float(), "dw": dw.float()}) < bound


def test_the_plan_counts_the_chunk_the_norm_works_in():
    from ft.model import rms_norm
    from ft.plan import estimate

    assert estimate.NORM_CHUNK_BYTES == rms_norm.CHUNK_BYTES


def test_a_norm_of_another_formula_is_left_as_it_is(caplog):
    """A class named like a norm whose forward ft does not compute (here: no mean, a sum) keeps its own forward."""
    from ft.model.rms_norm import chunk_norms

    class OtherRMSNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(8))
            self.variance_epsilon = 1e-6

        def forward(self, x):
            return self.weight * x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + self.variance_epsilon)

    model = torch.nn.Sequential(OtherRMSNorm())
    with caplog.at_level("INFO", logger="ft"):
        assert chunk_norms(model) == 0
    assert "OtherRMSNorm computes another formula than the norms ft knows: left as it is" in caplog.text


@pytest.mark.parametrize("arch, keys", [("llama", {"adapter": "lora", "lora_target_linear": True, "gradient_checkpointing": True}),
                                        ("gemma2", {"adapter": "lora", "lora_target_linear": True}), ("llama", {})],
                         ids=["llama-lora-checkpointing", "gemma2-lora", "llama-full"])
def test_ft_train_with_chunked_rms_norm_gives_the_same_loss_and_gradients(arch, keys, tmp_path: Path, tiny_model_dir):
    """One packed batch through ft's own trainer, fp32: the same loss and gradients (the norms' own, in a full
    fine-tune) with the chunked norms as with the model's."""
    import functools

    def grads(name: str, **more):
        loss, grads, model = _one_packed_step(tmp_path / name, tiny_model_dir(arch), **keys, **more)
        replaced = {isinstance(m.forward, functools.partial) for m in model.modules() if type(m).__name__.endswith("RMSNorm")}
        assert replaced == {bool(more)}, replaced
        return loss, grads

    chunked_loss, chunked = grads("chunked", chunked_rms_norm=True)
    own_loss, own = grads("own")
    assert abs(chunked_loss - own_loss) < 1e-6 * abs(own_loss)
    assert relative_difference(chunked, own) < 1e-5
    if not keys:
        assert any("norm" in n for n in own)  # the norms' weights trained, and their gradients compared


def test_chunked_rms_norm_and_liger_rms_norm_are_one_choice(tmp_path: Path):
    from conftest import run_ft

    (tmp_path / "cfg.yml").write_text("base_model: m\ndatasets:\n  - path: d.jsonl\nchunked_rms_norm: true\nliger_rms_norm: true\n")
    result = run_ft("validate", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 2 and "`chunked_rms_norm` and `liger_rms_norm` both replace the model's norms; keep one" in result.stderr, result.stderr
