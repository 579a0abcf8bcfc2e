"""The base of every config section: frozen, typed, unknown keys rejected with a suggestion."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

from ft.registry import did_you_mean


class Contradiction(ValueError):
    """Settings that cannot hold together; `key` is the one whose line the message points at (in the
    section or list entry that raised it)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class Section(BaseModel):
    """A frozen group of config fields. Lists are stored as tuples so nothing can be mutated later."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, use_attribute_docstrings=False)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        # pydantic's own extra="forbid" error carries no suggestion; this one names the nearest key.
        if isinstance(data, dict):
            known = set(cls.model_fields)
            for key in data:
                if key not in known:
                    raise PydanticCustomError(
                        "unknown_key",
                        "unknown key `{key}`{hint}",
                        {"key": key, "hint": did_you_mean(str(key), known)},
                    )
        return data

