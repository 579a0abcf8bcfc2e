"""`llmcompressor:` (Axolotl's LLM Compressor plugin): fine-tune a sparse model and keep its zeros.

A model pruned by LLM Compressor (e.g. 2:4 sparse) loses its sparsity as soon as an optimizer step moves its zero
weights. The recipe's ConstantPruningModifier names the weights whose zeros stay: each is masked to where it was
non-zero when the modifier starts, after every optimizer step (ft.train.callbacks.KeepZeros). That modifier is the
one ft runs; a recipe naming another (quantization, pruning) is refused by name."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import Field, field_validator

from ft.config.base import Section

# ConstantPruningModifier's settings ft reads: which weights (names; "re:" before a regular expression), and the
# epochs from which and until which their zeros are kept (end -1: to the end of training)
MODIFIER = "ConstantPruningModifier"
MODIFIER_KEYS = ("targets", "start", "end", "ignore")


class KeptZeros(Section):
    """One ConstantPruningModifier of the recipe, as ft runs it."""

    targets: tuple[str, ...] = Field(description="Weight names (`re:` then a regular expression, matched from the "
                                     "start of the name) whose zeros are kept.")
    start: float = Field(0.0, description="The epoch from which the zeros are kept (the mask is taken then).")
    end: float = Field(-1.0, description="The epoch at which keeping stops; -1: never.")
    ignore: tuple[str, ...] = Field((), description="Weight names (or `re:` patterns) left out of the targets.")


class LlmCompressor(Section):
    recipe: Any = Field(description="LLM Compressor's recipe, written inline: stages of modifiers; ft runs its "
                        "ConstantPruningModifier entries.")
    save_compressed: bool = Field(False, description="LLM Compressor writes the trained model in compressed-tensors' "
                                  "sparse format; ft writes it dense (its zeros kept) and says so.")

    @field_validator("recipe")
    @classmethod
    def _recipe(cls, value: Any) -> Any:
        modifiers(value)  # raises on what ft cannot run
        return value

    def kept(self) -> tuple[KeptZeros, ...]:
        return modifiers(self.recipe)


def modifiers(recipe: Any) -> tuple[KeptZeros, ...]:
    """The recipe's ConstantPruningModifier entries; ValueError naming anything else that would change the model."""
    if not isinstance(recipe, dict):
        raise ValueError("`llmcompressor.recipe` is read written inline, as a mapping of stages and modifiers (a "
                         "recipe file's path is not read)")
    found: list[KeptZeros] = []
    _walk(recipe, found)
    if not found:
        raise ValueError(f"`llmcompressor.recipe` holds no {MODIFIER}, the modifier ft runs (it keeps a sparse "
                         "model's zeros)")
    return tuple(found)


def _walk(node: dict[str, Any], found: list[KeptZeros]) -> None:
    for key, value in node.items():
        name = str(key)
        if name.endswith("Modifier"):
            if name != MODIFIER:
                raise ValueError(f"LLM Compressor's `{name}` is not supported by ft (ft keeps a sparse model's zeros: "
                                 f"{MODIFIER}); remove it from the recipe")
            found.append(_kept(value or {}))
        elif isinstance(value, dict):
            _walk(value, found)


def _kept(args: Any) -> KeptZeros:
    if not isinstance(args, dict):
        raise ValueError(f"`{MODIFIER}` takes a mapping of its settings ({', '.join(MODIFIER_KEYS)})")
    unknown = sorted(set(args) - set(MODIFIER_KEYS))
    if unknown:
        raise ValueError(f"`{MODIFIER}.{unknown[0]}` is not a setting ft reads; it reads {', '.join(MODIFIER_KEYS)}")
    targets = args.get("targets")
    if not targets:
        raise ValueError(f"`{MODIFIER}` needs `targets`: the weights whose zeros are kept (e.g. 're:.*proj.weight')")
    as_tuple = (lambda v: (v,) if isinstance(v, str) else tuple(v or ()))
    return KeptZeros(targets=as_tuple(targets), start=float(args.get("start") or 0), end=float(args.get("end", -1)),
                     ignore=as_tuple(args.get("ignore")))


def describe(settings: Optional[LlmCompressor]) -> str:
    if settings is None:
        return ""
    parts = [f"zeros kept in {', '.join(k.targets)}" + (f" from epoch {k.start:g}" if k.start > 0 else "")
             + (f" until epoch {k.end:g}" if k.end >= 0 else "") for k in settings.kept()]
    return "; ".join(parts) + ("; ignored: save_compressed (ft writes the weights dense)" if settings.save_compressed
                               else "")
