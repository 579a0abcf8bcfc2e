#!/usr/bin/env python
"""`ft plan`'s predicted peak beside the measured peak of real `ft train` steps, one row per setting.

    python scripts/plan_accuracy.py [--sizes 1b 8b] [--lengths 512 4096 16384] [--out docs/plan-accuracy.md]
    python scripts/plan_accuracy.py --sizes tiny --lengths 128 256     (a CPU run: live tensor bytes, not a GPU's)
    torchrun --nproc-per-node 2 scripts/plan_accuracy.py --one CONFIG --to ROWS.jsonl   (one config, each process's row)

Models: random-weight Llamas with real shapes (scripts/bench_gpu.py's: Llama 3.2 1B and Llama 3.1 8B, vocab
128,256), built on the GPU. Settings per size and length: LoRA r=16 on all linear layers, QLoRA (nf4), full
fine-tuning (not at 8B), each with and without gradient checkpointing, and with checkpointing plus activation
offloading or plus selective checkpointing, or of the first 4 layers only (partial); one row of `length` tokens,
micro batch 1. Each setting is `ft train`'s own composition
(build_run) running two steps in a fresh process (up to `--parallel` of them at once, while their planned peaks,
with a quarter more and the CUDA context, fit the GPU together: each process's peak is its own, and a smaller
GPU runs fewer at once); measured: torch.cuda.max_memory_allocated and max_memory_reserved; predicted: the
plan's allocated bytes (without the context) and its peak. Target: within 10% on every row. Rows that run out of memory are marked so (the plan should say they do not fit).
On a CPU, which keeps no allocator statistics, the measured figure is the peak of live tensor bytes over the two
steps (LiveBytes: every storage the operators create, tracked until freed, plus the weights), in fp32: what a
GPU allocates but for what kernels allocate inside themselves (flash attention's workspaces among them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

sys.path.insert(0, str(Path(__file__).resolve().parent))

SETTINGS = {
    "lora": {"adapter": "lora", "lora_r": 16, "lora_alpha": 32, "lora_target_linear": True},
    "qlora": {"adapter": "qlora", "load_in_4bit": True, "lora_r": 16, "lora_alpha": 32, "lora_target_linear": True},
    "full": {},
}
MEMORY = {"none": {}, "checkpointing": {"gradient_checkpointing": True},
          "offloading": {"gradient_checkpointing": True, "activation_offloading": True},
          "selective": {"gradient_checkpointing": True, "selective_checkpointing": True},
          "partial": {"gradient_checkpointing": True, "gradient_checkpointing_layers": 4},
          "grouped": {"gradient_checkpointing": True, "grouped_attention_backward": True}}


def row_config(model: Path, length: int, method: str, memory: str, work: Path, gpu: bool, **extra: Any) -> Path:
    """The row's folder: one row of `length` tokens and its config (with `extra` keys)."""
    import yaml

    folder = work / f"{method}-{memory}-{length}"
    folder.mkdir(parents=True)
    (folder / "row.jsonl").write_text(json.dumps({"input_ids": [(i * 7919) % 1000 + 5 for i in range(length)]}) + "\n")
    body = {"base_model": str(model), "datasets": [{"path": str(folder / "row.jsonl")}], "sequence_len": length, "micro_batch_size": 1,
            "max_steps": 2, "learning_rate": 1e-4, "bf16": gpu, "output_dir": str(folder / "out"),
            "use_tensorboard": False, "save_steps": 1000, **SETTINGS[method], **MEMORY[memory], **extra}
    (folder / "cfg.yml").write_text(yaml.safe_dump(body))
    return folder / "cfg.yml"


def planned(path: Path, gpus: int = 1) -> dict:
    """`ft plan`'s figures for the row (no model is loaded)."""
    from ft.commands.config import load
    from ft.commands.plan import plan_report

    report = plan_report(load(path), 1 << 50, gpus)
    return {"predicted_allocated": report["allocated"], "predicted_peak": report["peak"]}


def one(path: str) -> dict:
    """In a fresh process (or each of torchrun's): two real steps of the row's config; the plan beside the measured
    peak (on a CPU, the peak of live tensor bytes from the start of training, LiveBytes, with the weights)."""
    import os

    from transformers import TrainerCallback

    from ft.commands.config import load
    from ft.commands.train import build_run

    world = int(os.environ.get("WORLD_SIZE", "1"))
    row = {**planned(Path(path), world), "rank": int(os.environ.get("RANK", "0"))}
    try:
        run = build_run(load(path), world)
        gpu = torch.cuda.is_available()
        if gpu:
            run.trainer.train()
            row.update(measured_allocated=torch.cuda.max_memory_allocated(), measured_reserved=torch.cuda.max_memory_reserved(), ok=True)
        else:
            before = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                          for t in [*run.model.parameters(), *run.model.buffers()]}.values())
            live, begun = LiveBytes(), []

            # from the start of training: with several CPU processes accelerate's model.to() makes the weights anew
            # (counted in `before` already), and DDP makes its gradient buckets, before it
            class Begin(TrainerCallback):
                def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
                    begun.append(live.now)
                    live.peak = live.now

            run.trainer.add_callback(Begin())
            with live:
                run.trainer.train()
            row.update(measured_allocated=before + live.peak - begun[0], measured_reserved=None, ok=True)
    except torch.OutOfMemoryError:
        row.update(ok=False)
    return row


