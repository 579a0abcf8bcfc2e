#!/usr/bin/env python
"""`ft preprocess` throughput, cold and warm, beside a plain `datasets.map` baseline, in the same run.

    python scripts/bench_preprocess.py [--rows 50000] [--repeat 3]

Data: generated alpaca rows (output exp(N(3.6, 1.0)) words capped at 700; two rows in three with an
input of exp(N(2.5, 1.2)) words capped at 200), loss on the output only, the test tokenizer.
Contenders, each a whole fresh process (start-up included), interleaved A B A B:
- ft cold: `ft preprocess` with an empty cache; ft warm: the same command again (cache hit).
- baseline cold: `datasets.load_dataset("json")` + `Dataset.map` of the same template and masking (prompt
  and full text tokenized, the prompt's tokens masked), batched, with an empty datasets cache;
  baseline warm: the same script again (datasets' own cache of the load and the map).
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


BASELINE = r'''
import sys, datasets
from transformers import AutoTokenizer
data_file, model_dir, cache_dir, seq_len = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tok = AutoTokenizer.from_pretrained(model_dir)
WITH = ("Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
WITHOUT = ("Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
           "### Instruction:\n{instruction}\n\n### Response:\n")
def fmt(batch):
    prompts = [WITH.format(instruction=i, input=x) if x else WITHOUT.format(instruction=i)
               for i, x in zip(batch["instruction"], batch["input"])]
    full = tok([p + o + tok.eos_token for p, o in zip(prompts, batch["output"])])["input_ids"]
    plen = [len(x) for x in tok(prompts)["input_ids"]]
    labels = [[-100] * n + ids[n:] for n, ids in zip(plen, full)]
    return {"input_ids": full, "labels": labels}
ds = datasets.load_dataset("json", data_files=data_file, split="train", cache_dir=cache_dir)
ds = ds.map(fmt, batched=True, remove_columns=ds.column_names)
ds = ds.filter(lambda x: len(x["input_ids"]) <= seq_len)
print(len(ds))
'''


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sequence-len", type=int, default=2048)
    args = parser.parse_args()
    from ft.tiny import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="ft-bench-pre-"))
    try:
        model = make_tiny_model(work / "model")
        data = work / "rows.jsonl"
        generate(data, args.rows)
        (work / "cfg.yml").write_text(
            f"base_model: {model}\ndatasets:\n  - path: {data}\n    type: alpaca\n"
            f"sequence_len: {args.sequence_len}\ntrain_on_inputs: false\noutput_dir: {work / 'out'}\n"
        )
        ft = [sys.executable, "-m", "ft", "preprocess", "cfg.yml"]
        times: dict[str, list[float]] = {k: [] for k in ("ft cold", "ft warm", "baseline cold", "baseline warm")}
        tokens = 0
        for rep in range(args.repeat):
            shutil.rmtree(work / "out", ignore_errors=True)
            cache = work / f"hf-cache-{rep}"
            base = [sys.executable, "-c", BASELINE, str(data), str(model), str(cache), str(args.sequence_len)]
            seconds, stdout = timed(ft, work)
            times["ft cold"].append(seconds)
            times["baseline cold"].append(timed(base, work)[0])
            times["ft warm"].append(timed(ft, work)[0])
            times["baseline warm"].append(timed(base, work)[0])
            meta = json.loads(next((work / "out/prepared").glob("*/meta.json")).read_text())
            tokens = meta["train"]["tokens"]
        print(f"{args.rows:,} alpaca rows, {tokens:,} tokens kept, sequence_len {args.sequence_len}, "
              f"median of {args.repeat} interleaved runs, whole process (start-up included)\n")
        print("| contender | median s | rows/s | tokens/s |")
        print("| --- | --- | --- | --- |")
        for name, samples in times.items():
            med = statistics.median(samples)
            print(f"| {name} | {med:.2f} | {args.rows / med:,.0f} | {tokens / med:,.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
