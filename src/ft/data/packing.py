"""Sample packing: rows into bins of at most `capacity` tokens.

Best-fit decreasing: rows are placed longest first, each into the fullest bin it still fits (a sorted
list of remaining capacities makes that O(n log n)). It fills at least as well as first-fit decreasing.
The result depends only on the lengths; the trainer's sampler shuffles the bins each epoch with the seed.
"""

from __future__ import annotations

from bisect import bisect_left, insort

from ft.config.data import DataConfig


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of rows grouped into bins whose lengths sum to at most `capacity`."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"row {i} has {n} tokens, more than the bin capacity {capacity}")
        at = bisect_left(free, (n, -1))
        if at < len(free):
            room, b = free.pop(at)
            bins[b].append(i)
            if room - n > 0:
                insort(free, (room - n, b))
        else:
            bins.append([i])
            if capacity - n > 0:
                insort(free, (capacity - n, len(bins) - 1))
    return bins


def efficiency(lengths: list[int], bins: list[list[int]], capacity: int) -> float:
    """Real tokens over the token slots of the bins (1.0: every bin exactly full)."""
    return sum(lengths) / (len(bins) * capacity) if bins else 0.0


PACKED, PADDING_FREE, PADDED = "packed", "padding-free", "padded"


def batch_layout(d: DataConfig, group_by_length: bool, on_gpu: bool) -> str:
    """How rows become batches: packed into bins, laid end to end unpadded, or padded to the longest."""
    if d.sample_packing:
        return PACKED
    if d.padding_free is None:  # on a GPU padding costs compute; group_by_length already trims it
        free = on_gpu and not d.pad_to_sequence_len and not group_by_length
    else:
        free = d.padding_free
    return PADDING_FREE if free else PADDED
