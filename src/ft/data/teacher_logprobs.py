"""A teacher's log-probabilities carried by the rows (`logprobs_field`, Axolotl's kd format), read into ft's form.

The column holds, for the tokens of the row, a list per token: the teacher's most likely tokens for that
position, each `{"token": "token_id:N", "logprob": x}` (vLLM's prompt log-probabilities, as Axolotl's kd
datasets carry them). The list is aligned to the end of the row's tokens (the first tokens, a prompt's, may
have none). Entry p is the teacher's distribution of token p, which the loss compares with the student's
prediction made at position p - 1; only trained tokens need one.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from ft.data.labels import IGNORE
from ft.errors import DataError

Entries = tuple[list[int], list[float]]  # a position's token ids and log-probabilities, most likely first


def position_targets(row: Mapping[str, Any], field: str, ids: list[int], labels: list[int]) -> list[Optional[Entries]]:
    """The teacher's entries for each token of the row (None where it has none, or where the token is not trained)."""
    given = row.get(field)
    if not isinstance(given, list):
        raise DataError(f"column `{field}` (logprobs_field) must be a list with the teacher's entries for each token")
    if len(given) > len(ids):
        given = given[len(given) - len(ids):]  # longer than the row: its end is aligned with the row's end
    first = len(ids) - len(given)
    out: list[Optional[Entries]] = [None] * len(ids)
    for p in range(1, len(ids)):
        if labels[p] == IGNORE:
            continue
        entries = given[p - first] if p >= first else None
        if not entries:
            raise DataError(f"token {p} of the row is trained, and `{field}` has no teacher entries for it (the list "
                            f"covers the last {len(given)} of the row's {len(ids)} tokens)")
        out[p] = _read(entries, field, p)
    return out


def _read(entries: Any, field: str, p: int) -> Entries:
    pairs = []
    for entry in entries:
        try:
            token = entry["token"]
            token_id = int(token.split(":")[1]) if isinstance(token, str) else int(token)
            pairs.append((float(entry["logprob"]), token_id))
        except (KeyError, IndexError, TypeError, ValueError):
            raise DataError(f"`{field}` entry for token {p} is not {{token: 'token_id:N', logprob: x}}: {str(entry)[:80]}") from None
    pairs.sort(key=lambda pair: -pair[0])
    return [t for _, t in pairs], [lp for lp, _ in pairs]


def flatten(targets: list[Optional[Entries]], labels: list[int]) -> tuple[list[int], list[int], list[float]]:
    """(entries per trained position, ids, log-probabilities) of a row piece, in the order the loss takes its
    positions: position j (label of token j + 1 trained) takes token j + 1's entries."""
    counts: list[int] = []
    ids: list[int] = []
    logp: list[float] = []
    for j in range(len(labels) - 1):
        if labels[j + 1] == IGNORE:
            continue
        entries = targets[j + 1]
        if entries is None:  # a piece cut from a longer row: its first token is not predicted here
            raise DataError("a trained token has no teacher entries")
        counts.append(len(entries[0]))
        ids += entries[0]
        logp += entries[1]
    return counts, ids, logp
