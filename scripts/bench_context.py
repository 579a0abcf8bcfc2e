#!/usr/bin/env python
"""The longest single row that trains two steps within a GPU memory cap, for 8B QLoRA with checkpointing.

    python scripts/bench_context.py [--cap-gb 24 16 48] [--contenders ft ft-offload ft-offload-tiled baseline]
    python scripts/bench_context.py --lengths 65536 81920 --contenders ft-offload-tiled   (those lengths only, side by side)
    python scripts/bench_context.py --high 2048 --unit 512 --contenders ft baseline   (a CPU smoke run)

Model: a random-weight Llama with Llama 3.1 8B's shape (vocab 128,256), built from a config on the GPU
(a tiny Llama on CPU, where no cap applies). Contenders, each trial a fresh process capped with
torch.cuda.set_per_process_memory_fraction (the CUDA context, ~0.5 GB, is outside the cap):
- ft: `ft train` itself (the chunked loss, no fp32 upcast of the 4-bit base);
- ft-offload: the same with activation_offloading;
- ft-offload-tiled: the same with activation_offloading and tiled_mlp;
- baseline: plain transformers + peft + bitsandbytes (prepare_model_for_kbit_training, sdpa, the model's own
  loss), stepped by hand under bf16 autocast.
The search runs for every (contender, cap) pair at once: each round probes a few lengths (multiples of
--unit) inside each pair's open interval, as many trials side by side as the GPU's memory holds caps (a
trial's fit does not depend on its neighbours: each has its own cap). Then, each alone on the GPU, every
contender's second-step time at --time-at tokens (16,384) under the first cap, beside ft's.
With --lengths, no search: each contender tries those lengths, side by side, and the step-time comparison is
left out (the GPU check's short form). Trials that offload activations run one at a time: each pins host
memory for its activations (~21 GiB at 80k tokens on 8B), and side by side they could exhaust it.
A trial that fails for another reason than GPU memory (pinned host memory included) stops the run with its
error. The JSON (--out) is written after every trial.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

CONTENDERS = {  # the config keys each ft contender adds
    "ft": {},
    "ft-offload": {"activation_offloading": True},
    "ft-offload-tiled": {"activation_offloading": True, "tiled_mlp": True},
    "baseline": None,
}
OOM_WORDS = ("out of memory", "outofmemoryerror")
HOST_WORDS = ("pinned", "cudahostalloc", "hostalloc")  # pinned host memory ran out: not the GPU's memory


class TrialFailed(RuntimeError):
    """A trial failed for another reason than memory: the figures would be wrong, so the run stops."""


def trial(kind: str, model: Path, tokens: int, cap_gb: float, work: Path) -> dict[str, Any]:
    """Two steps on one row of `tokens` tokens in a fresh process under the cap: {ok, seconds, peak_gb}."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from bench_context import run_trial; "
            "print('RESULT ' + json.dumps(run_trial(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), sys.argv[6])))")
    args = [str(Path(__file__).resolve().parent), kind, str(model), str(tokens), str(cap_gb), str(work)]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=1800)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    result = json.loads(line.removeprefix("RESULT ")) if line is not None else {"ok": False}
    if result["ok"]:
        return result
    said = proc.stderr.lower()
    if any(word in said for word in OOM_WORDS) and not any(word in said for word in HOST_WORDS):
        return {"ok": False}
    raise TrialFailed(f"{kind} at {tokens} tokens under {cap_gb} GiB failed, not for memory:\n{proc.stderr[-3000:]}")


def run_trial(kind: str, model: str, tokens: int, cap_gb: float, work: str) -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gb * 2**30 / torch.cuda.get_device_properties(0).total_memory))
    ids = [(i * 7919) % 1000 + 5 for i in range(tokens)]
    if kind == "baseline":
        return _baseline_steps(model, ids)
    return _ft_steps(kind, model, ids, Path(work) / f"{kind}-{cap_gb}-{tokens}")


