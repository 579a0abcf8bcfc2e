#!/usr/bin/env python
"""The longest single row that trains two steps within a GPU memory cap, for 8B QLoRA with checkpointing.

    python scripts/bench_context.py [--cap-gb 24 16 48] [--contenders ft ft-offload ft-offload-tiled baseline]
    python scripts/bench_context.py --size 8b-8l --as-layers 32 --trials ft-long:131072,114688 ft:16384
                                       (those trials only, one at a time; 114,688 only if 131,072 does not fit)
    python scripts/bench_context.py --high 2048 --unit 512 --contenders ft baseline   (a CPU smoke run)

Model: a random-weight Llama with Llama 3.1 8B's shape (vocab 128,256), built from a config on the GPU
(a tiny Llama on CPU, where no cap applies), or another shape of bench_gpu.py's (--size). Contenders, each
trial a fresh process capped with torch.cuda.set_per_process_memory_fraction (the CUDA context, ~0.5 GB, is
outside the cap):
- ft: `ft train`'s own composition (the chunked loss, no fp32 upcast of the 4-bit base);
- ft-offload: the same with activation_offloading;
- ft-offload-tiled: the same with activation_offloading and tiled_mlp;
- ft-long: the same with chunked_rms_norm (each norm keeps its input as it is, not an fp32 copy) and
  grouped_attention_backward (each attention backward a group of key/value heads at a time) too;
- ft-selective: ft with selective_checkpointing (each layer keeps its attention output: the backward pass
  recomputes the rest of the layer but not attention);
- baseline: plain transformers + peft + bitsandbytes (prepare_model_for_kbit_training, sdpa, the model's own
  loss), stepped by hand under bf16 autocast.
Both steps run under the cap; the second (the larger: the optimizer's states exist) under the cap less what
the layers the model lacks would hold, with --as-layers above its depth (8B's 8-layer form standing for its
32 layers: a quarter of the build and of the step time). That is measured in the first step, per decoder
layer: its tensors (4-bit weights and quantization state, norms, LoRA weights) with a gradient and AdamW's
two states for each trainable one, and what its forward leaves on the GPU until the backward pass (a
checkpointed input; about nothing when offloaded). The reported peak adds the missing layers back.
The search runs for every (contender, cap) pair at once: each round probes a few lengths (multiples of
--unit) inside each pair's open interval, as many trials side by side as the GPU's memory holds caps (a
trial's fit does not depend on its neighbours: each has its own cap). Then, each alone on the GPU, every
contender's second-step time at --time-at tokens (16,384) under the first cap, beside ft's.
With --trials, no search: those CONTENDER:TOKENS trials, one at a time in the order given (each second-step
time is its own), each time beside ft's at the same length; CONTENDER:N1,N2 tries N2 only if N1 does not fit.
Trials that offload activations run one at a time in the search too: each pins host memory for its activations
(~21 GiB at 80k tokens on 8B's 32 layers), and side by side they could exhaust it.
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
    "ft-long": {"activation_offloading": True, "tiled_mlp": True, "chunked_rms_norm": True, "grouped_attention_backward": True},
    "ft-selective": {"selective_checkpointing": True},
    "baseline": None,
}
OOM_WORDS = ("out of memory", "outofmemoryerror")
HOST_WORDS = ("pinned", "cudahostalloc", "hostalloc")  # pinned host memory ran out: not the GPU's memory


class TrialFailed(RuntimeError):
    """A trial failed for another reason than memory: the figures would be wrong, so the run stops."""


def trial(kind: str, model: Path, tokens: int, cap_gb: float, work: Path, as_layers: int = 0) -> dict[str, Any]:
    """Two steps on one row of `tokens` tokens in a fresh process under the cap: {ok, seconds, peak_gb, ...}."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from bench_context import run_trial; "
            "print('RESULT ' + json.dumps(run_trial(*sys.argv[2:4], int(sys.argv[4]), float(sys.argv[5]), sys.argv[6], int(sys.argv[7]))))")
    args = [str(Path(__file__).resolve().parent), kind, str(model), str(tokens), str(cap_gb), str(work), str(as_layers)]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=1800)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    result = json.loads(line.removeprefix("RESULT ")) if line is not None else {"ok": False}
    if result["ok"] or line is not None:
        return result
    said = proc.stderr.lower()
    if any(word in said for word in OOM_WORDS) and not any(word in said for word in HOST_WORDS):
        return {"ok": False}
    raise TrialFailed(f"{kind} at {tokens} tokens under {cap_gb} GiB failed, not for memory:\n{proc.stderr[-3000:]}")


