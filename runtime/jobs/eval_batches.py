"""Eval rows in batches of equal length within a memory budget: how the head evals (the judge's verdicts, the
halt head's metrics) walk a split without padding, so nothing they read depends on the batch."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from runtime.data.shards import RowSource


def rows_per_batch(arch: Any, length: int, budget_mb: int) -> int:
    """Rows of `length` tokens whose forward (no gradient, one layer's activations at a time, sdpa) fits the
    budget: per row about 4 bytes x length x (6 d_model + 3 mlp_hidden)."""
    per_row = 4 * length * (6 * arch.d_model + 3 * arch.mlp_hidden)
    return max(1, min(64, (budget_mb << 20) // per_row))


def length_batches(source: RowSource, arch: Any, budget_mb: int) -> Iterator[tuple[int, list[int]]]:
    """(length, rows) per batch: the split's rows grouped by real length, each group cut to fit the budget."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for r, n in enumerate(source.lengths().tolist()):
        by_length[n].append(r)
    for n, rows in sorted(by_length.items()):
        size = rows_per_batch(arch, n, budget_mb)
        for a in range(0, len(rows), size):
            yield n, rows[a:a + size]
