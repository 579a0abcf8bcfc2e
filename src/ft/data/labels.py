"""The label rules, in one place: which label value is ignored, and that a row's first label never counts.

A causal LM predicts token i+1 from tokens up to i, so the label at a row's position 0 is never a target
(the model shifts labels by one). In a packed sequence it would be worse than unused: the previous row's
last token would be trained to predict it. So packing ignores it explicitly, and every count of trained
tokens leaves it out.
"""

from __future__ import annotations

IGNORE = -100  # the ignore_index of torch's cross-entropy, which transformers' losses use


def without_first(labels: list[int]) -> list[int]:
    """The row's labels with its first one ignored (what a packed sequence holds for the row)."""
    return [IGNORE, *labels[1:]] if labels else []


def count_trained(labels: list[int]) -> int:
    """How many of a row's labels are loss targets: those not ignored, the first one left out."""
    return sum(1 for label in labels[1:] if label != IGNORE)
