"""Sample packing: bins, batches, and proof that packed rows never see each other.

The invariance tests compare, in fp32, each row's loss and the gradients of the summed loss when rows
are packed into one sequence against the same rows run one by one. A planted leak (a plain causal mask
over the whole bin) must break them, so they can fail.

Gradients are compared relative to each tensor's own size (tests/compare.py). The packed and one-by-one
runs add the same numbers in other orders (other matrix shapes, other BLAS blockings), so in fp32 they
differ by round-off: about 5e-7 of a tensor's largest entry on every architecture and path, measured on an
AVX512-BF16 machine; in fp64 the sdpa paths agree to 1e-14 and the eager ones to 1e-7, the precision of
the fp32 softmax inside transformers' eager attention. That round-off once showed as 1.7e-5 against an
absolute bound of 1e-5 on Gemma-2's gradients, whose largest entry is 56. A planted leak is 0.7.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from compare import relative_difference, scaled_difference
from ft.data.packing import efficiency, pack
from ft.data.labels import IGNORE
from ft.train.batches import PackedCollator


def test_bins_hold_every_row_once_and_fit():
    rng = random.Random(0)
    lengths = [rng.randint(5, 300) for _ in range(2000)]
    bins = pack(lengths, 1024)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 1024 for b in bins)
    assert efficiency(lengths, bins, 1024) > 0.98
    assert pack(lengths, 1024) == bins  # deterministic


def test_collator_restarts_positions_and_ignores_each_first_label():
    rows = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4, 5], "labels": [-100, 5]}]
    batch = PackedCollator(pad_id=0, pad_to=8)([{"rows": rows}])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[IGNORE, 2, 3, IGNORE, 5, IGNORE, IGNORE, IGNORE]]
    assert "attention_mask" not in batch


def _rows(tokenizer, n=5):
    from ft.config.data import DataConfig, DatasetConfig
    from ft.data.tokenize import RowTokenizer
    from ft.tokenizer.load import adds_bos

    rng = random.Random(3)
    words = "cat dog red blue sun moon tree fish bird star".split()
    data = [{"instruction": "Echo " + " ".join(rng.choices(words, k=rng.randint(1, 9))),
             "output": " ".join(rng.choices(words, k=rng.randint(1, 12)))} for _ in range(n)]
    ds = DatasetConfig(path="x", type="alpaca")
    out = RowTokenizer(ds, DataConfig(datasets=[ds], train_on_inputs=False), tokenizer, adds_bos(tokenizer))(data)
    return [{"input_ids": i, "labels": [IGNORE] + l[1:]} for i, l in zip(out.input_ids, out.labels)]


def _row_loss(logits, labels):
    return torch.nn.functional.cross_entropy(logits[:-1].float(), labels[1:], ignore_index=IGNORE, reduction="sum")


def packed_vs_single(model, rows, leak: bool = False, bf16: bool = False) -> tuple[float, float]:
    """(largest per-row loss difference, largest gradient difference) between packed and one-by-one runs,
    both relative: the loss to its value, each gradient to its tensor's largest entry (tests/compare.py), or
    with `bf16`, to the largest gradient entry of all.

    The rows one by one run through the model's own attention (eager where it has no sdpa), so the packed
    path is held to transformers' masks, windows and scaling, not to itself."""
    own = "sdpa" if getattr(model, "_supports_sdpa", True) and model.config.model_type != "gemma2" else "eager"
    packed_attention = model.config._attn_implementation
    params = [p for p in model.parameters() if p.requires_grad]
    device = next(model.parameters()).device
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in PackedCollator(pad_id=0)([{"rows": rows}]).items()}
    kwargs = {"attention_mask": torch.ones_like(batch["input_ids"])} if leak else {}
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "ft_real_tokens")}
    logits = model(**inputs, **kwargs).logits[0]
    packed_losses, start = [], 0
    for r in rows:
        n = len(r["input_ids"])
        packed_losses.append(_row_loss(logits[start : start + n], batch["labels"][0, start : start + n]))
        start += n
    packed_grads = torch.autograd.grad(sum(packed_losses), params)
    single_losses, single_grads = [], [torch.zeros_like(p) for p in params]
    model.set_attn_implementation(own)
    for r in rows:
        ids = torch.tensor([r["input_ids"]], device=device)
        loss = _row_loss(model(input_ids=ids).logits[0], torch.tensor(r["labels"], device=device))
        single_losses.append(loss)
        for acc, g in zip(single_grads, torch.autograd.grad(loss, params)):
            acc += g
    model.set_attn_implementation(packed_attention)
    loss_diff = max(abs(float(a - b)) / max(1.0, abs(float(b))) for a, b in zip(packed_losses, single_losses))
    compare = scaled_difference if bf16 else relative_difference
    return loss_diff, compare(packed_grads, single_grads)


