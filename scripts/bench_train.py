#!/usr/bin/env python
"""Training throughput: ft packed, ft unpacked, a padded transformers Trainer and TRL's packing, interleaved.

    python scripts/bench_train.py [--repeat 3] [--rows 1500] [--out docs/benchmarks.md]

Data: generated alpaca rows (output exp(N(3.6, 1.0)) words capped at 700; two rows in three with an
input of exp(N(2.5, 1.2)) words capped at 200), sequence_len 1024, loss on the output only.
Model: random Llama (hidden 256, intermediate 688, 4 layers, 8 heads, 4 KV heads) with the test tokenizer;
LoRA r=8 on all linear layers; micro batch 4; one epoch; OMP_NUM_THREADS=1. One more ft contender packs 3 bins
per micro batch: about as many tokens per step as the padded Trainer's largest batch, to compare memory
at equal tokens per step.
Each contender is a whole fresh process (data preparation included); the runs are interleaved A B C D A B
C D ... and the medians are printed: real (non-padding) tokens per CPU-second and per wall second, the
share of token slots that are real, and peak RSS. TRL is needed only here: `pip install trl`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _alpaca_rows import generate

ROOT = Path(__file__).resolve().parents[1]

# The baselines share this preamble: tokenization as seed 004 teaches (prompt tokens masked), rows longer
# than 1024 tokens dropped as ft does, LoRA r=8 on all linear layers, the same optimizer settings.
COMMON = r'''
import json, sys, time, torch
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import LoraConfig
work = Path(sys.argv[1]); model_dir = str(work / "model")
tok = AutoTokenizer.from_pretrained(model_dir)
WITH = ("Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
WITHOUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
           "### Instruction:\n{instruction}\n\n### Response:\n")
rows = [json.loads(l) for l in open(work / "rows.jsonl")]
prompts = [WITH.format(**r) if r["input"] else WITHOUT.format(**r) for r in rows]
lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
class Count:
    def __init__(self, inner): self.inner, self.real, self.slots, self.largest = inner, 0, 0, 0
    def __call__(self, features):
        batch = self.inner(features)
        self.slots += batch["input_ids"].numel()
        self.largest = max(self.largest, batch["input_ids"].numel())
        self.real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())
        return batch
'''

PADDED = COMMON + r'''
from datasets import Dataset
from peft import get_peft_model
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments
def encode(prompt, output):
    p = tok(prompt)["input_ids"]
    full = tok(prompt + output)["input_ids"] + [tok.eos_token_id]
    return {"input_ids": full, "labels": [-100] * len(p) + full[len(p):], "attention_mask": [1] * len(full)}
data = Dataset.from_list([encode(p, r["output"]) for p, r in zip(prompts, rows)]).filter(lambda x: len(x["input_ids"]) <= 1024)
model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), lora)
collator = Count(DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
args = TrainingArguments(output_dir=str(work / "padded"), per_device_train_batch_size=4, num_train_epochs=1, learning_rate=2e-4,
                         lr_scheduler_type="cosine", logging_steps=50, save_strategy="no", report_to="none", use_cpu=True, seed=42,
                         remove_unused_columns=False, disable_tqdm=True)
Trainer(model=model, args=args, train_dataset=data, data_collator=collator).train()
print(json.dumps({"tokens": collator.real, "slots": collator.slots, "largest": collator.largest}))
'''

TRL = COMMON + r'''
from datasets import Dataset
from trl import SFTConfig, SFTTrainer
data = Dataset.from_list([{"prompt": p, "completion": r["output"] + tok.eos_token} for p, r in zip(prompts, rows)])
args = SFTConfig(output_dir=str(work / "trl"), per_device_train_batch_size=4, num_train_epochs=1, learning_rate=2e-4,
                 lr_scheduler_type="cosine", logging_steps=50, save_strategy="no", report_to="none", use_cpu=True, seed=42,
                 packing=True, max_length=1024, completion_only_loss=True, disable_tqdm=True)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=lora)
trainer.data_collator = collator = Count(trainer.data_collator)
trainer.train()
lengths = trainer.train_dataset["seq_lengths"] if "seq_lengths" in trainer.train_dataset.column_names else None
real = sum(sum(x) for x in lengths) if lengths is not None else collator.real
print(json.dumps({"tokens": real, "slots": collator.slots, "largest": collator.largest}))
'''


# ft contenders: name -> (sample_packing, micro_batch_size). "3 bins" holds about as many tokens per step
# (3 × 1,024) as the padded Trainer's largest batch (4 × its longest row), to compare memory per token.
FT = {"ft packed": (True, 4), "ft unpacked": (False, 4), "ft packed, 3 bins": (True, 3)}


def ft_dir(name: str) -> str:
    return name.replace(",", "").replace(" ", "-")


def ft_config(work: Path, name: str) -> Path:
    packed, micro = FT[name]
    path = work / f"{ft_dir(name)}.yml"
    path.write_text(
        f"base_model: {work / 'model'}\n"
        f"datasets:\n  - path: {work / 'rows.jsonl'}\n    type: alpaca\n"
        f"sequence_len: 1024\ntrain_on_inputs: false\nsample_packing: {str(packed).lower()}\n"
        f"micro_batch_size: {micro}\nnum_epochs: 1\nlearning_rate: 0.0002\nlr_scheduler: cosine\nlogging_steps: 50\n"
        "adapter: lora\nlora_r: 8\nlora_alpha: 16\nlora_target_linear: true\nuse_tensorboard: false\n"
        f"output_dir: {work / ft_dir(name)}\n"
    )
    return path


def measure(cmd: list[str], env: dict) -> dict:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd[:4]))} failed:\n{err[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu": cpu, "wall": wall, "stdout": out, "stderr": err}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--out", default=None, help="append the table to this markdown file")
    parser.add_argument("--skip", nargs="*", default=[], help="contenders to leave out")
    args = parser.parse_args()

    from ft.tiny import build_tokenizer, model_config

    work = Path(tempfile.mkdtemp(prefix="ft-bench-train-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        import torch
        from transformers import AutoModelForCausalLM

        tok = build_tokenizer()
        config = model_config("llama", tok, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                              num_attention_heads=8, num_key_value_heads=4)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(work / "model")
        tok.save_pretrained(work / "model")
        generate(work / "rows.jsonl", args.rows)
        contenders = {
            name: [sys.executable, str(ROOT / "scripts/_measure.py"), "-m", "ft", "train", str(ft_config(work, name))]
            for name in FT
        }
        contenders |= {
            "padded Trainer": [sys.executable, str(ROOT / "scripts/_measure.py"), "-c", PADDED, str(work)],
            "TRL SFTTrainer packing": [sys.executable, str(ROOT / "scripts/_measure.py"), "-c", TRL, str(work)],
        }
        contenders = {k: v for k, v in contenders.items() if k not in args.skip}
        results: dict[str, list[dict]] = {k: [] for k in contenders}
        for rep in range(args.repeat):
            for name, cmd in contenders.items():
                for other in FT:
                    shutil.rmtree(work / ft_dir(other), ignore_errors=True)
                r = measure(cmd, env)
                stats = json.loads(r["stderr"].strip().splitlines()[-1])  # written by _measure.py
                if name in FT:
                    summary = json.loads((work / ft_dir(name) / "summary.json").read_text())
                    tokens, slots, largest = summary["tokens"], summary["token_slots"], summary["largest_batch_slots"]
                else:
                    counted = json.loads(r["stdout"].strip().splitlines()[-1])
                    tokens, slots, largest = counted["tokens"], counted["slots"], counted["largest"]
                results[name].append({"cpu": stats["cpu"], "wall": r["wall"], "rss": stats["peak_rss_mb"],
                                      "tokens": tokens, "slots": slots, "largest": largest})
                print(f"rep {rep} {name}: {r['wall']:.0f} s wall, {stats['cpu']:.0f} CPU s, {tokens} tokens", file=sys.stderr)
        table = [
            f"`python scripts/bench_train.py --repeat {args.repeat} --rows {args.rows}`: {args.rows} alpaca rows, "
            "sequence_len 1024, LoRA r=8 on all linear layers of a random Llama (hidden 256, 4 layers), micro batch 4, "
            f"one epoch, OMP_NUM_THREADS=1; medians of {args.repeat} interleaved runs, whole process.",
            "",
            "| contender | real tokens / CPU s | real tokens / wall s | token slots real | peak RSS MB | largest step (token slots) | CPU s | wall s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, runs in results.items():
            med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
            tok_cpu = statistics.median(r["tokens"] / r["cpu"] for r in runs)
            tok_wall = statistics.median(r["tokens"] / r["wall"] for r in runs)
            eff = statistics.median(r["tokens"] / r["slots"] for r in runs)
            table.append(f"| {name} | {tok_cpu:,.0f} | {tok_wall:,.0f} | {eff:.3f} | {med('rss'):,.0f} | {med('largest'):,.0f} | {med('cpu'):.0f} | {med('wall'):.0f} |")
        text = "\n".join(table)
        print(text)
        if args.out:
            with open(args.out, "a") as f:
                f.write("\n" + text + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
