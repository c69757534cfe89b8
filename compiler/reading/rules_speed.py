"""Rules for speed gates: a gate no device could ever pass is refused at compile time.

A speed gate needs a decode function for the decode metrics, and a threshold the profile's chip leaves room for: its
roofline (compiler/analysis/chips.py) bounds decode tokens/s from above and TTFT from below.
"""

from __future__ import annotations

from typing import Any, Iterator

from compiler.analysis.chips import CHIPS, bounds as chip_bounds, decode_bytes, prefill_flops
from compiler.analysis.derived import derive
from compiler.core.errors import Path
from compiler.schema.spec import Spec

Finding = tuple[Path, str, str | None]

def _gb(n: float) -> str:
    """Decimal units, like the chips' bandwidth in GB/s."""
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.2f} MB"


SPEED_NEEDS_DECODE = ("speed.tps_p50", "speed.tps_p50_regression", "speed.first_tool_call_p50_ms")


def speed_gate(spec: Spec, gate: Any, base: Path) -> Iterator[Finding]:
    """A speed gate that no device could ever pass is refused here, not found out on a Mac."""
    name = gate.metric
    if name in SPEED_NEEDS_DECODE and not spec.shapes.decode.enabled:
        yield (base + ("metric",), f"{name} measures decode, and shapes.decode.enabled is false",
               "enable decode, or gate speed.ttft_p50_ms only")
        return
    derived = derive(spec)
    for p in spec.deployment.profiles:
        chip = CHIPS.get(p.chip or "")
        if chip is None:
            continue
        limit = chip_bounds(spec, derived, chip)
        if name == "speed.tps_p50" and gate.value > limit["tps_max"]:
            yield (base + ("value",), f"{name} >= {gate.value:g} can never pass on profile '{p.name}' ({chip.brand}): a decode "
                   f"step reads {_gb(decode_bytes(spec, derived))} of weights and {chip.bandwidth_gbs:g} GB/s moves them at "
                   f"most {limit['tps_max']:.0f} times a second",
                   f"gate below {limit['tps_max']:.0f} tokens/s, quantize more (quantization.weights), or target a faster chip")
        if name in ("speed.ttft_p50_ms", "speed.ttft_p90_ms") and gate.value < limit["ttft_min_ms"]:
            smallest = min(spec.shapes.prefill)
            yield (base + ("value",), f"{name} <= {gate.value:g} can never pass on profile '{p.name}' ({chip.brand}): a "
                   f"{smallest}-token prefill is {prefill_flops(spec, derived, smallest) / 1e12:.2f} TFLOP, at least "
                   f"{limit['ttft_min_ms']:.0f} ms at the chip's peak ({chip.peak_flops / 1e12:g} TFLOPS, GPU and Neural Engine together)",
                   f"gate above {limit['ttft_min_ms']:.0f} ms, add a smaller prefill shape (shapes.prefill), or target a faster chip")
