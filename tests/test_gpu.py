"""CUDA tests: real kernels on a GPU (torch's varlen flash attention, bf16, bitsandbytes 4-bit on CUDA).

They skip without CUDA. The CPU suite hides the GPU (conftest.py), so run these on their own:
    FT_TEST_GPU=1 python -m pytest tests/test_gpu.py
Tolerances are for bf16: per-row losses within 2% of the rows run one by one through the model's own
attention, gradients within 5% of the largest gradient entry; a planted leak must differ by far more.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compare import scaled_difference
from test_packing import _rows, packed_vs_single

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

LOSS_TOL, GRAD_TOL = 2e-2, 5e-2


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_torch_varlen_kernel_equals_the_reference(window, dtype):
    """torch's varlen kernel and per_row keep one contract: GQA head mapping, causal, window, scale; fp32
    inputs go through the glue's cast to bf16 and come back in fp32."""
    from ft.model.packed_attention import boundaries, per_row, varlen_attention

    torch.manual_seed(0)
    lengths, heads, kv_heads, dim = [37, 1, 120, 64, 9], 8, 2, 64
    total = sum(lengths)
    q, k, v = (torch.randn(1, h, total, dim, device="cuda", dtype=dtype) for h in (heads, kv_heads, kv_heads))
    b = {key: val.cuda() if torch.is_tensor(val) else val for key, val in boundaries(lengths).items()}

    class Module:
        scaling = dim**-0.5
        sliding_window = window

    got, _ = varlen_attention(Module(), q, k, v, None, **b)
    assert got.dtype == dtype and got.shape == (1, total, heads, dim)
    flat = [t[0].transpose(0, 1).float() for t in (q, k, v)]
    want = per_row(*flat, b["cu_seq_lens_q"], b["max_length_q"], Module.scaling, window)
    assert torch.allclose(got[0].float(), want, atol=2e-2), float((got[0].float() - want).abs().max())


