"""A Python dataset transform (`type: module.function`, Axolotl's and TRL's way of making GRPO prompts): the
function, imported from the directory ft runs in, is called once as Axolotl calls it (`function(cfg)`: here the
dataset entry's settings) and returns a row function, or (row function, {"remove_columns": [...]}). Each row
becomes what the row function returns: a `prompt` (a list of chat turns, rendered with the chat template and its
generation prompt, or text as it is) and the columns the reward functions read (`rl: grpo`). Nothing is trained
on the prompt; the model's own samples are (ft.train.grpo)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Mapping

from ft.data.formats.base import Segment
from ft.data.formats.chat import ChatTemplate
from ft.errors import ConfigError, DataError


def imported(path: str, what: str) -> Any:
    """The function at `path` (module.function), the directory ft runs in first on the import path."""
    module, _, name = path.rpartition(".")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{what} `{path}`: no module `{exc.name}` in {os.getcwd()} or the installed packages; put "
                          f"{module.replace('.', '/')}.py in the directory ft runs in") from None
    except AttributeError:
        raise ConfigError(f"{what} `{path}`: the module `{module}` has no `{name}`") from None
    if not callable(found):
        raise ConfigError(f"{what} `{path}` is not a function")
    return found


class PythonTransform(ChatTemplate):
    """Rows from a user's Python function: prompts, not trained text (module docstring)."""

    prompts_only = True
    reads = ("chat_template", "chat_template_jinja")

    def __init__(self, ds: Any, tokenizer: Any = None) -> None:
        super().__init__(ds, tokenizer)
        made = imported(ds.type, "the dataset transform")(ds.model_dump())
        self.row_function, options = made if isinstance(made, tuple) else (made, {})
        self.removed = set((options or {}).get("remove_columns") or ())

    def required_columns(self) -> tuple[str, ...]:
        return ()

    def transformed(self, row: Mapping[str, Any]) -> dict[str, Any]:
        try:
            out = self.row_function(dict(row), tokenizer=self.tokenizer)
        except TypeError:
            out = self.row_function(dict(row))
        if not isinstance(out, Mapping) or "prompt" not in out:
            raise DataError(f"the transform `{self.ds.type}` returned no `prompt` for this row")
        return dict(out)

    def prompt_and_columns(self, row: Mapping[str, Any]) -> tuple[list[Segment], dict[str, Any]]:
        """The prompt (not trained) and what the reward functions are given of this row: its columns the transform
        kept and those it made, the prompt as the transform made it (TRL's `prompts`); one call of the row
        function."""
        made = self.transformed(row)
        prompt = made["prompt"]
        if isinstance(prompt, str):
            segments = [Segment(prompt, False)]
        elif isinstance(prompt, list) and all(isinstance(t, Mapping) and "role" in t for t in prompt):
            segments = [Segment(self.render([dict(t) for t in prompt], generation_prompt=True), False)]
        else:
            raise DataError(f"the transform `{self.ds.type}` returned a `prompt` that is neither text nor a list of "
                            "turns ({role, content})")
        return segments, {**{k: v for k, v in row.items() if k not in self.removed}, **made}

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:
        return self.prompt_and_columns(row)[0]
