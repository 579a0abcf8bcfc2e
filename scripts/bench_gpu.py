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
- ft unpacked: `ft train`'s own composition (build_run), rows per micro batch laid end to end (padding-free);
- ft packed, N bins: sample_packing, N bins of sequence_len tokens per micro batch.
Each runs warm-up steps, then timed steps: real (non-padding) tokens per second, peak
torch.cuda.max_memory_allocated, and MFU: FLOPs per real token (4N without and 6N with checkpointing, N the
non-embedding parameters plus the head, plus causal attention over each row) × tokens/s over the bf16
matmul rate measured in the same run.
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
    "tiny": (128, 2, 4, 2, 256, False),
    "tiny-qlora": (128, 2, 4, 2, 256, False),
}
SETUP = {  # micro batch of the unpacked contenders, bins per packed micro batch, QLoRA, checkpointing, warm-up, timed steps
    "1b": (16, (2, 8), False, False, 3, 10),  # sized so that the GPU check's 1b stage ends within 90 s
    "8b": (8, (4,), True, True, 2, 4),  # and its 8b stage within 150 s (each step of 8 rows or 4 bins takes seconds)
    "tiny": (4, (1, 2), False, False, 1, 2),
    "tiny-qlora": (4, (2,), True, True, 1, 2),  # the 8b code path (QLoRA, checkpointing) at the tiny shape
}


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

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if state.global_step == clock.warm + clock.timed:
                    clock.sync()
                    clock.seconds = time.perf_counter() - clock.start
                    clock.tokens = clock.count() - clock.tokens

        return Callback()


def run_ft(cfg_path: Path, size: str, device: str) -> dict[str, Any]:
    from ft.commands.config import load
    from ft.commands.train import build_run

    cfg = load(cfg_path)
    run = build_run(cfg, 1)
    _, _, _, _, warm, timed = SETUP[size]
    clock = Clock(warm, timed, lambda: run.trainer.real_tokens, device)
    run.trainer.add_callback(clock.callback())
    run.trainer.train()
    result = {"tokens_per_s": clock.tokens / clock.seconds, "slots_real": run.trainer.real_tokens / run.trainer.token_slots,
              "batches": run.layout, "attention": run.attention}
    return result


def run_padded(cfg_path: Path, size: str, device: str) -> dict[str, Any]:
    """A plain transformers + peft (+ bitsandbytes) Trainer over the same prepared tokens, padded batches, sdpa."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from ft.commands.config import load
    from ft.commands.preprocess import prepare_data
    from ft.tokenizer.load import load_tokenizer

    cfg = load(cfg_path)
    micro, _, qlora, ckpt, warm, timed = SETUP[size]
    tok = load_tokenizer(cfg.model)
    table = prepare_data(cfg, tok).train
    rows = [{"input_ids": i, "labels": l, "attention_mask": [1] * len(i)}
            for i, l in zip(table.column("input_ids").to_pylist(), table.column("labels").to_pylist())]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": "sdpa"}
    if qlora:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                                           bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": 0 if device == "cuda" else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(cfg.model.base_model, **kwargs)
    model.config.use_cache = False
    if qlora:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=ckpt, gradient_checkpointing_kwargs={"use_reentrant": False})
    elif ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))

    class Counting(Trainer):
        real = slots = 0

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            self.real += int(inputs["attention_mask"].sum())
            self.slots += int(inputs["input_ids"].numel())
            return super().training_step(model, inputs, num_items_in_batch)

    args = TrainingArguments(output_dir=str(cfg_path.with_suffix("")), per_device_train_batch_size=micro, max_steps=warm + timed + 1,
                             learning_rate=2e-4, lr_scheduler_type="constant", bf16=device == "cuda", save_strategy="no",
                             report_to="none", logging_steps=1000, use_cpu=device != "cuda", seed=42,
                             remove_unused_columns=False, disable_tqdm=True)
    trainer = Counting(model=model, args=args, train_dataset=rows, data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    clock = Clock(warm, timed, lambda: trainer.real, device)
    trainer.add_callback(clock.callback())
    trainer.train()
    result = {"tokens_per_s": clock.tokens / clock.seconds, "slots_real": trainer.real / trainer.slots, "batches": "padded", "attention": "sdpa"}
    return result


def flops_per_token(model_dir: Path, work: Path, size: str) -> float:
    """Training FLOPs per real token: 4N (6N with checkpointing) over the matmul weights, plus causal attention."""
    import pyarrow as pa

    hidden, layers, heads, kv, mlp, tied = SHAPES[size]
    head_dim = hidden // heads
    per_layer = hidden * head_dim * (2 * heads + 2 * kv) + 3 * hidden * mlp
    n = layers * per_layer + vocab(size) * hidden  # the head's matmul counts; the embedding lookup does not
    factor = 6 if SETUP[size][3] else 4
    lengths = []
    for arrow in (work / "prepared").glob("*/train.arrow"):
        table = pa.ipc.open_file(pa.memory_map(str(arrow))).read_all()
        lengths = table.column("input_ids").combine_chunks().value_lengths().to_pylist()
    attention = factor * layers * hidden * sum(x * x for x in lengths) / max(sum(lengths), 1)  # ~n²/2 pairs × 4d, fwd+bwd
    return factor * n + attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["1b", "8b"], choices=list(SHAPES))
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--out", default=None, help="write the results as JSON here too")
    args = parser.parse_args()

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rate = bf16_rate(device)
    print(f"device {device}; bf16 matmul rate {rate / 1e12:.0f} TFLOP/s (measured)", file=sys.stderr)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "bf16_tflops": rate / 1e12}

    def save() -> None:  # after every contender: a run cut off by its time budget keeps what it measured
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1))

    for size in args.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"ft-bench-gpu-{size}-"))
        try:
            generate(work / "rows.jsonl", args.rows)
            model = build_model(size, work, device)
            _, bins, _, _, _, _ = SETUP[size]
            contenders = {
                "padded Trainer": (run_padded, write_config(work, "padded", model, size)),
                "ft unpacked": (run_ft, write_config(work, "unpacked", model, size, padding_free=True)),
                **{f"ft packed, {b} bins": (run_ft, write_config(work, f"packed{b}", model, size, sample_packing=True, micro_batch_size=b))
                   for b in bins},
            }
            rows: dict[str, Any] = {}
            results[size] = rows
            for name, (fn, cfg_path) in contenders.items():
                free(device)
                rows[name] = fn(cfg_path, size, device)
                rows[name]["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
                print(f"{size} {name}: {json.dumps(rows[name])}", file=sys.stderr, flush=True)
                save()
            per_token = flops_per_token(model, work, size)
            base = rows["padded Trainer"]["tokens_per_s"]
            print(f"\n{size}: {args.rows} rows, sequence_len 2048, {per_token / 1e9:.1f} GFLOP per real token")
            print("| contender | batches | attention | real tokens/s | vs padded Trainer | token slots real | peak GB | MFU |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- |")
            for name, r in rows.items():
                r["vs_padded"] = r["tokens_per_s"] / base
                r["mfu"] = r["tokens_per_s"] * per_token / rate
                print(f"| {name} | {r['batches']} | {r['attention']} | {r['tokens_per_s']:,.0f} | {r['vs_padded']:.2f}× | "
                      f"{r['slots_real']:.3f} | {r['peak_memory_gb']:.1f} | {100 * r['mfu']:.1f}% |")
            save()
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
