"""Collection order for a 2-worker CI run (the longest chains start first), and one thread per process.

pytest-xdist hands tests out in collection order, so a multi-minute chain collected last (the toy
end to end, the kill soak) would run alone at the end while the other worker idles. Modules in
LONGEST_FIRST (measured with --durations: each holds a 3-7 minute fixture or test) are moved to the
front, in this order; everything else keeps its order.
"""

from __future__ import annotations

import os

# One torch/OpenMP thread per process under test: `pytest -n 2` already runs two test processes on
# CI's 2 cores, and the jobs they start run side by side too; more threads only spin-wait on each
# other. Tests that need a thread count set their own (tests/runtime/test_ray_executor.py).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

LONGEST_FIRST = (
    "tests/test_toy_end_to_end.py",
    "tests/runtime/test_kill_soak.py",
    "tests/runtime/test_ray_executor.py",
    "tests/test_pretrained_pipeline.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the rest keeps its order