class Cap:
    """The memory cap of one trial. Both steps run under cap_gb; the second, the larger (the optimizer's states
    exist), under cap_gb less what the layers the model lacks would hold (`as_layers` above its depth: a
    model of fewer layers of the same width stands for the deeper one). Measured in the first step, per
    decoder layer: its own tensors (4-bit weights with their quantization state, norms, LoRA weights) with a
    gradient and AdamW's two states for each trainable one, plus what each layer's forward leaves on the GPU
    until the backward pass (the growth of allocated memory from the first layer's start to the last one's,
    per layer: a checkpointed input, or about nothing when it is offloaded)."""

    def __init__(self, model: Any, cap_gb: float, as_layers: int) -> None:
        import torch

        self.gpu = torch.cuda.is_available()
        self.cap_gb, self.lowered, self.per_layer = cap_gb, 0, 0.0
        self.layers = next(m for name, m in model.named_modules() if name.endswith("layers") and isinstance(m, torch.nn.ModuleList))
        self.missing = max(0, as_layers - len(self.layers))
        self.entered: list[int] = []
        self.hooks = [layer.register_forward_pre_hook(self._enter) for layer in self.layers] if self.gpu else []
        if self.gpu:
            set_cap(cap_gb)

    def _enter(self, module: Any, args: Any) -> None:
        import torch

        if len(self.entered) < len(self.layers):  # the first forward only (checkpointing calls it again)
            self.entered.append(torch.cuda.memory_allocated())

    def lower(self) -> bool:
        """After the first step: the second step's cap; False where the missing layers alone exceed it."""
        import torch

        for hook in self.hooks:
            hook.remove()
        n = len(self.layers)
        kept = (self.entered[-1] - self.entered[0]) / (n - 1) if n > 1 and len(self.entered) == n else 0.0
        self.per_layer = layer_bytes(self.layers[0]) + max(0.0, kept)  # on a CPU: the tensors only
        self.lowered = int(self.missing * self.per_layer)
        left = self.cap_gb * 2**30 - self.lowered
        if not self.gpu:
            return True
        if left <= 0:
            return False
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        set_cap(left / 2**30)
        return True

    def result(self, seconds: float) -> dict[str, Any]:
        import torch

        peak = (torch.cuda.max_memory_allocated() + self.lowered) / 2**30 if self.gpu else float("nan")
        return {"ok": True, "seconds": seconds, "peak_gb": peak, "missing_layers": self.missing,
                "missing_gb": self.lowered / 2**30, "per_layer_gb": self.per_layer / 2**30}


def set_cap(gib: float) -> None:
    import torch

    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / torch.cuda.get_device_properties(0).total_memory))


def layer_bytes(layer: Any) -> int:
    """What one decoder layer holds through training: its tensors (bitsandbytes' quantization state included)
    and, for each trainable one, a gradient and AdamW's two states of its size."""
    import torch

    sizes: dict[int, int] = {}

    def add(t: Any) -> None:
        if isinstance(t, torch.Tensor):
            sizes[t.data_ptr()] = t.nelement() * t.element_size()
        elif type(t).__name__ == "QuantState":  # absmax, code, and the nested state of double quantization
            for value in vars(t).values():
                add(value)

    trainable = 0
    for p in layer.parameters():
        add(p)
        add(getattr(p, "quant_state", None))
        trainable += 3 * p.nelement() * p.element_size() if p.requires_grad else 0
    for b in layer.buffers():
        add(b)
    return sum(sizes.values()) + trainable


