"""What a person watches while `ft train` runs: one progress bar on a terminal, plain lines in a log.

The Trainer's own console (a tqdm bar redrawn per step, a second bar at every evaluation, and each log
printed as a dict of quoted numbers) is replaced by one callback, on the first process only:
- on a terminal: one tqdm bar (steps, elapsed, remaining) whose postfix carries the loss, learning rate,
  gradient norm and real tokens per second;
- not a terminal (redirected to a file, CI, a cluster's job log): no redraws; a plain line every
  `every_s` seconds and at the last step;
- each evaluation: one aligned line in words (step, eval loss, perplexity, the generation metrics), in both.
Numbers are rounded for reading; metrics.jsonl and tensorboard keep them exact.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Optional, TextIO

from transformers import TrainerCallback

SKIP_IN_EVAL_LINE = ("eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def _number(value: float) -> str:
    """A number for reading: 4 significant digits, scientific for the very small (learning rates)."""
    if value == 0:
        return "0"
    if abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"


def eval_line(step: int, logs: dict[str, Any], perplexity: bool = True) -> str:
    """'eval   step 40: loss 0.052  perplexity 1.053  chrf 42.38'; `perplexity`: the loss is a language model's
    cross-entropy (not a preference, diffusion or classification loss)."""
    parts = [f"loss {_number(logs['eval_loss'])}"]
    if perplexity:
        ce = logs.get("eval_ce_loss", logs["eval_loss"])  # distillation: the perplexity of the labels
        parts.append(f"perplexity {_number(math.exp(min(ce, 50)))}")
    for key, value in logs.items():
        if key.startswith("eval_") and key not in SKIP_IN_EVAL_LINE and isinstance(value, (int, float)):
            parts.append(f"{key.removeprefix('eval_')} {_number(value)}")
    return f"eval   step {step}: " + "  ".join(parts)


class Console(TrainerCallback):
    """The progress bar (a terminal) or plain progress lines (anything else), and one line per evaluation."""

    def __init__(self, stream: Optional[TextIO] = None, every_s: float = 30.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s
        self.bar: Any = None
        self.started = self.last_line = 0.0
        self.last_tokens, self.last_time = 0, 0.0
        self.latest: dict[str, float] = {}
        self.perplexity = True  # the loss is a language model's cross-entropy (ft.commands.train sets it)

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.started = self.last_line = self.last_time = time.monotonic()
        self.last_tokens = state.num_input_tokens_seen
        if self.tty:
            from tqdm.auto import tqdm

            try:  # a terminal that reports no size (0 × 0) would get no bar at all from tqdm
                size = os.get_terminal_size(self.stream.fileno())
                sized = size.columns > 0 and size.lines > 0
            except (OSError, ValueError, AttributeError):
                sized = False
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", file=self.stream, desc="train",
                            **({"dynamic_ncols": True} if sized else {"ncols": 100, "nrows": 24}))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        if "eval_loss" in logs:
            self._write(eval_line(state.global_step, logs, self.perplexity))
            return
        if "loss" not in logs:
            return
        now = time.monotonic()
        tokens = state.num_input_tokens_seen
        speed = (tokens - self.last_tokens) / max(now - self.last_time, 1e-9)
        self.last_tokens, self.last_time = tokens, now
        self.latest = {"loss": logs["loss"], "lr": logs.get("learning_rate", 0.0), "grad": logs.get("grad_norm", float("nan")),
                       "tok/s": speed}
        if "rewards/accuracies" in logs:  # preference training: how often the chosen answer wins, and by how much
            self.latest.update({"acc": logs["rewards/accuracies"], "margin": logs["rewards/margins"]})
        if "kd_loss" in logs:  # distillation: its two terms apart
            self.latest.update({"kd": logs["kd_loss"], "ce": logs["ce_loss"]})
        words = "  ".join(f"{k} {_number(v)}" for k, v in self.latest.items() if not math.isnan(v))
        if self.bar is not None:
            self.bar.set_postfix_str(words, refresh=False)
        elif now - self.last_line >= self.every_s or state.global_step >= state.max_steps:
            self.last_line = now
            elapsed = now - self.started
            done = state.global_step / max(state.max_steps, 1)
            left = elapsed / done - elapsed if done > 0 else 0.0
            self._write(f"train  step {state.global_step}/{state.max_steps} ({100 * done:.0f}%)  {words}  "
                        f"elapsed {_clock(elapsed)}  left {_clock(left)}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"
