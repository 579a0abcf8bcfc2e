#!/usr/bin/env python
"""GPU training throughput: ft packed and ft unpacked beside a padded transformers Trainer, in one run.

    python scripts/bench_gpu.py [--sizes 1b 8b] [--rows 6000] [--out bench.json]
    python scripts/bench_gpu.py --sizes tiny tiny-qlora --rows 300     (a CPU smoke run of the same code)
    (the longest trainable row: scripts/bench_context.py)

Models: random-weight Llamas with real shapes, built from a config on the GPU (1b: Llama 3.2 1B, LoRA, bf16;
8b: Llama 3.1 8B, QLoRA nf4 with double quant and gradient checkpointing), vocab 128,256, the test
tokenizer. Data: scripts/_alpaca_rows.py rows, sequence_len 2048, loss on the output only, LoRA r=16 on all
linear layers. Contenders, each over the same prepared tokens:
- padded Trainer: transformers Trainer + peft (+ bitsandbytes), sdpa, a micro batch padded to its longest row;
- tuned Trainer: the same Trainer as a careful user sets it: group_by_length, pad_to_multiple_of 8, the frozen
  16-bit weights left in 16 bits (no prepare_model_for_kbit_training upcast), rows per step matched to ft
  packed's tokens per step, tokens counted in the collator (no host sync per step);
- TRL packed: TRL's SFTTrainer, packing=True (BFD, padding-free), sdpa, as many sequence_len bins per step as ft
  packed (TRL from TRL_SITE or /tmp/trl-site when it is not installed; skipped, and said, when it is nowhere);
- ft unpacked: `ft train`'s own composition (build_run), rows per micro batch laid end to end (padding-free);
- ft packed, N bins: sample_packing, N bins of sequence_len tokens per micro batch;
- ft packed, PEFT's LoRA path: the same with `lora_fused: false` (PEFT's forward in every LoRA layer: an input
  copy per layer, the update scaled and added in separate passes), the baseline of ft's fused update.
The step after ft packed's timed ones (N the most bins) is profiled (torch.profiler): its GPU kernel time (on a CPU
its ops' own time) by part: matmul, dequantization, attention, loss, optimizer, copies and communication,
elementwise and other; written to the results (`profile`) and printed.
Each runs warm-up steps, then timed steps (each one's time kept): real (non-padding) tokens per second and
per optimizer step, peak torch.cuda.max_memory_allocated, and MFU by the usual count: FLOPs per real token 4N
for a frozen base (LoRA, QLoRA) or 6N for full fine-tuning (N the non-embedding weights plus the head; no
recompute counted, so checkpointing does not raise it) plus causal attention (6·layers·hidden·x²/2 per row of x
tokens), × tokens/s, over the bf16 matmul rate measured in the same run and over the datasheet's.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _alpaca_rows import generate  # noqa: E402

SHAPES = {  # hidden, layers, heads, kv heads, MLP, tied embeddings
    "1b": (2048, 16, 32, 8, 8192, True),
    "8b": (4096, 32, 32, 8, 14336, False),
    "8b-8l": (4096, 8, 32, 8, 14336, False),  # Llama 3.1 8B's layers, 8 of them: per-layer speed at a quarter of the build
    "tiny": (128, 2, 4, 2, 256, False),
    "tiny-qlora": (128, 2, 4, 2, 256, False),
}
SETUP = {  # micro batch of the unpacked contenders, bins per packed micro batch, QLoRA, checkpointing, warm-up, timed steps
    "1b": (16, (8,), False, False, 3, 20),
    "8b": (8, (4,), True, True, 2, 20),
    "8b-8l": (8, (4,), True, True, 2, 20),
    "tiny": (4, (2,), False, False, 1, 2),
    "tiny-qlora": (4, (2,), True, True, 1, 2),  # the 8b code path (QLoRA, checkpointing) at the tiny shape
}


# dense bf16 without sparsity; the first key in the device's name counts (the PCIe and NVL H100s before the SXM)
DATASHEET_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0,
                    "A10G": 125.0, "L4": 121.0}


def datasheet_rate(name: str) -> float:
    """The GPU's dense bf16 rate from its datasheet, FLOP/s (nan for an unknown GPU)."""
    return next((t * 1e12 for key, t in DATASHEET_TFLOPS.items() if key in name), float("nan"))


