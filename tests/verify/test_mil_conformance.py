"""The reference interpreter against coremltools' own MIL op tests (issue 19).

`tests.verify.mil_conformance` harvests the op tests coremltools ships (its `run_compare_builder`
cases and value-inference expectations) for every op the interpreter registers, converts each as a
one-op program with coremltools (fp16 programs, as coremltools' tests build them, and fp32 ones),
runs it with the interpreter (fp16 programs in fp16 emulation and in the fp32 reference mode) and
compares with coremltools' expected outputs at coremltools' tolerances. Registered ops coremltools
never tests get cases from their documented definition (`tests.verify.mil_definitions`).

The whole suite runs once per session (the first pytest-xdist worker to get there computes it, the
other reads its report): about 800 cases, 2,400 comparisons, 25-30 s of CPU.
"""

from __future__ import annotations

import fcntl
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.verify.mil_ops import OPS
from tests.verify import mil_conformance as mc
from tests.runtime.toy_exports import shared_dir as _shared_dir

pytestmark = [  # raised inside coremltools while it builds and converts the programs
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

# What the interpreter refuses on purpose (docs/verify.md, "What it refuses"): (test id pattern,
# error pattern, why). coremltools' value inference of an iOS17+ gather wraps negative indices the
# way numpy does; the iOS17 definition calls them out of bounds (a runtime error with
# validate_indices, undefined behaviour without), so the interpreter refuses instead of guessing.
REFUSED = [
    (r"test_scatter_gather\.py::TestGather(AlongAxis)?::test_builder_invalid_indices.*@gather",
     r"indices in \[.*\] out of bounds .* \(undefined behaviour on device\)",
     "iOS17+ gather: negative indices are out of bounds by definition; coremltools' value inference wraps them"),
]


def _refused(case: dict[str, Any], outcome: dict[str, Any]) -> bool:
    return any(re.search(ids, case["id"]) and re.search(err, outcome["detail"]) for ids, err, _ in REFUSED)


@pytest.fixture(scope="session")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = _shared_dir(tmp_path_factory) / "mil-conformance"
    root.mkdir(exist_ok=True)
    path = root / "report.json"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            (root / "packages").mkdir(exist_ok=True)
            data = mc.conformance(root / "packages")
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(path)
    return json.loads(path.read_text())


def _cases_of(report: dict[str, Any], op: str) -> list[dict[str, Any]]:
    return [c for c in report["cases"] if any(op in ops for ops in c["ops"].values())]


def test_harvests_coremltools_own_op_tests(report: dict[str, Any]) -> None:
    """The suite is coremltools' own: hundreds of its cases, both kinds, every run compared."""
    run = [c for c in report["cases"] if c["outcomes"]]
    by_source = {s: sum(c["source"] == s for c in run) for s in ("run_compare_builder", "value_inference", "definition")}
    outcomes = [o for c in run for o in c["outcomes"]]
    by_opset = {o: sum(c["opset"] == o for c in run) for o in sorted({c["opset"] for c in run})}
    xfail = sum(bool(c["xfail"]) for c in run)
    print(f"coremltools {report['coremltools']}: {len(run)} cases run {by_source}, by opset {by_opset} "
          f"({xfail} from tests coremltools marks xfail on the Mac), {len(outcomes)} comparisons, "
          f"{sum(o['ok'] for o in outcomes)} pass; left out {report['left_out']}; cpu seconds {report['cpu_seconds']}")
    assert report["coremltools"].startswith("9."), "harvested from coremltools 9; check the harvest on an upgrade"
    assert by_source["run_compare_builder"] >= 400 and by_source["value_inference"] >= 150, by_source
    # every case ran at both precisions unless coremltools itself could not convert it there
    for c in run:
        assert {(o["precision"], o["mode"]) for o in c["outcomes"]} == \
            {(p, m) for p in c["ops"] for m in mc.MODES[p]}, c["id"]


@pytest.mark.parametrize("op", sorted(OPS))
def test_op_conforms(report: dict[str, Any], op: str) -> None:
    """Every op the interpreter registers has cases, and computes what coremltools expects in every
    case: fp16 programs in fp16 emulation and in the fp32 mode, fp32 programs in the fp32 mode."""
    cases = _cases_of(report, op)
    assert cases, f"{op}: no case ran (harvested or written from its definition)"
    failures = [f"{c['id']} [{o['precision']} program, {o['mode']} mode]: {o['detail']}"
                for c in cases for o in c["outcomes"] if not o["ok"] and not _refused(c, o)]
    assert not failures, f"{op}: {len(failures)} of {sum(len(c['outcomes']) for c in cases)} comparisons " \
                         f"fail:\n" + "\n".join(failures[:20])


def test_ops_without_harvested_cases_are_listed_and_defined(report: dict[str, Any]) -> None:
    missing = report["ops_without_harvested_cases"]
    print(f"registered ops without a case in coremltools' op tests: {missing}")
    defined = {op for c in report["cases"] if c["source"] == "definition" for ops in c["ops"].values() for op in ops}
    assert set(missing) <= defined, f"ops without any case: {sorted(set(missing) - defined)}"


def test_refusals_are_the_listed_ones(report: dict[str, Any]) -> None:
    """The interpreter refuses on purpose only where the definition leaves the result undefined."""
    refused = [(c["id"], o["detail"]) for c in report["cases"] for o in c["outcomes"] if not o["ok"] and _refused(c, o)]
    print(f"{len(refused)} comparisons refused on purpose: {sorted({i for i, _ in refused})}")
    assert all("undefined behaviour" in d for _, d in refused)


# --- the three divergences of issue 19, on programs of their own -------------------------------

def _convert(case: mc.Case, tmp_path: Path) -> mc.Converted:
    mc.convert([case], tmp_path, set(OPS), "fp16")
    assert "fp16" in case.converted, case.dropped
    return case.converted["fp16"]


def test_constexpr_parameters_written_as_attributes_are_read(tmp_path: Path) -> None:
    """coremltools writes the parameters of iOS16/17 constexpr ops as attributes; the interpreter
    (and observe) read them there. They used to read inputs only: `required input
    'quantized_data' is missing`."""
    from coremltools.converters.mil.mil import Builder as mb

    from runtime.verify.interp import Interpreter, dequantized_weights
    from runtime.verify.observe import _args
    from runtime.verify.program import load_model, model_file

    q = np.array([[3, 5, 255], [6, 0, 128]], np.uint8)
    scale, zero = np.array([0.5, 2.0], np.float32), np.array([2, 4], np.uint8)
    weight = scale[:, None] * (q.astype(np.float32) - zero[:, None])

    def build(x: Any) -> Any:
        w = mb.constexpr_affine_dequantize(quantized_data=q, zero_point=zero, scale=scale, axis=0)
        return mb.add(x=x, y=w)

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    case = mc.Case("affine_dequantize_attributes", "definition", 9, {"x": mb.placeholder(shape=(2, 3))}, build,
                   {"x": x}, [x + weight])
    conv = _convert(case, tmp_path)
    spec = load_model(model_file(conv.package))
    fn = spec.mlProgram.functions[conv.function]
    op = next(o for o in fn.block_specializations[fn.opset].operations if o.type == "constexpr_affine_dequantize")
    assert not op.inputs and {"quantized_data", "scale", "zero_point", "axis"} <= set(op.attributes)
    assert {"quantized_data", "scale", "zero_point"} <= set(_args(op))
    for fp16 in (False, True):
        got = Interpreter(conv.package, fp16=fp16).run(conv.function, {"x": x}).outputs
        np.testing.assert_allclose(next(iter(got.values())).astype(np.float32), x + weight, rtol=1e-3)
    (dequant,) = dequantized_weights(conv.package).values()
    np.testing.assert_allclose(dequant, weight, rtol=1e-3)


@pytest.mark.parametrize("op", ["reshape", "fill"])
def test_outputs_of_unknown_rank(op: str, tmp_path: Path) -> None:
    """A runtime shape makes the output's rank unknown: coremltools declares one variadic unknown
    dimension, and any shape fits it (was read as one unknown dimension: `computed shape [2, 1, 3],
    the program declares ['?']`)."""
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import get_new_symbol, types

    from runtime.verify.interp import Interpreter

    n = get_new_symbol()
    if op == "reshape":
        placeholders = {"x": mb.placeholder(shape=(6,)), "shape": mb.placeholder(shape=(n,), dtype=types.int32)}
        inputs = {"x": np.arange(6, dtype=np.float32), "shape": np.array([2, 1, 3], np.int32)}
        expected = np.arange(6, dtype=np.float32).reshape(2, 1, 3)
        build = lambda x, shape: mb.reshape(x=x, shape=shape)  # noqa: E731
    else:
        placeholders = {"shape": mb.placeholder(shape=(n,), dtype=types.int32)}
        inputs = {"shape": np.array([2, 1, 3], np.int32)}
        expected = np.full((2, 1, 3), 1.5, np.float32)
        build = lambda shape: mb.fill(shape=shape, value=1.5)  # noqa: E731
    conv = _convert(mc.Case(f"{op}_runtime_shape", "definition", 9, placeholders, build, inputs, [expected]), tmp_path)
    interp = Interpreter(conv.package)
    fn = interp.function(conv.function)
    (out,) = fn.outputs
    desc = interp._output_desc(fn, out)
    assert desc.unknown_rank and desc.describe() == "[*]"
    got = interp.run(conv.function, inputs).outputs[out]
    assert got.shape == (2, 1, 3) and np.array_equal(got, expected)


def test_declared_shapes_are_still_enforced() -> None:
    from runtime.verify.program import TensorDesc

    assert TensorDesc("fp32", (), unknown_rank=True).fits((2, 1, 3))
    assert TensorDesc("fp32", (2, None)).fits((2, 7)) and not TensorDesc("fp32", (2, None)).fits((2, 7, 1))
    assert not TensorDesc("fp32", (2, 3)).fits((3, 2))


def test_squeeze_ignores_axes_whose_size_is_not_one() -> None:
    """iOS15 squeeze (iOS17/18 inherit it): "if x has shape (2, 3, 4) and axes is [0, 1], the
    output will be a tensor with shape (2, 3, 4)"; axes of size 1 among them are removed."""
    from runtime.verify.mil_ops import Args, OpError

    x = np.zeros((2, 1, 4, 1), np.float32)
    squeeze = OPS["squeeze"]
    assert squeeze(Args("squeeze", "s", {"x": [x], "axes": [np.array([0, 2])]})).shape == (2, 1, 4, 1)
    assert squeeze(Args("squeeze", "s", {"x": [x], "axes": [np.array([0, 1, -1])]})).shape == (2, 4)
    assert squeeze(Args("squeeze", "s", {"x": [x]})).shape == (2, 4)
    with pytest.raises(OpError, match="out of range"):
        squeeze(Args("squeeze", "s", {"x": [x], "axes": [np.array([4])]}))
