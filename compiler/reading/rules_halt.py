"""The halt head's rules: the `halt` section and the `halt` loss term come together, on a decoder.

The head (docs/roles.md#the-halt-head) is trained only by `training.losses.halt`, so a head without
the term would ship untrained and a term without the head has nothing to train. It predicts the end
of a decoder's turn, so a judge (one prefill, no decode) has none, and its exported output rides on
the cache-as-state functions (`export.coreml.decode_cache: state`). Gates on its metrics need it.
"""

from __future__ import annotations

from typing import Iterator

from compiler.analysis.catalogue import CATALOGUE
from compiler.core.errors import Path
from compiler.schema.spec import Spec
from compiler.schema.training import loss_used

Finding = tuple[Path, str, str | None]
HALT_METRICS = tuple(sorted(m for m in CATALOGUE if m.startswith(("eval.halt_", "eval.early_halt", "parity.halt_"))))


def halt(spec: Spec) -> Iterator[Finding]:
    term = spec.training.losses.halt
    if spec.halt is None:
        if term is not None:
            yield (("training", "losses", "halt"), "the halt term trains the halt head, and this spec has none",
                   "add halt: {threshold: 0.5}, or remove training.losses.halt")
        for i, gate in enumerate(spec.gates):
            if gate.metric in HALT_METRICS:
                yield (("gates", i, "metric"), f"{gate.metric} measures the halt head, and this spec has none",
                       "add halt: {threshold: 0.5} and training.losses.halt, or remove the gate")
        return
    if spec.role == "judge":
        yield (("halt",), "a judge reads its verdict from one prefill: it has no turn to stop", "remove halt")
        return
    if not loss_used(term):
        yield (("halt",), "the halt head is trained only by training.losses.halt, which is missing or 0",
               "add training.losses.halt: {weight: 0.1}")
    if spec.shapes.decode.enabled and spec.export.coreml.decode_cache != "state":
        yield (("export", "coreml", "decode_cache"), "the halt output is exported with the cache held in states only",
               "set export.coreml.decode_cache: state, or remove halt")