class LiveBytes(TorchDispatchMode):
    """On a CPU, which keeps no allocator statistics: the bytes of the tensor storages that the operators run under
    it create (outputs that alias an input excluded), while they are alive, and their peak; what kernels allocate
    inside themselves is not seen."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = WeakIdKeyDictionary()
        self.now = self.peak = 0

    def _free(self, n: int) -> None:
        self.now -= n

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                if storage not in self.seen and storage.data_ptr() not in inputs:
                    self.seen[storage] = n = storage.nbytes()
                    self.now += n
                    weakref.finalize(storage, self._free, n)
                    self.peak = max(self.peak, self.now)
        return out


class MemoryBudget:
    """Rows side by side only while their planned peaks (+25% and 1 GiB of CUDA context each) fit the GPU together, so
    that no row runs out of memory for its neighbours (a smaller GPU runs fewer at once); a row planned above
    the whole GPU runs alone."""

    def __init__(self, total: float) -> None:
        import threading

        self.total, self.used, self.running = total, 0.0, 0
        self.changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, need: float) -> Iterator[None]:
        with self.changed:
            self.changed.wait_for(lambda: self.running == 0 or self.used + need <= self.total)
            self.used += need
            self.running += 1
        try:
            yield
        finally:
            with self.changed:
                self.used -= need
                self.running -= 1
                self.changed.notify_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["1b", "8b"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 4096, 16384])
    parser.add_argument("--methods", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--memory", nargs="+", default=list(MEMORY), choices=list(MEMORY), help="which memory settings")
    parser.add_argument("--out", default=None, help="write the markdown table here too")
    parser.add_argument("--parallel", type=int, default=3, help="rows measured at once, each in its own process")
    parser.add_argument("--one", metavar="CONFIG", help="measure this config alone (under torchrun: each process) and "
                        "add its row, as JSON, to the file --to names")
    parser.add_argument("--to", help="with --one")
    args = parser.parse_args()
    if args.one:
        from ft.launch.backend import end_processes

        row = one(args.one)
        with open(args.to, "a") as out:
            out.write(json.dumps(row) + "\n")
        end_processes()
        return

    from bench_gpu import build_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    lines = ["| size | method | memory | tokens | predicted allocated | measured allocated | error | measured reserved | predicted peak |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    print("\n".join(lines), flush=True)
    from concurrent.futures import ThreadPoolExecutor

    budget = MemoryBudget(torch.cuda.get_device_properties(0).total_memory - 2**30 if device == "cuda" else float("inf"))

    def run_row(model: Path, work: Path, size: str, method: str, memory: str, length: int) -> str:
        path = row_config(model, length, method, memory, work, device == "cuda")
        code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from plan_accuracy import one; "
                "print('ROW ' + json.dumps(one(sys.argv[2])))")
        with budget.hold(1.25 * planned(path)["predicted_peak"] + 2**30):  # room for the plan being 25% low
            proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(path)], capture_output=True, text=True)
        found = [x for x in proc.stdout.splitlines() if x.startswith("ROW ")]
        if not found:
            raise SystemExit(f"{size} {method} {memory} {length} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(found[0][4:])
        gib = lambda n: "-" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"  # noqa: E731
        error = (f"{100 * (r['predicted_allocated'] / r['measured_allocated'] - 1):+.1f}%"
                 if r.get("measured_allocated") else "-")
        line = (f"| {size} | {method} | {memory} | {length:,} | {gib(r['predicted_allocated'])} | "
                f"{gib(r.get('measured_allocated')) if r['ok'] else 'out of memory'} | {error} | "
                f"{gib(r.get('measured_reserved')) if r['ok'] else '-'} | {gib(r['predicted_peak'])} |")
        print(line, flush=True)  # as each row ends: a run stopped at its time budget keeps what it measured
        return line

    for size in args.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"ft-plan-accuracy-{size}-"))
        model = build_model(size, work, device)
        # the memory settings in the order given (the none, checkpointing, offloading first): a run stopped at
        # its time budget has measured every method under them
        rows = [(method, memory, length) for memory in args.memory for method in args.methods for length in args.lengths
                if not (method == "full" and size.startswith("8b"))
                and not (method == "qlora" and device == "cpu")]  # bitsandbytes on CPU keeps other buffers than on CUDA
        # each row is its own process (its own allocator and peak); several at once on the one GPU while their
        # planned peaks fit it together (MemoryBudget): the peak each reports is its own
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            lines += list(pool.map(lambda row: run_row(model, work, size, *row), rows))
    if args.out:
        Path(args.out).write_text("# `ft plan` accuracy\n\nscripts/plan_accuracy.py; target: within 10% on every row.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