@pytest.mark.parametrize("window", [None, 5])
def test_torch_varlen_kernel_takes_queries_after_earlier_keys_as_context_parallelism_does(window):
    """Context parallelism's runs (ft.train.context_parallel.segments): each run's queries are the last of its keys,
    the causal mask aligned to the bottom right, through torch's varlen kernel in bf16 and through per_row (fp32), the
    rows with and without keys before their first query; the gradients of q, k and v too."""
    from ft.model.packed_attention import attend, kernel_available, per_row

    if not kernel_available(64, window):
        pytest.skip("torch's varlen kernel is not in this torch")
    torch.manual_seed(0)
    queries, keys, heads, kv_heads, dim = [30, 1, 120, 9], [30, 40, 300, 9], 8, 2, 64
    q = torch.randn(sum(queries), heads, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(sum(keys), kv_heads, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    cu_q, cu_k = [0], [0]
    for a, b in zip(queries, keys):
        cu_q.append(cu_q[-1] + a)
        cu_k.append(cu_k[-1] + b)
    as_tensor = lambda edges: torch.tensor(edges, dtype=torch.int32, device="cuda")  # noqa: E731
    got = attend(q, k, v, as_tensor(cu_q), max(queries), dim**-0.5, window, cu_k=as_tensor(cu_k), longest_k=max(keys))
    grads = torch.autograd.grad(got.float().square().sum(), (q, k, v))
    flat = [t.detach().float().requires_grad_() for t in (q, k, v)]
    want = per_row(*flat, cu_q, max(queries), dim**-0.5, window, cu_k=cu_k)
    want_grads = torch.autograd.grad(want.square().sum(), flat)
    assert scaled_difference([got.float()], [want]) < 2e-2
    assert scaled_difference([g.float() for g in grads], list(want_grads)) < GRAD_TOL


def _ft_model(tmp_path: Path, tiny_model_dir, arch: str, method: str, ft_keys: dict | None = None, **config):
    """A model exactly as ft train builds it for packed batches, on the GPU in bf16 (`ft_keys`: more ft keys;
    `config`: the model's own settings changed)."""
    from train_helpers import make_config

    from ft.commands.train import model_for_training
    from ft.tokenizer.load import load_tokenizer

    keys = {"adapter": "lora", "lora_r": 8, "lora_alpha": 16, "lora_target_linear": True, "bf16": True,
            "sample_packing": True, **({"adapter": "qlora", "load_in_4bit": True} if method == "qlora" else {}), **(ft_keys or {})}
    model_dir = tiny_model_dir(arch)
    if config:  # e.g. a sliding window shorter than the rows, on a copy of the shared tiny model
        import shutil

        from transformers import AutoConfig

        model_dir = Path(shutil.copytree(model_dir, tmp_path / "model"))
        cfg = AutoConfig.from_pretrained(model_dir)
        for key, value in config.items():
            setattr(cfg, key, value)
        cfg.save_pretrained(model_dir)
    cfg = make_config(tmp_path, model_dir, **keys)
    model, _, kernel = model_for_training(cfg, load_tokenizer(cfg.model), "packed")
    if method != "qlora":  # a quantized model is loaded onto the GPU already
        model = model.cuda()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model.eval(), kernel


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma2", "phi3"])
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_packed_rows_equal_rows_one_by_one_on_cuda(arch, method, tmp_path: Path, tiny_model_dir, tiny_tokenizer):
    model, kernel = _ft_model(tmp_path, tiny_model_dir, arch, method, **({"sliding_window": 6} if arch == "mistral" else {}))
    assert kernel == ("per-row eager" if arch == "gemma2" else "torch varlen flash attention")
    loss_diff, grad_diff = packed_vs_single(model, _rows(tiny_tokenizer, n=8), bf16=True)
    assert loss_diff < LOSS_TOL and grad_diff < GRAD_TOL, (loss_diff, grad_diff)


def test_a_planted_leak_is_caught_on_cuda(tmp_path: Path, tiny_model_dir, tiny_tokenizer):
    model, _ = _ft_model(tmp_path, tiny_model_dir, "llama", "lora")
    rows = _rows(tiny_tokenizer, n=8)
    clean = packed_vs_single(model, rows, bf16=True)
    model.set_attn_implementation("sdpa")  # a causal mask over the whole bin: rows see earlier rows
    leaked = packed_vs_single(model, rows, leak=True, bf16=True)
    assert leaked[0] > max(5 * clean[0], LOSS_TOL) or leaked[1] > max(5 * clean[1], GRAD_TOL), (clean, leaked)


def test_ft_train_on_cuda_packed_and_padding_free(tmp_path: Path, tiny_model_dir):
    """`ft train` on the GPU: packed and unpacked (padding-free by default) runs say which kernel ran."""
    import json

    from conftest import run_ft
    from train_helpers import make_config

    for name, keys in (("packed", {"sample_packing": True}), ("padding-free", {})):
        folder = tmp_path / name
        folder.mkdir()
        make_config(folder, tiny_model_dir("llama"), bf16=True, adapter="lora", lora_target_linear=True, **keys)
        result = run_ft("train", "cfg.yml", cwd=folder, env={"FT_TEST_GPU": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads((folder / "out/summary.json").read_text())
        assert summary["batches"] == name and summary["attention"] == "torch varlen flash attention", summary
        assert summary["slot_efficiency"] == 1.0


def test_chunked_loss_equals_the_plain_loss_in_bf16_on_cuda(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from ft.train.loss import catch_hidden_states, chunked_cross_entropy

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"), dtype=torch.bfloat16).cuda()
    ids = torch.randint(5, 1000, (1, 512), device="cuda")
    labels = ids.clone()
    labels[:, :100] = -100
    plain = model(input_ids=ids, labels=labels).loss
    plain_grads = torch.autograd.grad(plain, list(model.parameters()))
    with catch_hidden_states(model) as hidden:
        model(input_ids=ids, logits_to_keep=1)
    chunked = chunked_cross_entropy(hidden.value, labels, model.get_output_embeddings(), chunk=100)
    chunked_grads = torch.autograd.grad(chunked, list(model.parameters()))
    assert abs(float(plain - chunked)) < 1e-2 * float(plain)
    assert scaled_difference(chunked_grads, plain_grads) < GRAD_TOL


def test_activation_offloading_on_cuda_frees_memory_and_keeps_gradients(tiny_model_dir):
    """One backward on a 32k-token row, with the default min_bytes: the LoRA gradients with offloading equal
    those without (a stream race, a copy read before it landed, would garble them), and what the forward
    leaves allocated for the backward drops by about the checkpointed layer inputs."""
    from contextlib import nullcontext

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ft.train.offload import ActivationOffload

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"), dtype=torch.bfloat16).cuda()
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base.enable_input_require_grads()
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")).train()
    ids = torch.randint(5, 1000, (1, 32768), device="cuda")

    def backward(offload):
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16), (offload.active() if offload else nullcontext()):
            loss = model(input_ids=ids, labels=ids).loss
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated() - before
        loss.backward()
        torch.cuda.synchronize()
        return held, [p.grad.float().clone() for p in model.parameters() if p.requires_grad]

    kept_held, kept = backward(None)
    offload = ActivationOffload()
    moved_held, moved = backward(offload)
    layer_input = 32768 * model.config.hidden_size * 2  # bytes of one checkpointed layer input in bf16
    assert offload.moved >= model.config.num_hidden_layers
    assert kept_held - moved_held > 0.8 * model.config.num_hidden_layers * layer_input, (kept_held, moved_held)
    assert scaled_difference(moved, kept) < 1e-2  # kernels with atomics may differ in the last bf16 bits


def test_quantized_base_stays_bf16_on_cuda(tmp_path: Path, tiny_model_dir):
    from train_helpers import make_config

    from ft.commands.train import model_for_training
    from ft.tokenizer.load import load_tokenizer

    cfg = make_config(tmp_path, tiny_model_dir("llama"), bf16=True, adapter="qlora", load_in_4bit=True, lora_target_linear=True)
    model, _, _ = model_for_training(cfg, load_tokenizer(cfg.model), "packed")
    assert {p.dtype for n, p in model.named_parameters() if "lora_" not in n} == {torch.bfloat16, torch.uint8}


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_fused_lora_update_equals_peft_path_on_cuda(method, tmp_path: Path, tiny_model_dir, tiny_tokenizer):
    """ft's in-place LoRA update (lora_fused) in bf16 on the GPU: the loss and LoRA gradients of PEFT's own path."""
    model, _ = _ft_model(tmp_path, tiny_model_dir, "llama", method)
    fused = [m for m in model.modules() if "forward" in vars(m) and hasattr(m, "lora_A")]
    assert fused
    ids = torch.tensor([tiny_tokenizer("a fused update " * 40)["input_ids"][:128]], device="cuda")

    def loss_and_grads():
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return float(loss), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}

    model.train()
    loss, grads = loss_and_grads()
    for m in fused:
        del m.forward
    loss_peft, grads_peft = loss_and_grads()
    assert abs(loss - loss_peft) < LOSS_TOL * abs(loss_peft)
    assert scaled_difference(grads, grads_peft) < GRAD_TOL


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_liger_kernels_keep_the_loss_and_gradients_on_cuda(arch, tmp_path: Path, tiny_model_dir, tiny_tokenizer):
    """liger_rms_norm, liger_rope, liger_glu_activation (SwiGLU; GeGLU for Gemma-2): Liger's Triton kernels patched
    in, and the loss and LoRA gradients of the model's own layers in bf16."""
    pytest.importorskip("liger_kernel")
    ids = torch.tensor([tiny_tokenizer("the kernels " * 60)["input_ids"][:128]], device="cuda")
    results = []
    for name, keys in (("own", {}), ("liger", {"liger_rms_norm": True, "liger_rope": True, "liger_glu_activation": True})):
        (tmp_path / name).mkdir()
        model, _ = _ft_model(tmp_path / name, tiny_model_dir, arch, "lora", ft_keys=keys)
        liger = [m for m in model.modules() if getattr(getattr(m, "forward", None), "__module__", "").startswith("liger_kernel")]
        assert bool(liger) == bool(keys), len(liger)
        model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append((float(loss), {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}))
    (own_loss, own), (liger_loss, liger_grads) = results
    assert abs(own_loss - liger_loss) < LOSS_TOL * abs(own_loss)
    assert scaled_difference(liger_grads, own) < GRAD_TOL


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_chunked_rms_norm_keeps_the_loss_and_gradients_and_holds_less_on_cuda(arch, tmp_path: Path, tiny_model_dir):
    """chunked_rms_norm in bf16 on the GPU, one 4k-token row with LoRA: the loss and LoRA gradients of the model's
    own norms, and what the forward leaves allocated for the backward lower by about the fp32 copies of their inputs
    that the model's norms keep (two a layer for Llama, four for Gemma-2, and the final one), each norm's bf16 input
    kept instead."""
    tokens = 4096  # Gemma-2 keeps its eager attention's scores (tokens² a head): no longer
    ids = torch.randint(5, 1000, (1, tokens), device="cuda")
    results = []
    for name, keys in (("own", {}), ("chunked", {"chunked_rms_norm": True})):
        (tmp_path / name).mkdir()
        model, _ = _ft_model(tmp_path / name, tiny_model_dir, arch, "lora", ft_keys=keys)
        norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
        assert all(("forward" in vars(m)) == bool(keys) for m in norms)
        model.train()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        held = torch.cuda.memory_allocated() - before
        loss.backward()
        results.append((float(loss), held, {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}))
    (own_loss, own_held, own), (loss, held, grads) = results
    assert abs(own_loss - loss) < LOSS_TOL * abs(own_loss)
    assert scaled_difference(grads, own) < GRAD_TOL
    saved_per_norm = tokens * model.config.hidden_size * (4 - 2)  # an fp32 copy against the bf16 input itself
    assert own_held - held > 0.8 * len(norms) * saved_per_norm, (own_held, held)


def test_fill_micro_batch_fills_the_gpu_with_the_same_rows_a_step(tmp_path: Path, tiny_model_dir):
    """fill_micro_batch on a GPU with room: 1 × 8 becomes 8 × 1 for the tiny model (the same rows per step)."""
    from train_helpers import build, make_config

    cfg = make_config(tmp_path, tiny_model_dir("llama"), adapter="lora", bf16=True, micro_batch_size=1,
                      gradient_accumulation_steps=8, fill_micro_batch=True)
    trainer, _, _ = build(cfg)
    assert (trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps) == (8, 1)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_selective_checkpointing_keeps_the_attention_kernels_outputs_on_cuda(method, tmp_path: Path, tiny_model_dir):
    """selective_checkpointing in bf16 on the GPU, one 4k-token row: plain checkpointing's loss and gradients, the
    attention kernel's forward run once a layer (twice with plain checkpointing), and what the forward leaves for the
    backward higher by each layer's attention output (bf16) and log-sum-exp (fp32 per query head)."""
    from collections import Counter

    from test_selective_checkpointing import OpCalls, _kernel_forwards

    tokens = 4096
    ids = torch.randint(5, 1000, (1, tokens), device="cuda")
    results = []
    for name, keys in (("plain", {}), ("selective", {"selective_checkpointing": True})):
        (tmp_path / name).mkdir()
        model, _ = _ft_model(tmp_path / name, tiny_model_dir, "llama", method,
                             ft_keys={"gradient_checkpointing": True, **keys})
        model.train()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        with OpCalls() as ops:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            held = torch.cuda.memory_allocated() - before
            loss.backward()
        results.append((float(loss), held, _kernel_forwards(ops.calls),
                        {n: p.grad.float() for n, p in model.named_parameters() if p.requires_grad}))
    (plain_loss, plain_held, plain_kernels, plain), (loss, held, kernels, grads) = results
    c = model.config
    assert kernels and plain_kernels == Counter({op: 2 * n for op, n in kernels.items()}), (kernels, plain_kernels)
    assert sum(kernels.values()) == c.num_hidden_layers
    assert abs(plain_loss - loss) < LOSS_TOL * abs(plain_loss)
    assert scaled_difference(grads, plain) < GRAD_TOL
    kept = c.num_hidden_layers * tokens * (c.num_attention_heads * (c.hidden_size // c.num_attention_heads) * 2 + c.num_attention_heads * 4)
    assert abs((held - plain_held) - kept) <= 0.1 * kept, (held, plain_held, kept)


def test_grouped_attention_backward_gives_the_whole_calls_gradients_in_less_memory_on_cuda(tmp_path: Path):
    """torch's varlen kernel in bf16 at Llama 3.1 8B's attention shape (32 query heads, 8 key/value heads, head_dim
    128), one 16,384-token row: grouped_attention_backward's gradients of q, k and v are the whole call's, and the
    backward's peak is lower by what the plan says within 15% (seven eighths of the kernel's fp32 query-gradient
    accumulator and per-query-head key and value gradients, less what one group's pieces hold)."""
    from ft.model.packed_attention import attend, kernel_available
    from ft.plan.estimate import flash_workspace, grouped_pieces
    from test_attention_backward import _plan

    if not kernel_available(128, None):
        pytest.skip("torch's varlen kernel is not in this torch")
    (tmp_path / "whole").mkdir()
    (tmp_path / "grouped").mkdir()
    cfg, shape, _ = _plan(tmp_path / "whole", "llama3-8b.json")
    grouped_cfg, _, _ = _plan(tmp_path / "grouped", "llama3-8b.json", grouped_attention_backward=True)
    tokens = 16384
    planned = tokens * (flash_workspace(shape, 2, cfg) - flash_workspace(shape, 2, grouped_cfg)
                        - grouped_pieces(shape, 2, grouped_cfg))
    torch.manual_seed(0)
    q = torch.randn(tokens, 32, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(tokens, 8, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    cu = torch.tensor([0, tokens], dtype=torch.int32, device="cuda")
    upstream = torch.randn_like(q)
    results = []
    for grouped in (False, True):
        out = attend(q, k, v, cu, tokens, 128**-0.5, None, grouped=grouped)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        grads = torch.autograd.grad(out, (q, k, v), upstream)
        torch.cuda.synchronize()
        results.append(([g.float() for g in grads], torch.cuda.max_memory_allocated() - before))
        del out, grads
    (whole, whole_peak), (grads, peak) = results
    assert scaled_difference(grads, whole) < GRAD_TOL
    assert abs((whole_peak - peak) - planned) <= 0.15 * planned, (whole_peak, peak, planned)
