"""Trainer callbacks: the metrics log, the NaN guard, the loss watchdog, qat's delayed start, and the loss plot."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ft.errors import UserError

log = logging.getLogger("ft")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def peak_memory_mb() -> float:
    """Peak GPU memory allocated, or the process's peak resident memory on CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MetricsLog(TrainerCallback):
    """Appends one JSON line per log to output_dir/metrics.jsonl: step, loss, lr, grad norm, tokens/s, memory (and
    a distillation's two terms)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.perplexity = True  # the loss is a language model's cross-entropy (ft.commands.train sets it)
        self.last_time = time.perf_counter()
        self.last_tokens = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 0 and state.is_world_process_zero:
            self.path.unlink(missing_ok=True)  # a fresh run starts a fresh log; a resumed one appends

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        logs = logs or {}
        record: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0, 4)}
        for key in ("loss", "learning_rate", "grad_norm", "eval_loss", "train_loss", "kd_loss", "ce_loss", "kl", "eval_kl"):
            if key in logs:
                record[key] = logs[key]
        for key, value in logs.items():  # generation metrics of evaluations, preference and EBFT metrics
            wanted = key.startswith(("eval_", "rewards/", "logps/", "ebft/", "grpo/", "diffusion/")) and not key.endswith(("_runtime", "_per_second"))
            if wanted and key not in record and isinstance(value, (int, float)):
                record[key] = value
        if "loss" in logs:
            now, tokens = time.perf_counter(), state.num_input_tokens_seen
            record["tokens_per_s"] = round((tokens - self.last_tokens) / max(now - self.last_time, 1e-9), 1)
            self.last_time, self.last_tokens = now, tokens
            record["memory_mb"] = round(peak_memory_mb(), 1)
        if "eval_loss" in logs and self.perplexity:
            record["perplexity"] = math.exp(min(logs.get("eval_ce_loss", logs["eval_loss"]), 50))  # of the labels
        for key in ("loss", "eval_loss"):
            if key in record and not math.isfinite(record[key]):
                raise TrainingDiverged(
                    f"the {key.replace('_', ' ')} became {record[key]} at step {state.global_step}; lower "
                    "learning_rate, keep max_grad_norm on, or use bf16 instead of fp16"
                )
        if state.is_world_process_zero:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


class LossWatchdog(TrainerCallback):
    """Stops the run when the training loss stays above `threshold` for `patience` logged steps in a row
    (Axolotl's loss_watchdog_threshold / loss_watchdog_patience): a run that diverged without a NaN."""

    def __init__(self, threshold: float, patience: int) -> None:
        self.threshold, self.patience, self.above = threshold, patience, 0

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        self.above = self.above + 1 if loss > self.threshold else 0
        if self.above >= self.patience:
            raise TrainingDiverged(
                f"the training loss stayed above loss_watchdog_threshold {self.threshold:g} for {self.patience} logged "
                f"steps (step {state.global_step}: {loss:.4g}); lower learning_rate, or raise the threshold"
            )


class FakeQuantizationFrom(TrainerCallback):
    """qat's fake_quant_after_n_steps: the fake quantizers are off until that step (a resumed run past it starts
    with them on)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        from ft.model.qat import set_fake_quantization

        set_fake_quantization(model, state.global_step >= self.step)

    def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step == self.step:
            from ft.model.qat import set_fake_quantization

            log.info("step %d: fake quantization on (fake_quant_after_n_steps)", self.step)
            set_fake_quantization(model, True)


class LisaLayers(TrainerCallback):
    """LISA: every `interval` steps, `n` of the decoder layers (at `attribute`) are drawn to train and the others
    are frozen. The draw is a function of the seed and the step's window, so a resumed run trains the same layers
    as an uninterrupted one."""

    def __init__(self, n: int, interval: int, attribute: str, seed: int) -> None:
        self.n, self.interval, self.attribute, self.seed = n, interval, attribute, seed
        self.window = -1

    def layers(self, model: Any) -> Any:
        from functools import reduce

        from ft.train.loss import causal_lm_of

        return reduce(getattr, self.attribute.split("."), causal_lm_of(model))

    def drawn(self, total: int, window: int) -> list[int]:
        import random

        return sorted(random.Random(self.seed * 1_000_003 + window).sample(range(total), self.n))

    def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        window = state.global_step // self.interval
        if window == self.window:
            return
        self.window = window
        layers = self.layers(model)
        active = self.drawn(len(layers), window)
        for i, layer in enumerate(layers):
            for p in layer.parameters():
                p.requires_grad_(i in active)
        log.info("LISA: layers %s train until step %d", ", ".join(map(str, active)), (window + 1) * self.interval)


def read_history(path: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl across the runs that resumed each other; a step logged twice (before a
    crash, and again after resuming from an earlier checkpoint) counts once, as its last record."""
    if not path.is_file():
        return []
    by_key: dict[tuple[int, str], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut off by a crash
            continue
        kind = "eval" if "eval_loss" in record else "end" if "train_loss" in record else "step"
        by_key[(record.get("step", 0), kind)] = record
    return [by_key[k] for k in sorted(by_key)]


def plot_losses(records: list[dict[str, Any]], path: Path) -> None:
    """loss.png: the train loss, and the eval loss where there is one, against the step; generation metrics of
    evaluations during training (do_causal_lm_eval), or a preference run's reward accuracy, on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "train loss"), ("eval_loss", "eval loss"), ("kd_loss", "distillation term"),
                       ("ce_loss", "cross-entropy term")):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points), label=label, marker="o" if key == "eval_loss" else None,
                    linestyle=":" if key in ("kd_loss", "ce_loss") else "-")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    preference = any("rewards/accuracies" in r for r in records)
    if preference:  # the reward accuracy, train and held out
        scores = [k for k in ("rewards/accuracies", "eval_rewards/accuracies") if any(k in r for r in records)]
    else:
        scores = sorted({k for r in records for k in r if k.startswith("eval_") and k not in ("eval_loss", "eval_kd_loss",
                                                                                             "eval_ce_loss")})
    handles, labels = ax.get_legend_handles_labels()
    if scores:
        right = ax.twinx()
        for i, key in enumerate(scores):
            points = [(r["step"], r[key]) for r in records if key in r]
            right.plot(*zip(*points), label=key.removeprefix("eval_") if not preference else key.replace("rewards/", "reward "),
                       marker="s" if key.startswith("eval_") else None, linestyle="--", color=f"C{2 + i}")
        right.set_ylabel("reward accuracy" if preference else "generation metrics")
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
