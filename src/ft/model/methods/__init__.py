"""The parameter-efficient methods `adapter:` names, one registered file each (as data/formats are).

Each entry says how to build its PEFT config from the adapter section, and what the method can do: train on a
quantized base, be merged into the base, take packed rows. Kept as data (PEFT is imported only when a config
is built), so `ft validate` checks a method's rules without loading anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from ft.registry import Registry


@dataclass(frozen=True)
class Method:
    summary: str
    build: Callable[[Any, Optional[list[str]], Optional[list[str]], str], Any]  # (adapter section, targets, to save, model folder) → PEFT config
    prompt_learning: bool = False  # virtual tokens before the row: needs unpacked, padded rows
    mergeable: bool = True  # `ft merge-lora` can fold it into the base weights
    bases: tuple[Optional[int], ...] = (None,)  # base precisions it trains on: None (16-bit), 8 and 4 bits
    targets_linear: bool = True  # adapts linear layers (lora_target_modules / lora_target_linear choose them)
    apply: Optional[Callable[[Any, Any, int], Any]] = None  # (adapter section, model, seed) → model: a method of ft's own

    def refusal(self, name: str, cfg: Any) -> Optional[tuple[str, str]]:
        """(key, sentence) when the config asks this method for what it cannot do, else None."""
        d, q = cfg.data, cfg.quantization
        if self.prompt_learning and (d.sample_packing or d.padding_free):
            key = "sample_packing" if d.sample_packing else "padding_free"
            return key, (f"`adapter: {name}` puts virtual tokens before each row, so its rows cannot be laid end to "
                         f"end: set `{key}: false` (it trains on padded rows)")
        if self.prompt_learning and cfg.distributed.fsdp:
            return "fsdp", (f"`adapter: {name}` is not supported with fsdp yet (its virtual tokens sit beside embeddings "
                            "that FSDP shards); use DeepSpeed ZeRO-1/2 or DDP")
        if q.bits not in self.bases:
            bits = "16-bit" if q.bits is None else f"{q.bits}-bit"
            return (f"load_in_{q.bits}bit" if q.bits else "adapter"), (
                f"`adapter: {name}` does not train on a {bits} base in PEFT; "
                + (f"remove `load_in_{q.bits}bit`" if q.bits else "load the base in 4 bits with `adapter: qlora`"))
        return None


METHODS: Registry[Method] = Registry("adapter")

from ft.model.methods import bottleneck, ia3, loha, lokr, lora, prefix_tuning, prompt_tuning, vera  # noqa: E402,F401  (they register)
