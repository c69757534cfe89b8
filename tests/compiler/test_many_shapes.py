"""Load: a spec with 100 prefill shapes compiles, with one export and one parity job per shape."""

from __future__ import annotations

import shutil
from pathlib import Path

from compiler.output.build import compile_one

SPECS = Path(__file__).resolve().parents[2] / "specs"


def test_a_spec_with_100_prefill_shapes_compiles(tmp_path: Path) -> None:
    lengths = sorted(set(range(2, 200, 2)) | {64, 128, 256})
    assert len(lengths) == 100
    text = (SPECS / "toy.yaml").read_text().replace("prefill: [64, 128, 256]", f"prefill: {lengths}")
    shutil.copytree(SPECS / "data", tmp_path / "data")
    (tmp_path / "many.yaml").write_text(text)
    compiled = compile_one(str(tmp_path / "many.yaml"), [], out_root=str(tmp_path / "generated"))
    kinds = [pj.job.kind for pj in compiled.jobs]
    assert kinds.count("export") == kinds.count("parity") == 102  # 100 prefill functions + decode + verify
    assert len(compiled.job("convert").job.params.functions) == 102
