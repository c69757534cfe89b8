"""bench/bench_kd_step.py runs end to end on CPU at the --small size and writes a consistent result."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_kd_step", ROOT / "bench" / "bench_kd_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_small_cpu_run_writes_consistent_json(tmp_path):
    bench = load_bench()
    out = tmp_path / "kd.json"
    returned = bench.main(["--device", "cpu", "--small", "--steps", "2", "--warmup", "1", "--seq-len", "64",
                           "--micro-batch", "2", "--out", str(out)])
    r = json.loads(out.read_text())
    assert r == json.loads(json.dumps(returned))
    assert r["device"] == "cpu" and r["dtype"] == "fp32" and r["measured_steps"] == 2 and len(r["step_s_all"]) == 2
    for key in ("params", "tokens_per_step", "step_s_median", "step_s_p90", "tokens_per_s", "flops_per_token",
                "achieved_tflops"):
        assert r[key] > 0, key
    assert r["tokens_per_step"] == r["micro_batch"] * r["grad_accum"] * r["seq_len"] == 128
    assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / r["step_s_median"], rel=1e-9)
    assert r["tokens_per_s"] * r["flops_per_token"] == pytest.approx(r["achieved_tflops"] * 1e12, rel=0.01)
    a = r["architecture"]
    assert r["flops_per_token"] == 6 * r["params"] + 12 * a["n_layers"] * a["n_heads"] * a["d_head"] * r["seq_len"]
    assert r["step_s_p90"] >= r["step_s_median"]
    assert r["mfu"] is None and r["peak_tflops"] is None  # no peak known for a CPU


def test_peak_overrides_and_known_gpus(tmp_path):
    bench = load_bench()
    assert bench.known_peaks("NVIDIA H100 80GB HBM3")["bf16"] == 989.0
    assert bench.known_peaks("NVIDIA H200")["fp32"] == 67.0
    assert bench.known_peaks("NVIDIA H100 PCIe")["bf16"] == 756.0
    assert bench.known_peaks("Some CPU") is None
    r = bench.main(["--device", "cpu", "--small", "--steps", "1", "--warmup", "0", "--seq-len", "32", "--micro-batch", "1",
                    "--peak-tflops", "1.0", "--out", str(tmp_path / "kd.json")])
    assert r["mfu"] == pytest.approx(r["achieved_tflops"] / 1.0)


def test_compute_settings_default_per_device_and_run_on_cpu(tmp_path):
    bench = load_bench()
    cuda = bench.parse(["--device", "cuda"])
    assert (cuda.precision, cuda.attention, cuda.recompute, cuda.loss_chunk) == ("bf16", "sdpa", True, 1024)
    cpu = bench.parse(["--device", "cpu"])
    assert (cpu.precision, cpu.recompute) == ("fp32", False)
    with pytest.raises(SystemExit):
        bench.parse(["--device", "cuda", "--tf32"])  # TF32 is for fp32 matmuls
    r = bench.main(["--device", "cpu", "--small", "--steps", "1", "--warmup", "0", "--seq-len", "32", "--micro-batch", "2",
                    "--precision", "bf16", "--recompute", "--loss-chunk", "8", "--out", str(tmp_path / "kd.json")])
    assert r["dtype"] == "bf16" and r["autocast"] == "bfloat16" and r["compute"]["activation_checkpointing"] is True
    assert r["estimate_total_gib"] > 0 and r["final_loss"] > 0