def _model(arch, tiny_model_dir, attention, lora, **config):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ft.model.packed_attention import register

    register()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(arch), dtype=torch.float32, attn_implementation=attention, **config)
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
    return model.eval()


@pytest.mark.parametrize(
    "arch, attention",
    [("llama", "ft_varlen"), ("llama", "ft_packed_eager"), ("qwen2", "ft_varlen"), ("gemma2", "ft_packed_eager"),
     ("phi3", "ft_varlen"), ("mistral", "ft_varlen"), ("mistral", "ft_packed_eager")],
)
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_packed_rows_equal_rows_one_by_one(arch, attention, lora, tiny_model_dir, tiny_tokenizer):
    """Mistral runs with a sliding window of 6 tokens, shorter than most rows, so the window is exercised."""
    torch.manual_seed(0)
    model = _model(arch, tiny_model_dir, attention, lora, **({"sliding_window": 6} if arch == "mistral" else {}))
    loss_diff, grad_diff = packed_vs_single(model, _rows(tiny_tokenizer))
    assert loss_diff < 1e-5 and grad_diff < 1e-5, (loss_diff, grad_diff)  # round-off is ~5e-7


def test_a_planted_leak_is_caught(tiny_model_dir, tiny_tokenizer):
    """A causal mask over the whole bin lets rows attend to earlier rows: the comparison must show it."""
    model = _model("llama", tiny_model_dir, "sdpa", lora=False)
    loss_diff, grad_diff = packed_vs_single(model, _rows(tiny_tokenizer), leak=True)
    assert loss_diff > 1e-3 and grad_diff > 1e-2


def test_flash_attention_path_is_chosen_when_installed():
    from ft.model.packed_attention import PER_ROW_EAGER, VARLEN, packed_implementation

    assert packed_implementation("flash_attention_2", True) == "flash_attention_2"
    assert packed_implementation("sdpa", True) == VARLEN
    assert packed_implementation(None, True) == VARLEN
    assert packed_implementation("eager", True) == PER_ROW_EAGER
    assert packed_implementation(None, False) == PER_ROW_EAGER


def test_every_layer_gets_the_collators_boundaries(tiny_model_dir, tiny_tokenizer, monkeypatch):
    """The boundaries are computed once, in the collator, and reach every layer's kernel unchanged."""
    import ft.model.packed_attention as pa

    calls = []
    original = pa.per_row
    monkeypatch.setattr(pa, "per_row", lambda q, k, v, cu, *a, **kw: calls.append(cu) or original(q, k, v, cu, *a, **kw))
    model = _model("llama", tiny_model_dir, pa.VARLEN, lora=False)
    rows = _rows(tiny_tokenizer, n=3)
    batch = PackedCollator(pad_id=0)([{"rows": rows}])
    with torch.no_grad():
        model(**{k: v for k, v in batch.items() if k not in ("labels", "ft_real_tokens")})
    assert len(calls) == model.config.num_hidden_layers
    assert all(cu is batch["cu_seq_lens_q"] for cu in calls)
    assert batch["cu_seq_lens_q"].tolist()[-1] == batch["input_ids"].shape[1] and batch["max_length_q"] == max(len(r["input_ids"]) for r in rows)


@pytest.mark.parametrize("attention", ["ft_varlen", "ft_packed_eager"])
def test_the_per_row_paths_read_the_boundaries_to_the_host_once_per_batch(attention, tiny_model_dir, tiny_tokenizer):
    """The per-row paths (the CPU; Gemma-2's soft-capping on a GPU) need the row edges as ints, and on a GPU each
    read waits for the device: one read per forward, not one per layer."""
    reads = []

    class Counted(torch.Tensor):
        def tolist(self):
            reads.append(1)
            return super().tolist()

    model = _model("llama", tiny_model_dir, attention, lora=False)
    batch = PackedCollator(pad_id=0)([{"rows": _rows(tiny_tokenizer, n=3)}])
    batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = batch["cu_seq_lens_q"].as_subclass(Counted)
    with torch.no_grad():
        model(**{k: v for k, v in batch.items() if k not in ("labels", "ft_real_tokens")})
    assert model.config.num_hidden_layers > 1 and len(reads) == 1