def bf16_rate(device: str) -> float:
    """The GPU's dense bf16 matmul rate in FLOP/s, measured now."""
    import torch

    if device != "cuda":
        return float("nan")
    n = 8192
    a, b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, reps = time.perf_counter(), 30
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def vocab(size: str, tok: Any = None) -> int:
    """Llama 3's vocabulary for the real shapes; the test tokenizer's own for the tiny smoke runs."""
    if not size.startswith("tiny"):
        return 128_256
    from ft.tiny import build_tokenizer

    return len(tok if tok is not None else build_tokenizer())


def build_model(size: str, work: Path, device: str) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from ft.tiny import build_tokenizer

    hidden, layers, heads, kv, mlp, tied = SHAPES[size]
    tok = build_tokenizer()
    config = LlamaConfig(vocab_size=vocab(size, tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=mlp, tie_word_embeddings=tied, max_position_embeddings=8192,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    out = work / f"model-{size}"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    free(device)
    return out


def free(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def write_config(work: Path, name: str, model: Path, size: str, **keys: Any) -> Path:
    import yaml

    micro, _, qlora, ckpt, warm, timed = SETUP[size]
    body = {
        "base_model": str(model), "datasets": [{"path": str(work / "rows.jsonl"), "type": "alpaca"}],
        "dataset_prepared_path": str(work / "prepared"), "sequence_len": 2048, "train_on_inputs": False,
        "micro_batch_size": micro, "max_steps": warm + timed + 1, "learning_rate": 2e-4, "lr_scheduler": "constant",
        "adapter": "qlora" if qlora else "lora", "load_in_4bit": qlora, "lora_r": 16, "lora_alpha": 32,
        "lora_target_linear": True, "gradient_checkpointing": ckpt, "output_dir": str(work / name),
        "use_tensorboard": False, "logging_steps": 1000, "save_steps": 100000, **keys,
    }
    path = work / f"{name}.yml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


class Clock:
    """Times the steps after warm-up and reads a token counter at both ends (a TrainerCallback)."""

    def __init__(self, warm: int, timed: int, count: Any, device: str) -> None:
        self.warm, self.timed, self.count, self.device = warm, timed, count, device
        self.start = self.tokens = self.seconds = 0.0
        self.steps: list[float] = []  # each timed step's seconds
        self.last = 0.0

    def sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def callback(self) -> Any:
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if state.global_step == clock.warm:
                    clock.sync()
                    clock.start, clock.tokens = time.perf_counter(), clock.count()
                    clock.last = clock.start

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if clock.warm < state.global_step <= clock.warm + clock.timed:
                    clock.sync()  # per-step times: one sync a step, for the measurement only
                    now = time.perf_counter()
                    clock.steps.append(now - clock.last)
                    clock.last = now
                if state.global_step == clock.warm + clock.timed:
                    clock.seconds = time.perf_counter() - clock.start
                    clock.tokens = clock.count() - clock.tokens

        return Callback()

    def figures(self) -> dict[str, Any]:
        steps = sorted(self.steps)
        return {"tokens_per_s": self.tokens / self.seconds, "tokens_per_step": self.tokens / max(len(self.steps), 1),
                "timed_steps": len(self.steps), "step_s_median": steps[len(steps) // 2] if steps else float("nan"),
                "step_s": [round(x, 4) for x in self.steps]}


CATEGORIES = (  # (category, words in a kernel's or op's name), the first that matches
    ("dequantization", ("dequant",)),
    ("attention", ("flash", "fmha", "attention", "scaled_dot_product", "sdpa")),
    ("matmul", ("gemm", "cutlass", "cublas", "xmma", "nvjet", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
                "splitk")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss", "logsumexp")),
    ("optimizer", ("adam", "multi_tensor", "_foreach")),
    ("copies and communication", ("memcpy", "memset", "nccl", "aten::copy_", "aten::to")),
)


def category(name: str) -> str:
    lowered = name.lower()
    return next((c for c, words in CATEGORIES if any(w in lowered for w in words)), "elementwise and other")


def profile_figures(prof: Any, device: str) -> dict[str, Any]:
    """One profiled step's time by category: on a GPU each kernel's device time, on a CPU each op's own time."""
    from torch.autograd import DeviceType

    times: dict[str, float] = {}
    for event in prof.key_averages():
        if device == "cuda":
            if event.device_type != DeviceType.CUDA:
                continue
            us = event.self_device_time_total
        else:
            if "::" not in event.key or event.key.startswith("autograd::"):
                continue  # autograd's own entries: their work is in the ops they call
            us = event.self_cpu_time_total
        times[category(event.key)] = times.get(category(event.key), 0.0) + us / 1e3
    total = sum(times.values()) or 1.0
    return {"ms": {k: round(v, 2) for k, v in sorted(times.items(), key=lambda kv: -kv[1])},
            "share": {k: round(v / total, 4) for k, v in times.items()}, "total_ms": round(total, 2)}


class StepProfile:
    """Profiles one step (a TrainerCallback): the step after the timed ones, so no timed step is slowed."""

    def __init__(self, step: int, device: str) -> None:
        self.step, self.device, self.prof, self.figures = step, device, None, None

    def callback(self) -> Any:
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if state.global_step == outer.step:
                    from torch.profiler import ProfilerActivity, profile

                    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if outer.device == "cuda" else [])
                    outer.prof = profile(activities=acts)
                    outer.prof.__enter__()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if outer.prof is not None and outer.figures is None:
                    if outer.device == "cuda":
                        import torch

                        torch.cuda.synchronize()
                    outer.prof.__exit__(None, None, None)
                    outer.figures = profile_figures(outer.prof, outer.device)

        return Callback()


def run_ft(cfg_path: Path, size: str, device: str, profile: bool = False) -> dict[str, Any]:
    from ft.commands.config import load
    from ft.commands.train import build_run

    cfg = load(cfg_path)
    run = build_run(cfg, 1)
    _, _, _, _, warm, timed = SETUP[size]
    clock = Clock(warm, timed, lambda: run.trainer.real_tokens, device)
    run.trainer.add_callback(clock.callback())
    step = StepProfile(warm + timed, device) if profile else None
    if step is not None:
        run.trainer.add_callback(step.callback())
    run.trainer.train()
    return {**clock.figures(), "slots_real": run.trainer.real_tokens / run.trainer.token_slots, "batches": run.layout,
            "attention": run.attention, **({"profile": step.figures} if step is not None else {})}


def _baseline_model(cfg_path: Path, size: str, device: str, upcast: bool) -> tuple[Any, Any, Any]:
    """(cfg, tokenizer, prepared rows, model with LoRA r=16 on every linear layer) for the transformers-only
    contenders: sdpa, bf16 on a GPU, nf4 with double quant for QLoRA. `upcast`: peft's prepare_model_for_kbit_training
    (its fp32 upcast of the frozen 16-bit weights), as a first try does; else the frozen weights stay in 16 bits."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from ft.commands.config import load
    from ft.commands.preprocess import prepare_data
    from ft.tokenizer.load import load_tokenizer

    cfg = load(cfg_path)
    _, _, qlora, ckpt, _, _ = SETUP[size]
    tok = load_tokenizer(cfg.model)
    table = prepare_data(cfg, tok).train
    rows = [{"input_ids": i, "labels": l} for i, l in zip(table.column("input_ids").to_pylist(), table.column("labels").to_pylist())]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": "sdpa"}
    if qlora:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                                           bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": 0 if device == "cuda" else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(cfg.model.base_model, **kwargs)
    model.config.use_cache = False
    if qlora and upcast:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=ckpt, gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    return cfg, tok, rows, model


def _trainer_args(cfg_path: Path, size: str, device: str, batch: int, **extra: Any) -> dict[str, Any]:
    _, _, _, _, warm, timed = SETUP[size]
    return dict(output_dir=str(cfg_path.with_suffix("")), per_device_train_batch_size=batch, max_steps=warm + timed + 1,
                learning_rate=2e-4, lr_scheduler_type="constant", bf16=device == "cuda", save_strategy="no", report_to="none",
                logging_steps=1000, use_cpu=device != "cuda", seed=42, remove_unused_columns=False, disable_tqdm=True, **extra)


def run_padded(cfg_path: Path, size: str, device: str, tuned: bool = False, tokens: Any = None) -> dict[str, Any]:
    """transformers' Trainer over the same prepared tokens. Plain: micro batches padded to their longest row, peft's
    kbit preparation. Tuned: rows grouped by length, padded to a multiple of 8, no upcast, as many rows a step as
    hold `tokens()` real tokens (ft packed's per step, measured before), tokens counted as the collator builds
    each batch (on the CPU: no sync a step)."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    micro, _, _, _, warm, timed = SETUP[size]
    cfg, tok, rows, model = _baseline_model(cfg_path, size, device, upcast=not tuned)
    for r in rows:
        r["attention_mask"] = [1] * len(r["input_ids"])
    if tuned:
        mean = sum(len(r["input_ids"]) for r in rows) / len(rows)
        micro = max(1, round(tokens() / mean))
    pad = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100, pad_to_multiple_of=8 if tuned else None)
    counts = {"real": 0, "slots": 0}

    def collate(features: list[dict]) -> Any:
        batch = pad(features)
        counts["real"] += int(batch["attention_mask"].sum())
        counts["slots"] += int(batch["input_ids"].numel())
        return batch

    extra = {"train_sampling_strategy": "group_by_length"} if tuned else {}
    trainer = Trainer(model=model, args=TrainingArguments(**_trainer_args(cfg_path, size, device, micro, **extra)),
                      train_dataset=rows, data_collator=collate)
    clock = Clock(warm, timed, lambda: counts["real"], device)  # the loader runs ahead of the step: counted when built
    trainer.add_callback(clock.callback())
    trainer.train()
    return {**clock.figures(), "slots_real": counts["real"] / counts["slots"], "batches": f"padded, {micro} rows" +
            (", grouped by length" if tuned else ""), "attention": "sdpa"}


def run_trl(cfg_path: Path, size: str, device: str, bins: int = 1) -> dict[str, Any]:
    """TRL's SFTTrainer with packing=True (best-fit decreasing, padding-free) on sdpa, `bins` bins of sequence_len a
    step, over the same prepared tokens and labels."""
    import os

    try:
        import trl  # noqa: F401
    except ImportError:
        sys.path.insert(0, os.environ.get("TRL_SITE", "/tmp/trl-site"))
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    _, _, _, ckpt, warm, timed = SETUP[size]
    cfg, tok, rows, model = _baseline_model(cfg_path, size, device, upcast=False)
    data = Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows]})
    args = SFTConfig(**_trainer_args(cfg_path, size, device, bins), packing=True, packing_strategy="bfd",
                     max_length=cfg.data.sequence_len, gradient_checkpointing=ckpt,
                     gradient_checkpointing_kwargs={"use_reentrant": False}, dataset_num_proc=None)

    class Counting(SFTTrainer):
        real = 0

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            self.real += inputs["input_ids"].numel()  # padding-free: every token is real (a size, no sync)
            return super().training_step(model, inputs, num_items_in_batch)

    trainer = Counting(model=model, args=args, train_dataset=data, processing_class=tok)
    clock = Clock(warm, timed, lambda: trainer.real, device)
    trainer.add_callback(clock.callback())
    trainer.train()
    return {**clock.figures(), "slots_real": 1.0, "batches": f"TRL packed, {bins} bins", "attention": "sdpa"}


def flops_per_token(model_dir: Path, work: Path, size: str, full: bool = False) -> float:
    """Training FLOPs per real token by the usual count: 4N for a frozen base (forward 2N, the backward's
    activation gradients 2N; LoRA's own are negligible), 6N for full fine-tuning, no recompute; plus causal
    attention, which has no weights: per layer and row of x tokens 2·hidden·x² forward (QKᵀ and AV), × 3 with
    the backward."""
    import pyarrow as pa

    hidden, layers, heads, kv, mlp, tied = SHAPES[size]
    head_dim = hidden // heads
    per_layer = hidden * head_dim * (2 * heads + 2 * kv) + 3 * hidden * mlp
    n = layers * per_layer + vocab(size) * hidden  # the head's matmul counts; the embedding lookup does not
    factor = 6 if full else 4
    lengths = []
    for arrow in (work / "prepared").glob("*/train.arrow"):
        table = pa.ipc.open_file(pa.memory_map(str(arrow))).read_all()
        lengths = table.column("input_ids").combine_chunks().value_lengths().to_pylist()
    attention = 6 * layers * hidden * sum(x * x for x in lengths) / max(sum(lengths), 1)
    return factor * n + attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["1b", "8b"], choices=list(SHAPES))
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--out", default=None, help="write the results as JSON here too")
    parser.add_argument("--contenders", nargs="+", help="only the contenders whose names start so (e.g. ft 'tuned')")
    args = parser.parse_args()

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rate = bf16_rate(device)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    sheet = datasheet_rate(name)
    print(f"device {name}; bf16 matmul rate {rate / 1e12:.0f} TFLOP/s measured, {sheet / 1e12:.0f} on the datasheet", file=sys.stderr)
    results: dict[str, Any] = {"device": name, "bf16_tflops": rate / 1e12, "datasheet_tflops": sheet / 1e12}

    def save() -> None:  # after every contender: a run cut off by its time budget keeps what it measured
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1))

    for size in args.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"ft-bench-gpu-{size}-"))
        try:
            generate(work / "rows.jsonl", args.rows)
            model = build_model(size, work, device)
            _, bins, _, _, _, _ = SETUP[size]
            top = max(bins)
            rows: dict[str, Any] = {}
            top_tokens = lambda: rows.get(f"ft packed, {top} bins", {}).get("tokens_per_step", top * 2048)  # noqa: E731
            contenders: dict[str, Any] = {  # ft packed first: the tuned Trainer takes as many tokens a step
                **{f"ft packed, {b} bins": (run_ft, write_config(work, f"packed{b}", model, size, sample_packing=True, micro_batch_size=b),
                                            {"profile": b == top}) for b in sorted(bins, reverse=True)},
                f"ft packed, {top} bins, PEFT's LoRA path": (run_ft, write_config(work, "peftpath", model, size, sample_packing=True,
                                                                        micro_batch_size=top, lora_fused=False), {}),
                "ft unpacked": (run_ft, write_config(work, "unpacked", model, size, padding_free=True), {}),
                "TRL packed": (run_trl, write_config(work, "trl", model, size), {"bins": top}),
                "tuned Trainer": (run_padded, write_config(work, "tuned", model, size), {"tuned": True, "tokens": top_tokens}),
                "padded Trainer": (run_padded, write_config(work, "padded", model, size), {}),
            }
            if args.contenders:
                contenders = {k: v for k, v in contenders.items() if any(k.startswith(c) for c in args.contenders)}
            results[size] = rows
            for name, (fn, cfg_path, extra) in contenders.items():
                free(device)
                try:
                    rows[name] = fn(cfg_path, size, device, **extra)
                except ImportError as exc:  # TRL where it is not installed: said, the others still run
                    print(f"{size} {name}: skipped ({exc})", file=sys.stderr, flush=True)
                    continue
                rows[name]["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
                print(f"{size} {name}: {json.dumps({k: v for k, v in rows[name].items() if k not in ('step_s', 'profile')})}",
                      file=sys.stderr, flush=True)
                save()
            per_token = flops_per_token(model, work, size)
            packed = rows.get(f"ft packed, {top} bins", {}).get("tokens_per_s", float("nan"))
            print(f"\n{size}: {args.rows} rows, sequence_len 2048, {per_token / 1e9:.1f} GFLOP per real token (usual count)")
            print("| contender | batches | real tokens/s | real tokens/step | median step s | ft packed × | peak GB | MFU measured | MFU datasheet |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            for name, r in rows.items():
                r["ft_packed_ratio"] = packed / r["tokens_per_s"]
                r["mfu"] = r["tokens_per_s"] * per_token / rate
                r["mfu_datasheet"] = r["tokens_per_s"] * per_token / sheet
                print(f"| {name} | {r['batches']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_step']:,.0f} | {r['step_s_median']:.3f} | "
                      f"{r['ft_packed_ratio']:.2f} | {r['peak_memory_gb']:.1f} | {100 * r['mfu']:.1f}% | {100 * r['mfu_datasheet']:.1f}% |")
            profiled = next((r["profile"] for r in rows.values() if r.get("profile")), None)
            if profiled:  # one step of ft packed (the step after the timed ones), by what its time went to
                print(f"\n{size}: one step of ft packed, {top} bins, profiled ({profiled['total_ms']:,.1f} ms of "
                      f"{'GPU kernels' if device == 'cuda' else 'CPU ops'})")
                print("| part | ms | share |\n| --- | --- | --- |")
                for part, ms in profiled["ms"].items():
                    print(f"| {part} | {ms:,.1f} | {100 * profiled['share'][part]:.1f}% |")
            save()
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
