"""`export.parity`: which functions get a parity job and what each runs (lengths, samples, positions)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from compiler.output.build import compile_one

SPECS = Path(__file__).resolve().parents[2] / "specs"
TOY_PARITY = "parity: {lengths: all, positions: all, decode_steps: 16}"


def _compile(tmp_path: Path, parity: str, *overrides: str):
    text = (SPECS / "toy.yaml").read_text()
    assert text.count(TOY_PARITY) == 1
    if not (tmp_path / "data").exists():
        shutil.copytree(SPECS / "data", tmp_path / "data")
    (tmp_path / "p.yaml").write_text(text.replace(TOY_PARITY, parity))
    return compile_one(str(tmp_path / "p.yaml"), list(overrides), out_root=str(tmp_path / "generated"))


def _parity(compiled) -> dict[str, object]:
    return {pj.job.id: pj.job.params for pj in compiled.jobs if pj.job.kind == "parity"}


def test_the_toy_widens_parity_to_every_length_and_position() -> None:
    compiled = compile_one(str(SPECS / "toy.yaml"), [])
    jobs = _parity(compiled)
    assert sorted(jobs) == ["parity-decode", "parity-prefill-128", "parity-prefill-256", "parity-prefill-64", "parity-verify"]
    assert all(p.positions is None and p.samples == 4 and p.decode_steps == 16 for p in jobs.values())
    assert set(compiled.job("gates").job.needs) >= set(jobs)


def test_the_defaults_run_the_smallest_length_and_64_positions(tmp_path: Path) -> None:
    jobs = _parity(_compile(tmp_path, "parity: {}"))
    assert sorted(jobs) == ["parity-decode", "parity-prefill-64", "parity-verify"]
    assert jobs["parity-prefill-64"].lengths == [64] and jobs["parity-decode"].lengths == jobs["parity-verify"].lengths == []
    assert {p.positions for p in jobs.values()} == {64}


@pytest.mark.parametrize("packaging", ["multifunction", "enumerated"])
def test_a_listed_subset_runs_those_lengths(tmp_path: Path, packaging: str) -> None:
    compiled = _compile(tmp_path, "parity: {lengths: [64, 256], samples: 2, positions: 16, decode_steps: 4}",
                        f"export.coreml.packaging={packaging}")
    jobs = _parity(compiled)
    if packaging == "multifunction":
        assert sorted(jobs) == ["parity-decode", "parity-prefill-256", "parity-prefill-64", "parity-verify"]
        assert jobs["parity-prefill-256"].lengths == [256]
    else:  # one prefill function with every length: its job runs the two
        (prefill,) = [p for p in jobs.values() if p.function.role == "prefill"]
        assert prefill.function.seq_lens == [64, 128, 256] and prefill.lengths == [64, 256]
    assert {(p.samples, p.positions, p.decode_steps) for p in jobs.values()} == {(2, 16, 4)}


def test_changing_parity_settings_reruns_parity_only(tmp_path: Path) -> None:
    a = _compile(tmp_path, "parity: {}")
    b = _compile(tmp_path, "parity: {positions: 32}")
    fa = {pj.job.id: pj.fingerprint for pj in a.jobs}
    fb = {pj.job.id: pj.fingerprint for pj in b.jobs}
    changed = sorted(j for j in fa if fa[j] != fb[j])
    assert changed and all(j.startswith(("parity-", "gates", "publish")) for j in changed), changed
    assert fa["convert"] == fb["convert"] and fa["verify"] == fb["verify"]