@pytest.mark.parametrize("window", [None, 3])
def test_reference_kernel_equals_a_dense_block_diagonal_mask(window):
    """per_row (the CPU kernel, same contract as torch's varlen) against one dense masked attention over the
    whole sequence: rows apart, causal, the window counted as transformers counts it, query head h reading
    kv head h // (query heads / kv heads)."""
    from ft.model.packed_attention import boundaries, per_row

    torch.manual_seed(0)
    lengths, heads, kv_heads, dim = [5, 1, 7, 4], 4, 2, 8
    total = sum(lengths)
    q, k, v = torch.randn(total, heads, dim), torch.randn(total, kv_heads, dim), torch.randn(total, kv_heads, dim)
    b = boundaries(lengths)
    got = per_row(q, k, v, b["cu_seq_lens_q"], b["max_length_q"], 0.3, window)
    row = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    i = torch.arange(total)
    allowed = (row[:, None] == row[None, :]) & (i[None, :] <= i[:, None])
    if window:
        allowed &= i[None, :] > i[:, None] - window
    scores = torch.einsum("qhd,khd->hqk", q, k.repeat_interleave(2, dim=1)) * 0.3
    want = torch.einsum("hqk,khd->qhd", scores.masked_fill(~allowed, float("-inf")).softmax(-1), v.repeat_interleave(2, dim=1))
    assert torch.allclose(got, want, atol=1e-5)


def test_packed_training_run(tmp_path: Path, tiny_model_dir):
    import json

    from conftest import run_ft
    from train_helpers import make_config

    make_config(tmp_path, tiny_model_dir("llama"), sample_packing=True, sequence_len=256, micro_batch_size=2,
                max_steps=None, num_epochs=1, val_set_size=4, evals_per_epoch=1)
    result = run_ft("train", "cfg.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "per-row sdpa" in result.stderr  # on CPU; torch's varlen kernel on a GPU
    assert json.loads((tmp_path / "out/summary.json").read_text())["batches"] == "packed"
    import re

    rows, bins = map(int, re.search(r"packing train: (\d+) rows into (\d+) bins", result.stderr).groups())
    assert rows == 28 and bins < rows
    steps = json.loads((tmp_path / "out/summary.json").read_text())["steps"]
    assert steps == -(-bins // 2)  # one epoch is exactly the packed batches


def test_packed_epochs_reshuffle_bins_with_the_seed_and_pad_to_sequence_len(tmp_path: Path, tiny_model_dir):
    """Completion rows (long ones split into chunks) are packed; every epoch shuffles the bins anew, the same
    way for the same seed; pad_to_sequence_len makes every packed batch micro_batch_size × sequence_len."""
    import json

    from train_helpers import make_config

    from ft.commands.train import build_run

    rng = random.Random(0)
    words = "the cat sat on a warm red mat near the old blue door".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 300))) for _ in range(40)]
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))

    def batches(seed: int, epoch: int) -> list[list[int]]:
        cfg = make_config(tmp_path, tiny_model_dir("llama"), datasets=[{"path": str(tmp_path / "text.jsonl"), "type": "completion"}],
                          sample_packing=True, sequence_len=128, micro_batch_size=2, pad_to_sequence_len=True,
                          max_steps=None, num_epochs=2, seed=seed)
        run = build_run(cfg, 1)
        prepared = run.prepared
        loader = run.trainer.get_train_dataloader()
        loader.set_epoch(epoch)
        got = list(loader)
        assert all(b["input_ids"].shape == (1, 2 * 128) for b in got)
        # a host int through the Trainer's loader: counting it costs no device sync per step
        assert all(type(b["ft_real_tokens"]) is int for b in got)
        assert sum(b["ft_real_tokens"] for b in got) == sum(prepared.train.column("input_ids").combine_chunks().value_lengths().to_numpy())
        return [b["input_ids"][0].tolist() for b in got]

    epoch0, epoch1 = batches(1, 0), batches(1, 1)
    assert sorted(t for b in epoch0 for t in b) == sorted(t for b in epoch1 for t in b)  # the same tokens...
    assert epoch0 != epoch1  # ...in a new order
    assert batches(1, 0) == epoch0  # deterministic for the seed
    assert batches(2, 0) != epoch0