def _ft_steps(kind: str, model: str, ids: list[int], folder: Path) -> dict[str, Any]:
    import torch
    import yaml

    from ft.cli import main as ft_main

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "row.jsonl").write_text(json.dumps({"input_ids": ids}) + "\n")
    body = {"base_model": model, "datasets": [{"path": str(folder / "row.jsonl")}], "sequence_len": len(ids),
            "micro_batch_size": 1, "max_steps": 2, "adapter": "qlora", "load_in_4bit": True, "lora_r": 16, "lora_alpha": 32,
            "lora_target_linear": True, "gradient_checkpointing": True, "bf16": torch.cuda.is_available(),
            "learning_rate": 1e-4, "lr_scheduler": "constant", "save_steps": 1000, "output_dir": str(folder / "out"),
            "use_tensorboard": False, **CONTENDERS[kind]}
    (folder / "cfg.yml").write_text(yaml.safe_dump(body))
    try:
        ft_main(["train", str(folder / "cfg.yml")])  # ft reports out of memory in one line on stderr, exit 2
    except SystemExit as exc:
        if exc.code:
            return {"ok": False}
    records = [json.loads(x) for x in (folder / "out/metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "loss" in r][-1]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    shutil.rmtree(folder, ignore_errors=True)
    return {"ok": True, "seconds": len(ids) / last["tokens_per_s"], "peak_gb": peak}


def _baseline_steps(model: str, ids: list[int]) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    gpu = torch.cuda.is_available()
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    base = AutoModelForCausalLM.from_pretrained(model, quantization_config=quant, dtype=torch.bfloat16,
                                                attn_implementation="sdpa", device_map={"": 0 if gpu else "cpu"})
    base.config.use_cache = False
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    net = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    net.train()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    x = torch.tensor([ids], device=net.device)
    seconds = 0.0
    for _ in range(2):
        start = time.perf_counter()
        with torch.autocast("cuda" if gpu else "cpu", dtype=torch.bfloat16, enabled=gpu):
            loss = net(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if gpu:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {"ok": True, "seconds": seconds, "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if gpu else float("nan")}


def probes(fits: int, fails: int, k: int) -> list[int]:
    """Up to k lengths (in units) strictly between a length known to fit and one known to fail, evenly spread."""
    inside = range(fits + 1, fails)
    if len(inside) <= k:
        return list(inside)
    return sorted({fits + round((fails - fits) * i / (k + 1)) for i in range(1, k + 1)})


def search(pairs: list[tuple[str, float]], run: Any, high: int, memory_gb: float, log: Any = print) -> dict[tuple[str, float], int]:
    """The longest fitting length (in units, 0 if none) of every (contender, cap) pair, assuming that a row
    longer than one that does not fit does not fit either. `run(kind, units, cap)` → bool; trials run side by
    side while the sum of their caps (+1 GiB each) stays within memory_gb."""
    seen: dict[tuple[str, float], dict[int, bool]] = {pair: {} for pair in pairs}

    def bounds(pair: tuple[str, float]) -> tuple[int, int]:
        fails = min([u for u, ok in seen[pair].items() if not ok], default=high + 1)
        return max([u for u, ok in seen[pair].items() if ok and u < fails], default=0), fails

    while True:
        open_pairs = [pair for pair in pairs if bounds(pair)[1] - bounds(pair)[0] > 1]
        if not open_pairs:
            return {pair: bounds(pair)[0] for pair in pairs}
        slots = max(1, int(memory_gb // (max(cap for _, cap in open_pairs) + 1)))
        k = max(1, slots // len(open_pairs))
        batch = [(pair, units) for pair in open_pairs for units in probes(*bounds(pair), k)]
        with ThreadPoolExecutor(max_workers=slots) as pool:
            results = list(pool.map(lambda job: run(job[0][0], job[1], job[0][1]), batch))
        for (pair, units), ok in zip(batch, results):
            log(f"{pair[0]} under {pair[1]:g} GiB, {units} units: {'fits' if ok else 'out of memory'}")
            seen[pair][units] = ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cap-gb", type=float, nargs="+", default=[24.0])
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
    parser.add_argument("--unit", type=int, default=1024, help="lengths are multiples of this")
    parser.add_argument("--high", type=int, default=131072, help="the longest length tried")
    parser.add_argument("--time-at", type=int, default=16384, help="the length of the step-time comparison")
    parser.add_argument("--memory-gb", type=float, default=None, help="GPU memory to fill with trials (default: all but 4 GiB)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="try these lengths only (no search, no step times)")
    parser.add_argument("--out", default=None, help="write the results as JSON here too")
    args = parser.parse_args()

    import threading

    import torch

    from bench_gpu import build_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = "8b" if device == "cuda" else "tiny"
    memory = args.memory_gb or (torch.cuda.get_device_properties(0).total_memory / 2**30 - 4 if device == "cuda" else 2 * (max(args.cap_gb) + 1))
    work = Path(tempfile.mkdtemp(prefix="ft-bench-context-"))
    result: dict[str, Any] = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "size": size, "unit": args.unit}
    try:
        model = build_model(size, work, device)
        started = time.perf_counter()

        def log(line: str) -> None:
            print(f"[{time.perf_counter() - started:5.0f} s] {line}", file=sys.stderr, flush=True)

        one_offload = threading.Lock()
        result["trials"] = []

        def tried(kind: str, tokens: int, cap: float) -> dict[str, Any]:
            if CONTENDERS[kind] and CONTENDERS[kind].get("activation_offloading"):
                with one_offload:
                    outcome = trial(kind, model, tokens, cap, work)
            else:
                outcome = trial(kind, model, tokens, cap, work)
            result["trials"].append({"contender": kind, "tokens": tokens, "cap_gb": cap, **outcome})
            save(args.out, result)
            return outcome

        if args.lengths:
            jobs = [(kind, n, cap) for cap in args.cap_gb for kind in args.contenders for n in args.lengths]
            slots = max(1, int(memory // (max(args.cap_gb) + 1)))
            with ThreadPoolExecutor(max_workers=slots) as pool:
                outcomes = list(pool.map(lambda job: tried(*job), jobs))
            for (kind, n, cap), outcome in zip(jobs, outcomes):
                log(f"{kind} under {cap:g} GiB, {n} tokens: {'fits' if outcome['ok'] else 'out of memory'}")
            print(f"\nsingle rows that train two steps ({size}, QLoRA nf4, gradient checkpointing)")
            print("| contender | cap | tokens | trains | peak |\n| --- | --- | --- | --- | --- |")
            for (kind, n, cap), o in zip(jobs, outcomes):
                print(f"| {kind} | {cap:g} GiB | {n:,} | {'yes' if o['ok'] else 'no'} | {o['peak_gb']:.1f} GiB |" if o["ok"] else
                      f"| {kind} | {cap:g} GiB | {n:,} | no | - |")
            return

        def fits(kind: str, units: int, cap: float) -> bool:
            return tried(kind, units * args.unit, cap)["ok"]

        pairs = [(kind, cap) for cap in args.cap_gb for kind in args.contenders]
        longest = search(pairs, fits, args.high // args.unit, memory, log)
        result["longest"] = {f"{kind} {cap:g}": units * args.unit for (kind, cap), units in longest.items()}
        save(args.out, result)
        cap = args.cap_gb[0]
        result["step_seconds"] = {kind: (trial(kind, model, args.time_at, cap, work) if longest[(kind, cap)] * args.unit >= args.time_at
                                         else {"ok": False}) for kind in args.contenders}
        save(args.out, result)
        log("step times done")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nlongest single row that trains two steps ({size}, QLoRA nf4, gradient checkpointing; tokens)")
    print("| contender | " + " | ".join(f"{cap:g} GiB" for cap in args.cap_gb) + f" | step at {args.time_at:,} ({args.cap_gb[0]:g} GiB) | peak there |")
    print("| --- |" + " --- |" * (len(args.cap_gb) + 2))
    base = result["step_seconds"].get("ft", {}).get("seconds")
    for kind in args.contenders:
        step = result["step_seconds"][kind]
        secs = f"{step['seconds']:.2f} s" + (f" ({step['seconds'] / base:.2f}× ft)" if base and kind != "ft" else "") if step["ok"] else "does not fit"
        peak = f"{step['peak_gb']:.1f} GiB" if step["ok"] else "-"
        print(f"| {kind} | " + " | ".join(f"{result['longest'][f'{kind} {cap:g}']:,}" for cap in args.cap_gb) + f" | {secs} | {peak} |")


def save(path: str | None, result: dict[str, Any]) -> None:
    """The results so far, as JSON (a command cut off by a time limit keeps what it measured)."""
    if path:
        Path(path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