def run_trial(kind: str, model: str, tokens: int, cap_gb: float, work: str, as_layers: int = 0) -> dict[str, Any]:
    import torch

    ids = [(i * 7919) % 1000 + 5 for i in range(tokens)]
    try:
        if kind == "baseline":
            return _baseline_steps(model, ids, cap_gb, as_layers)
        return _ft_steps(kind, model, ids, Path(work) / f"{kind}-{cap_gb}-{tokens}", cap_gb, as_layers)
    except torch.OutOfMemoryError:
        return {"ok": False}


def _ft_steps(kind: str, model: str, ids: list[int], folder: Path, cap_gb: float, as_layers: int) -> dict[str, Any]:
    """`ft train`'s own composition (build_run), two steps."""
    import torch
    import yaml
    from transformers import TrainerCallback

    from ft.commands.config import load
    from ft.commands.train import build_run
    from plan_accuracy import planned

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "row.jsonl").write_text(json.dumps({"input_ids": ids}) + "\n")
    body = {"base_model": model, "datasets": [{"path": str(folder / "row.jsonl")}], "sequence_len": len(ids),
            "micro_batch_size": 1, "max_steps": 2, "adapter": "qlora", "load_in_4bit": True, "lora_r": 16, "lora_alpha": 32,
            "lora_target_linear": True, "gradient_checkpointing": True, "bf16": torch.cuda.is_available(),
            "learning_rate": 1e-4, "lr_scheduler": "constant", "save_steps": 1000, "output_dir": str(folder / "out"),
            "use_tensorboard": False, **CONTENDERS[kind]}
    (folder / "cfg.yml").write_text(yaml.safe_dump(body))
    run = build_run(load(folder / "cfg.yml"), 1)
    cap = Cap(run.model, cap_gb, as_layers)
    fits: list[bool] = []

    class Lower(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 1:
                fits.append(cap.lower())
                control.should_training_stop = not fits[0]

    run.trainer.add_callback(Lower())
    run.trainer.train()
    if not all(fits):
        return {"ok": False}
    records = [json.loads(x) for x in (folder / "out/metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "loss" in r][-1]
    # `ft plan` for the model as built (its own depth) beside the second step's measured peak there
    there = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    plan = planned(folder / "cfg.yml")["predicted_allocated"] / 2**30
    shutil.rmtree(folder, ignore_errors=True)
    return {**cap.result(len(ids) / last["tokens_per_s"]), "planned_allocated_gb": plan, "measured_allocated_gb": there}


def _baseline_steps(model: str, ids: list[int], cap_gb: float, as_layers: int) -> dict[str, Any]:
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
    cap = Cap(net, cap_gb, as_layers)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    x = torch.tensor([ids], device=net.device)
    seconds = 0.0
    for step in range(2):
        start = time.perf_counter()
        with torch.autocast("cuda" if gpu else "cpu", dtype=torch.bfloat16, enabled=gpu):
            loss = net(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if gpu:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if step == 0 and not cap.lower():
            return {"ok": False}
    return cap.result(seconds)


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
    parser.add_argument("--trials", nargs="+", default=None, metavar="CONTENDER:TOKENS",
                        help="run these trials only, one at a time in this order, each alone on the GPU (no search)")
    parser.add_argument("--size", default=None, help="the model's shape, from bench_gpu.py (default: 8b on a GPU, tiny without)")
    parser.add_argument("--as-layers", type=int, default=0,
                        help="the model stands for one of this many layers: the second step's cap is lowered by what the missing layers hold")
    parser.add_argument("--out", default=None, help="write the results as JSON here too")
    args = parser.parse_args()

    import threading

    import torch

    from bench_gpu import build_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = args.size or ("8b" if device == "cuda" else "tiny")
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
                    outcome = trial(kind, model, tokens, cap, work, args.as_layers)
            else:
                outcome = trial(kind, model, tokens, cap, work, args.as_layers)
            result["trials"].append({"contender": kind, "tokens": tokens, "cap_gb": cap, **outcome})
            save(args.out, result)
            return outcome

        if args.trials:
            show_trials(args.trials, args.cap_gb[0], size, args.as_layers, tried, log)
            return

        def fits(kind: str, units: int, cap: float) -> bool:
            return tried(kind, units * args.unit, cap)["ok"]

        pairs = [(kind, cap) for cap in args.cap_gb for kind in args.contenders]
        longest = search(pairs, fits, args.high // args.unit, memory, log)
        result["longest"] = {f"{kind} {cap:g}": units * args.unit for (kind, cap), units in longest.items()}
        save(args.out, result)
        cap = args.cap_gb[0]
        result["step_seconds"] = {kind: (trial(kind, model, args.time_at, cap, work, args.as_layers) if longest[(kind, cap)] * args.unit >= args.time_at
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


def show_trials(trials: list[str], cap: float, size: str, as_layers: int, tried: Any, log: Any) -> None:
    """Each CONTENDER:TOKENS trial alone, in order (so each second-step time is its own), then a table with each
    step time beside ft's at the same length (the offloading target: within 1.15× ft). CONTENDER:N1,N2,... tries
    N1, and each next length only while the one before did not fit (the longest of them that fits)."""
    specs = [(kind, [int(n) for n in lengths.split(",")]) for kind, lengths in (t.split(":") for t in trials)]
    unknown = [kind for kind, _ in specs if kind not in CONTENDERS]
    if unknown:
        raise SystemExit(f"unknown contender {unknown[0]}: one of {', '.join(CONTENDERS)}")
    jobs, outcomes = [], []
    for kind, lengths in specs:
        for tokens in lengths:
            jobs.append((kind, tokens))
            outcomes.append(tried(kind, tokens, cap))
            log(f"{kind}, {tokens} tokens: {'fits' if outcomes[-1]['ok'] else 'out of memory'}")
            if outcomes[-1]["ok"]:
                break
    ft_seconds = {n: o["seconds"] for (kind, n), o in zip(jobs, outcomes) if kind == "ft" and o["ok"]}
    deeper = f", standing for {as_layers} layers (the cap lowered by the missing layers' measured bytes)" if as_layers else ""
    print(f"\nsingle rows that train two steps under {cap:g} GiB ({size}, QLoRA nf4, gradient checkpointing{deeper})")
    print("| contender | tokens | trains | peak | second step | × ft | ft plan, model as built | measured there |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (kind, n), o in zip(jobs, outcomes):
        if not o["ok"]:
            print(f"| {kind} | {n:,} | no | - | - | - | - | - |")
            continue
        ratio = f"{o['seconds'] / ft_seconds[n]:.2f}×" if n in ft_seconds and kind != "ft" else "-"
        peak = f"{o['peak_gb']:.2f} GiB" if o["peak_gb"] == o["peak_gb"] else "no GPU"  # NaN without one
        plan = f"{o['planned_allocated_gb']:.2f} GiB" if "planned_allocated_gb" in o else "-"  # the baseline has none
        there = f"{o['measured_allocated_gb']:.2f} GiB" if o.get("measured_allocated_gb") is not None else "-"
        print(f"| {kind} | {n:,} | yes | {peak} | {o['seconds']:.2f} s | {ratio} | {plan} | {there} |")


def save(path: str | None, result: dict[str, Any]) -> None:
    """The results so far, as JSON (a command cut off by a time limit keeps what it measured)."""
    if path:
        Path(path).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