def test_padding_free_batches_train_like_padded_ones(tmp_path: Path, tiny_model_dir):
    """padding_free lays a micro batch's rows end to end: the same rows per step, no padding slots, and
    the same losses and weights as the padded batches to fp32 round-off."""
    from train_helpers import build, make_config

    def run(free: bool):
        (tmp_path / str(free)).mkdir()
        cfg = make_config(tmp_path / str(free), tiny_model_dir("llama"), padding_free=free, max_steps=3,
                          adapter="lora", lora_target_linear=True)
        trainer, model, _ = build(cfg)
        trainer.train()
        losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return losses, weights, trainer.real_tokens, trainer.token_slots

    free_losses, free_weights, free_real, free_slots = run(True)
    pad_losses, pad_weights, pad_real, pad_slots = run(False)
    assert free_real == pad_real and free_slots == free_real < pad_slots
    assert free_losses == pytest.approx(pad_losses, rel=1e-5)
    assert max(float((free_weights[n] - pad_weights[n]).abs().max()) for n in free_weights) < 1e-5


def test_padding_free_is_the_gpu_default():
    from ft.config.data import DataConfig
    from ft.data.packing import batch_layout

    d = DataConfig(datasets=[{"path": "x"}])
    assert batch_layout(d, False, on_gpu=True) == "padding-free"
    assert batch_layout(d, False, on_gpu=False) == "padded"
    assert batch_layout(d, True, on_gpu=True) == "padded"  # group_by_length trims padding its own way
    assert batch_layout(d.model_copy(update={"padding_free": True}), False, on_gpu=False) == "padding-free"
    assert batch_layout(d.model_copy(update={"sample_packing": True}), False, on_gpu=False) == "packed"


def _flash_reference(calls: list, gqa_flag: bool):
    """A CPU stand-in for torch's varlen flash kernel with the installed wrapper's call form: without
    `enable_gqa` (torch 2.10-2.11, where any head counts pass through to the kernel) or with it (≥ 2.12). Like
    the flash kernel it reads query head h from kv head h // (query heads / kv heads) itself."""

    def reference(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), **kw):
        calls.append({"kv_heads": k.shape[1], **kw})
        groups = q.shape[1] // k.shape[1]
        heads = torch.arange(q.shape[1]) // groups
        edges = cu_q.tolist()
        out = torch.empty_like(q)
        for a, b in zip(edges, edges[1:]):
            scores = torch.einsum("qhd,khd->hqk", q[a:b], k[a:b][:, heads]) * scale
            i = torch.arange(b - a)
            allowed = i[None, :] <= i[:, None]
            if window_size[0] >= 0:
                allowed &= i[None, :] >= i[:, None] - window_size[0]
            out[a:b] = torch.einsum("hqk,khd->qhd", scores.masked_fill(~allowed, float("-inf")).softmax(-1), v[a:b][:, heads])
        return out

    if gqa_flag:
        def with_flag(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
            assert enable_gqa or q.shape[1] == k.shape[1], "torch ≥ 2.12 refuses GQA without enable_gqa"
            return reference(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=window_size, enable_gqa=enable_gqa)

        return with_flag

    def without_flag(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
        return reference(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=window_size)

    return without_flag


@pytest.mark.parametrize("gqa_flag", [False, True], ids=["torch-2.11", "torch-2.12+"])
@pytest.mark.parametrize("window", [None, 3])
def test_grouped_query_attention_goes_to_the_kernel_unrepeated(gqa_flag, window, monkeypatch):
    """k and v reach the varlen kernel with their own head count (the kernel maps the query heads onto them),
    and the result equals the repeated-heads reference (per_row)."""
    import torch.nn.attention.varlen as varlen

    from ft.model import packed_attention as pa

    calls: list = []
    monkeypatch.setattr(varlen, "varlen_attn", _flash_reference(calls, gqa_flag))
    pa._varlen_parameters.cache_clear()
    try:
        torch.manual_seed(0)
        lengths, heads, kv_heads, dim = [5, 1, 7, 4], 8, 2, 8
        total = sum(lengths)
        q, k, v = torch.randn(total, heads, dim), torch.randn(total, kv_heads, dim), torch.randn(total, kv_heads, dim)
        b = pa.boundaries(lengths)
        got = pa.torch_varlen(q, k, v, b["cu_seq_lens_q"], b["max_length_q"], 0.3, window)
    finally:
        pa._varlen_parameters.cache_clear()
    assert calls and calls[0]["kv_heads"] == kv_heads and calls[0].get("enable_gqa", False) == gqa_flag
    want = pa.per_row(q, k, v, b["cu_seq_lens_q"], b["max_length_q"], 0.3, window)
    assert relative_difference([got], [want]) < 1e-5


def test_the_flash_kernels_head_size_limits():
    from ft.model.packed_attention import kernel_available, _varlen_parameters

    if not _varlen_parameters():
        pytest.skip("this torch has no varlen attention")
    assert kernel_available(64, None) and kernel_available(256, None)
    assert not kernel_available(60, None) and not kernel_available(288, None)  # head_dim % 8, head_dim ≤ 256
