"""Name → implementation tables for everything a YAML file can name.

Each registry lives next to the code it names (formats in `ft.data.formats`, optimizers in
`ft.train.optimizers`, ...). An unknown name fails at config load with the list of valid names.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """' (did you mean `x`?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


class Registry(Generic[T]):
    """A table of named entries of one kind (prompt formats, optimizers, ...), with aliases."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def add(self, name: str, entry: T, *, aliases: tuple[str, ...] = ()) -> T:
        if name in self._entries or name in self._aliases:
            raise ValueError(f"{self.kind} `{name}` is registered twice")
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name
        return entry

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator form of `add`."""

        def wrap(entry: T) -> T:
            return self.add(name, entry, aliases=aliases)

        return wrap

    def canonical(self, name: str) -> str:
        """The registered name for `name` (resolving aliases), or ValueError listing the valid names."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        valid = ", ".join(self.names())
        hint = did_you_mean(name, list(self._entries) + list(self._aliases))
        raise ValueError(f"unknown {self.kind} `{name}`{hint}; valid: {valid}")

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
