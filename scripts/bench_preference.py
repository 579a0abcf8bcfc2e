#!/usr/bin/env python
"""ft's DPO beside TRL's DPOTrainer on the same model, pairs, LoRA and batch: real tokens per second, peak memory.

    python scripts/bench_preference.py [--pairs 256] [--batch 8] [--steps 24] [--hidden 256] [--layers 4]

TRL is installed for this benchmark only, never for ft: `pip install --target /tmp/trl-site --no-deps trl`
(the script adds /tmp/trl-site to the TRL contender's path, or set TRL_SITE). Each contender runs in a process
of its own: the same tiny random Llama (ft.tiny, --hidden, --layers), the same pairs (prompts of 16 to 240
words, answers of 8 to 120 words, so lengths vary as in real preference sets), LoRA r=16 on every linear
layer, DPO's sigmoid loss at β 0.1, AdamW at lr 5e-5, micro batch --batch pairs, --steps steps after two
warm-up steps. Real tokens are the prompt and answer tokens of both answers of every pair trained, counted
from each batch as the step receives it; padding is not counted. Peak memory: the GPU's peak allocated memory
on a GPU, the process's peak resident memory on CPU. TRL pads each batch (its DPO turns padding_free off);
ft lays the answers end to end. Target: ft ≥ 1.5× TRL's real tokens per second on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
WORDS = "cat dog red blue sun moon tree fish bird star king queen city river lake road".split()


def pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def words(a: int, b: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(a, b)))

    return [{"prompt": "Continue: " + words(16, 240) + "\n", "chosen": " " + words(8, 120), "rejected": " " + words(8, 120)}
            for _ in range(n)]


def peak_mb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Meter:
    """Wraps a Trainer's training_step: the wall time and the real tokens (no padding) of the steps after the
    warm-up ones, counted from each batch as the step receives it (the attention mask of a padded batch, the
    real-token count ft's collator gives a flattened one)."""

    def __init__(self, trainer, warmup: int) -> None:
        self.warmup, self.steps, self.tokens, self.started = warmup, 0, 0, None
        step = trainer.training_step

        def training_step(model, inputs, *args, **kwargs):
            self.steps += 1
            if self.steps == self.warmup + 1:
                self.sync()
                self.started = time.perf_counter()
            if self.steps > self.warmup:
                mask = inputs.get("attention_mask")
                self.tokens += int(mask.sum()) if mask is not None else int(inputs["ft_real_tokens"])
            return step(model, inputs, *args, **kwargs)

        trainer.training_step = training_step

    def sync(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def figures(self) -> dict:
        self.sync()
        seconds = time.perf_counter() - self.started
        return {"seconds": seconds, "real_tokens": self.tokens, "real_tokens_per_s": self.tokens / seconds, "peak_mb": peak_mb()}


def ft_figures(work: Path, head: str, args, learning_rate: str, extra: str = "") -> dict:
    """ft's run of the config `head` (model, data, method) + the settings both benchmarks share, measured."""
    from ft.commands.config import load
    from ft.commands.train import build_run

    cfg_text = head + (f"sequence_len: 1024\nmicro_batch_size: {args.batch}\nmax_steps: {args.steps + 2}\n"
                       f"learning_rate: {learning_rate}\noptimizer: adamw_torch\nlr_scheduler: constant\nlogging_steps: 1\n"
                       f"save_steps: 100000\noutput_dir: {work / 'ft-out'}\nuse_tensorboard: false\n"
                       f"shuffle_merged_datasets: false\n{extra}")
    (work / "ft.yml").write_text(cfg_text)
    run = build_run(load(work / "ft.yml"), 1)
    meter = Meter(run.trainer, 2)
    run.trainer.train()
    return meter.figures()


def run_ft(work: Path, args) -> dict:
    return ft_figures(work, f"base_model: {work / 'model'}\ndatasets:\n  - path: {work / 'pairs.jsonl'}\n    type: preference\n"
                      f"rl: dpo\nrl_beta: 0.1\nadapter: lora\nlora_r: 16\nlora_alpha: 32\nlora_target_linear: true\n",
                      args, "0.00005")


def run_trl(work: Path, args) -> dict:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    data = load_dataset("json", data_files=str(work / "pairs.jsonl"), split="train")
    config = DPOConfig(output_dir=str(work / "trl-out"), per_device_train_batch_size=args.batch, max_steps=args.steps + 2,
                       learning_rate=5e-5, lr_scheduler_type="constant", beta=0.1, loss_type="sigmoid", logging_steps=1,
                       save_strategy="no", report_to=[], max_length=1024, bf16=torch.cuda.is_available(),
                       use_cpu=not torch.cuda.is_available())
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=lora)
    meter = Meter(trainer, 2)
    trainer.train()
    return meter.figures()


def contender_process(script: str, name: str, work: Path, extra: list[str]) -> dict:
    """Run `script --run name` in a process of its own (TRL's from TRL_SITE, or /tmp/trl-site), its figures."""
    env = dict(os.environ)
    if name == "trl":
        env["PYTHONPATH"] = os.pathsep.join([env.get("TRL_SITE", "/tmp/trl-site"), env.get("PYTHONPATH", "")])
    command = [sys.executable, script, "--run", name, "--work", str(work), *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def contender_arguments(doc: str, size: str, size_default: int, steps: int) -> argparse.Namespace:
    """The command line both benchmarks share (--<size> rows or pairs, --batch, --steps, the model's size, the
    contenders; --run and --work for a contender's own process)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(f"--{size}", type=int, default=size_default)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--contenders", nargs="+", choices=["ft", "trl"], default=["ft", "trl"],
                        help="ft alone where TRL is not installed (the GPU check's CPU smoke mode)")
    parser.add_argument("--run", choices=["ft", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="also write the figures to this JSON file")
    return parser.parse_args()


def compare(script: str, work: Path, args: argparse.Namespace) -> None:
    """Each contender in its own process, one line of figures each (saved after every one), then the ratio."""
    figures = {}
    for name in args.contenders:
        result = contender_process(script, name, work, ["--batch", str(args.batch), "--steps", str(args.steps)])
        figures[name] = result
        print(f"{name:4s} {result['real_tokens_per_s']:10.0f} real tokens/s   {result['real_tokens']:8d} real tokens in "
              f"{result['seconds']:7.2f} s ({args.steps} steps)   peak {result['peak_mb']:8.0f} MB", flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(figures, indent=1))
    if len(figures) == 2:
        ratio = figures["ft"]["real_tokens_per_s"] / figures["trl"]["real_tokens_per_s"]
        print(f"ft / TRL: {ratio:.2f}× real tokens per second; peak memory {figures['ft']['peak_mb'] / figures['trl']['peak_mb']:.2f}×")
        if args.out:
            Path(args.out).write_text(json.dumps({**figures, "ratio": ratio}, indent=1))


def main() -> None:
    args = contender_arguments(__doc__, "pairs", 256, 24)
    if args.run:
        figures = (run_ft if args.run == "ft" else run_trl)(Path(args.work), args)
        print("RESULT " + json.dumps(figures))
        return

    from ft.tiny import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="ft-bench-preference-"))
    make_tiny_model(work / "model", "llama", hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                    num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2)
    rows = pairs(args.pairs)
    (work / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    compare(__file__, work, args)


if __name__ == "__main__":
    main()
