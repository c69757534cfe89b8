"""Apple chips a deployment profile can name, and the speed no package can beat on them.

A profile's ``chip`` makes the hardware explicit: a speed report must come from that chip, and a
speed gate that the chip's limits rule out is refused at compile time, not found out on a Mac.

The limits are rooflines, deliberately optimistic so that they never refuse a gate a real package
could pass: decode reads every weight once per token (the embedding table only one row: a gather),
so tokens/s <= memory bandwidth / bytes read; prefill does at least 2 FLOPs per weight per token at
the smallest prefill shape, so TTFT >= FLOPs / (GPU fp16 peak + Neural Engine peak, both at once).
Figures are Apple's published memory bandwidth, GPU FP32 TFLOPS counted twice for fp16, and Neural
Engine TOPS (int8 rates for the A17 Pro and M4 families, so a generous fp16 bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compiler.analysis.derived import Derived


@dataclass(frozen=True)
class Chip:
    brand: str  # what the chip reports (sysctl machdep.cpu.brand_string); a speed report records it
    bandwidth_gbs: float  # unified memory bandwidth, GB/s
    gpu_tflops: float  # GPU fp16
    ane_tops: float  # Neural Engine

    @property
    def peak_flops(self) -> float:
        return (self.gpu_tflops + self.ane_tops) * 1e12


CHIPS: dict[str, Chip] = {
    "apple-m1": Chip("Apple M1", 68.25, 5.2, 11),
    "apple-m1-pro": Chip("Apple M1 Pro", 200, 10.4, 11),
    "apple-m1-max": Chip("Apple M1 Max", 400, 20.8, 11),
    "apple-m1-ultra": Chip("Apple M1 Ultra", 800, 41.6, 22),
    "apple-m2": Chip("Apple M2", 100, 7.2, 15.8),
    "apple-m2-pro": Chip("Apple M2 Pro", 200, 13.6, 15.8),
    "apple-m2-max": Chip("Apple M2 Max", 400, 27.2, 15.8),
    "apple-m2-ultra": Chip("Apple M2 Ultra", 800, 54.4, 31.6),
    "apple-m3": Chip("Apple M3", 100, 8.2, 18),
    "apple-m3-pro": Chip("Apple M3 Pro", 150, 14.8, 18),
    "apple-m3-max": Chip("Apple M3 Max", 400, 32.8, 18),
    "apple-m4": Chip("Apple M4", 120, 8.6, 38),
    "apple-m4-pro": Chip("Apple M4 Pro", 273, 18.4, 38),
    "apple-m4-max": Chip("Apple M4 Max", 546, 36.8, 38),
    "apple-a17-pro": Chip("Apple A17 Pro", 51.2, 4.3, 35),
    "apple-a18-pro": Chip("Apple A18 Pro", 60, 4.6, 35),
}


def decode_bytes(spec: Any, derived: Derived) -> int:
    """Bytes a decode step reads at least: every weight but the embedding table (one row of it)."""
    from compiler.analysis.resolve import quant_plan

    if spec.architecture.tie_embeddings:
        return derived.weight_bytes  # the table is the lm_head too: read whole
    embed = sum(q.weight_bytes(spec.precision.compute) for q in quant_plan(spec) if q.module == "embed_tokens")
    return derived.weight_bytes - embed


def prefill_flops(spec: Any, derived: Derived, length: int) -> float:
    """FLOPs of one prefill at `length` tokens, matmuls only (attention left out: a lower bound)."""
    embed = derived.params_by_kind.get("embedding", 0) if not spec.architecture.tie_embeddings else 0
    return 2.0 * (derived.params - embed) * length


def bounds(spec: Any, derived: Derived, chip: Chip) -> dict[str, float]:
    """The best any package of this spec could measure on `chip`: max tokens/s, min TTFT (ms)."""
    smallest = min(spec.shapes.prefill)
    return {"tps_max": chip.bandwidth_gbs * 1e9 / decode_bytes(spec, derived),
            "ttft_min_ms": prefill_flops(spec, derived, smallest) / chip.peak_flops * 1e3}
