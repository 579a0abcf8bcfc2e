"""Keep a sparse model's zeros while it trains (`llmcompressor:`, ft.config.sparsity): each targeted weight is
masked, after every optimizer step, to where it was non-zero when keeping started, as LLM Compressor's
ConstantPruningModifier does. The masks are one byte a weight."""

from __future__ import annotations

import logging
import re
from typing import Any

from transformers import TrainerCallback

from ft.config.sparsity import KeptZeros, LlmCompressor
from ft.errors import UserError

log = logging.getLogger("ft")


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    """A weight name against LLM Compressor's targets: `re:` then a regular expression matched from the start of
    the name, else the name itself."""
    return any(re.match(p[3:], name) if p.startswith("re:") else name == p for p in patterns)


def targeted(model: Any, kept: KeptZeros) -> list[tuple[str, Any]]:
    return [(n, p) for n, p in model.named_parameters() if matches(n, kept.targets) and not matches(n, kept.ignore)]


class KeepZeros(TrainerCallback):
    def __init__(self, model: Any, settings: LlmCompressor) -> None:
        self.kept = settings.kept()
        self.masks: dict[int, list[tuple[Any, Any]]] = {}  # modifier index → (weight, mask) once it has started
        for kept in self.kept:
            if not targeted(model, kept):
                raise UserError(f"`llmcompressor`: ConstantPruningModifier's targets {', '.join(kept.targets)} match "
                                "no weight of this model (names such as model.layers.0.self_attn.q_proj.weight)")

    def _keep(self, model: Any, epoch: float) -> None:
        import torch

        for i, kept in enumerate(self.kept):
            if i not in self.masks and epoch >= kept.start:
                weights = targeted(model, kept)
                self.masks[i] = [(p, p.detach() != 0) for _, p in weights]
                zeros = sum(int((~m).sum()) for _, m in self.masks[i])
                total = sum(p.numel() for _, p in weights)
                log.info("llmcompressor: zeros kept in %d weights: %d of %d elements (%.1f%%) stay 0", len(weights),
                         zeros, total, 100 * zeros / max(total, 1))
                if not zeros:
                    log.warning("llmcompressor: the targeted weights hold no zeros: nothing to keep")
            if i in self.masks and (kept.end < 0 or epoch < kept.end):
                with torch.no_grad():
                    for p, mask in self.masks[i]:
                        p.mul_(mask)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._keep(model, state.epoch or 0.0)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._keep(model, state.epoch or 0.0)
