"""Conformance of the numpy MIL interpreter (`runtime.verify`) with coremltools' op definitions,
checked on the op tests coremltools itself ships.

coremltools has a test module per opset (`coremltools/converters/mil/mil/ops/tests/iOS14..18/`).
Its op tests call `run_compare_builder(build, placeholders, input_values, expected_types,
expected_outputs, backend=..., atol=..., rtol=...)`: a one-op program built with the MIL Builder
and the values CoreML must compute for it. Others build ops on constants and check the value
coremltools' value inference folds them to (`test_builder_eval`, `.val`). Here:

* `harvest(ops)` imports every test class that builds only ops the interpreter registers, runs the
  parameter combinations of its tests (every value of every parameter at least once, then more
  until `MAX_CASES` cases per test) with `run_compare_builder` replaced by a recorder, each at the
  newest ML-program opset the test does not skip (iOS18; older opsets only for tests that skip
  newer ones), and records each op that value inference folded in a test that passed. Each is a
  `Case`.
* `convert(cases, root, ops, precision)` builds each case with coremltools' Builder and lowers it
  as `ct.convert(prog, convert_to="mlprogram", compute_precision=FLOAT16 (or FLOAT32),
  minimum_deployment_target=<opset>)` does (coremltools' default and ML-program backend passes,
  its proto writer and `_create_mlpackage`), batched as the functions of one package per opset and
  pass pipeline.
* `run(cases, precision)` executes every function with the interpreter (an fp16 program in fp16
  emulation and in the fp32 reference mode, an fp32 program in the fp32 mode) and compares with
  the expected outputs at coremltools' tolerances (`compare_backend`: an fp16 program at
  atol = max(100 atol, 0.5), rtol = max(100 rtol, 0.05); an fp32 one at the test's atol, rtol).
* `conformance(root)` does all of it and returns the report the test reads;
  `python -m tests.verify.mil_conformance` prints it as a per-op table.

Where the harvest departs from running the test under pytest, it does so to convert what the
test would: a `pytest.xfail(...)` inside a test is noted on its cases and the test goes on
(coremltools marks CoreML runtime bugs on the Mac that way, rdar:// numbers, not definitions); a
build function is recorded with its closure frozen (tests define it in a loop over axes); each
function gets a fresh `add_int16_cast` pass (the pass keeps its int16/uint16 choice from one
parameter, and program, to the next: a runtime gather index would be cast to uint16 after an
unrelated non-negative constant); a value-inference record's tensor inputs become function inputs
(constants would be folded away again); ops the converter still removes are dropped, not counted.

scipy is not a dependency of this project. Three of coremltools' tests compute expected values with
`scipy.special` (`erf`, `softmax`, `logsumexp`); without scipy those come from torch in float64
(an implementation independent of the interpreter's numpy).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib
import inspect
import itertools
import logging
import random
import sys
import tempfile
import time
import types as pytypes
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

OPSET_NAMES = {6: "iOS15", 7: "iOS16", 8: "iOS17", 9: "iOS18"}  # ct.target values (specification versions)
MAX_CASES = 20  # per test: past the combinations covering every parameter value, more until this many cases
DEFAULT_ATOL, DEFAULT_RTOL = 1e-4, 1e-5  # run_compare_builder's defaults
FP16_MAX = float(np.finfo(np.float16).max)


@dataclass
class Converted:
    """A case converted at one precision: its function in a package, and the ops under test (those
    the test built that the converter kept)."""

    package: Path
    function: str
    ops: frozenset[str]


@dataclass
class Case:
    """One program to run: coremltools' build function, its inputs and expected outputs."""

    id: str
    source: str  # "run_compare_builder" | "value_inference" | "definition"
    opset: int  # ct.target value: 6 = iOS15 ... 9 = iOS18 (MIL opsets CoreML5 ... CoreML8)
    placeholders: dict[str, Any]
    build: Callable[..., Any]
    inputs: dict[str, Any]
    expected: list[np.ndarray]
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    compare_shapes: bool = True
    pipeline: Any = None  # the test's own PassPipeline; None: coremltools' default
    input_types: Any = None  # the test's ct.TensorType inputs (flexible shapes), as ct.convert's `inputs=`
    xfail: str = ""  # the reason coremltools' suite expects this test to fail on a Mac (a CoreML runtime bug)
    built: frozenset[str] = frozenset()  # op types the test built (consts aside)
    converted: dict[str, Converted] = field(default_factory=dict)  # precision -> its converted program
    dropped: dict[str, str] = field(default_factory=dict)  # precision -> why it is not run


@dataclass
class Outcome:
    case: Case
    precision: str  # the program's compute precision: "fp16" | "fp32"
    mode: str  # the interpreter's: "fp16" (fp16-storage emulation) | "fp32" (reference)
    ok: bool
    detail: str = ""

    @property
    def ops(self) -> frozenset[str]:
        return self.case.converted[self.precision].ops


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """coremltools' warnings (I/O dtype adjustments, precision notes) off while we harvest and convert."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# --- harvesting -------------------------------------------------------------------------------

def _scipy_shim() -> list[str]:
    """`scipy.special.{erf,softmax,logsumexp}` from torch (float64) when scipy is not installed:
    the module names it put in sys.modules (the harvest takes them out again; the test modules
    imported meanwhile keep their reference)."""
    try:
        import scipy.special  # noqa: F401
        return []
    except ImportError:
        pass
    import torch

    def as64(x: Any) -> Any:
        return torch.as_tensor(np.asarray(x, dtype=np.float64))

    def erf(x: Any) -> np.ndarray:
        return torch.special.erf(as64(x)).numpy()

    def softmax(x: Any, axis: int | None = None) -> np.ndarray:
        t = as64(x)
        if axis is None:
            return torch.softmax(t.reshape(-1), 0).reshape(t.shape).numpy()
        return torch.softmax(t, dim=axis).numpy()

    def logsumexp(x: Any, axis: Any = None, keepdims: bool = False) -> np.ndarray:
        t = as64(x)
        dims = tuple(range(t.ndim)) if axis is None else axis
        return torch.logsumexp(t, dim=dims, keepdim=keepdims).numpy()

    scipy = pytypes.ModuleType("scipy")
    special = pytypes.ModuleType("scipy.special")
    special.erf, special.softmax, special.logsumexp = erf, softmax, logsumexp
    scipy.special = special
    sys.modules["scipy"], sys.modules["scipy.special"] = scipy, special
    return ["scipy", "scipy.special"]


def tests_root() -> Path:
    """coremltools' own MIL op tests (they ship in the wheel)."""
    from coremltools.converters.mil.mil.ops import tests

    return Path(tests.__file__).parent


def classes_using(path: Path, ops: set[str]) -> list[str]:
    """Test classes of a module that call `mb.<op>` for an op in `ops` and for no other MIL op
    (a class that also builds conv or while_loop programs would be harvested for nothing)."""
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    mil_ops = set(SSAOpRegistry.core_ops) | set(SSAOpRegistry.dialect_ops)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            used = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
                    and isinstance(n.value, ast.Name) and n.value.id == "mb"}
            if used & ops and not (used & mil_ops) - ops - {"const"}:
                out.append(node.name)
    return out


_GRIDS: dict[Any, list[Any]] = {}  # parametrize marks hold itertools.product iterators: read them once


def _combos(fn: Callable[..., Any], cls: type) -> list[dict[str, Any]]:
    """Every parameter combination pytest would run (none when a skip mark applies; an xfail mark
    is kept as the `_xfail` entry: coremltools marks CoreML runtime bugs that way, not definitions)."""
    grids: list[list[dict[str, Any]]] = []
    for mark in list(getattr(cls, "pytestmark", [])) + list(getattr(fn, "pytestmark", [])):
        if mark.name == "parametrize":
            names = mark.args[0] if mark.args else mark.kwargs["argnames"]
            if id(mark) not in _GRIDS:
                _GRIDS[id(mark)] = [mark, list(mark.args[1] if len(mark.args) > 1 else mark.kwargs["argvalues"])]
            values = _GRIDS[id(mark)][1]
            names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
            grid = []
            for v in values:
                xfail = ""
                if hasattr(v, "values") and hasattr(v, "marks"):  # pytest.param(...)
                    if any(m.name in ("skip", "skipif") for m in v.marks):
                        continue
                    xfail = next((str(m.kwargs.get("reason", "xfail")) for m in v.marks if m.name == "xfail"), "")
                    v = v.values
                elif len(names) == 1:
                    v = (v,)
                grid.append(dict(zip(names, v), **({"_xfail": xfail} if xfail else {})))
            grids.append(grid)
        elif mark.name == "xfail":
            grids.append([{"_xfail": str(mark.kwargs.get("reason", mark.args[0] if mark.args else "xfail"))}])
        elif mark.name == "skip":
            return []
        elif mark.name == "skipif":
            cond = mark.args[0] if mark.args else mark.kwargs.get("condition")
            # macOS-version skips are about the CoreML runtime on the test machine, not the definition
            if cond and "macos" not in str(mark.kwargs.get("reason", "")).lower():
                return []
    out = []
    for product in itertools.product(*grids):
        merged: dict[str, Any] = {}
        for part in product:
            merged.update(part)
        out.append(merged)
    return out


def _text(v: Any) -> str:
    return v.__name__ if callable(v) and hasattr(v, "__name__") else repr(v)


def _label(combo: dict[str, Any]) -> str:
    return ",".join(f"{k}={_text(v)}"[:60] for k, v in combo.items() if k not in ("backend", "compute_unit", "_xfail"))


def _order(combos: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The combinations that cover the grid: spread across it, each that brings a parameter value
    not seen yet (every mode, dtype and rank once); and the others, spread."""
    if len(combos) <= 2:
        return combos, []
    bits = max(1, (len(combos) - 1).bit_length())
    spread = sorted(range(len(combos)), key=lambda i: int(format(i, f"0{bits}b")[::-1], 2))  # van der Corput
    seen: set[tuple[str, str]] = set()
    first, rest = [], []
    for i in spread:
        pairs = {(k, _text(v)) for k, v in combos[i].items() if k not in ("backend", "compute_unit", "_xfail")}
        (first if pairs - seen else rest).append(combos[i])
        seen |= pairs
    return first, rest


def _frozen(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with the variables it closes over copied as they are now: a test that loops over axes
    defines `build` in the loop and coremltools converts it before the loop moves on; we build later."""
    if not getattr(fn, "__closure__", None):
        return fn
    cells = []
    for cell in fn.__closure__:
        try:
            value = cell.cell_contents
        except ValueError:  # not assigned yet
            cells.append(pytypes.CellType())
            continue
        if isinstance(value, (np.ndarray, list, dict, tuple)):
            with contextlib.suppress(Exception):
                value = copy.deepcopy(value)
        cells.append(pytypes.CellType(value))
    frozen = pytypes.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, tuple(cells))
    frozen.__kwdefaults__ = fn.__kwdefaults__
    return frozen


def _copy(value: Any) -> Any:
    return np.array(value, copy=True) if isinstance(value, np.ndarray) else copy.deepcopy(value)


class _Recorder:
    """Stands in for run_compare_builder, and records the ops value inference folds, while a test runs."""

    def __init__(self, ops: set[str], left_out: Counter[str]):
        self.ops = ops
        self.left_out = left_out
        self.calls: list[dict[str, Any]] = []
        self.folded: list[dict[str, Any]] = []
        self.recording = False
        self.xfail = ""

    def pytest_xfail(self, reason: str = "") -> None:
        """pytest.xfail while harvesting: note the reason and go on (the xfails in coremltools' op
        tests are CoreML runtime bugs on the Mac, rdar:// numbers; the expected values stand)."""
        self.xfail = reason or "xfail"

    def run_compare_builder(self, build: Callable[..., Any], input_placeholders: dict[str, Any],
                            input_values: dict[str, Any] | None = None, expected_output_types: Any = None,
                            expected_outputs: Any = None, compute_unit: Any = None, frontend_only: bool = False,
                            backend: Any = None, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                            inputs: Any = None, also_compare_shapes: bool = True, converter: Any = None,
                            pass_pipeline: Any = None, pred_iters: int | None = None) -> None:
        import coremltools as ct

        skip = ("frontend only (no expected values)" if frontend_only or expected_outputs is None
                else "stateful (pred_iters)" if pred_iters is not None
                else "image inputs" if inputs is not None and not all(type(i) is ct.TensorType for i in inputs)
                else "")
        if skip:
            self.left_out[f"run_compare_builder: {skip}"] += 1
            return None
        expected = expected_outputs if isinstance(expected_outputs, list) else [expected_outputs]
        self.calls.append(dict(build=_frozen(build), placeholders=input_placeholders,
                               inputs={k: _copy(v) for k, v in (input_values or {}).items()},
                               expected=[np.array(e, copy=True) for e in expected], atol=atol, rtol=rtol,
                               compare_shapes=also_compare_shapes, pipeline=copy.deepcopy(pass_pipeline),
                               input_types=copy.deepcopy(inputs), xfail=self.xfail,
                               opset=backend.opset_version.value if backend is not None else 6))
        return None

    def hook(self, original: Callable[..., Any]) -> Callable[..., Any]:
        recorder = self

        def _auto_val(op: Any, output_types: Any) -> Any:
            vals = original(op, output_types)
            if recorder.recording and op.op_type in recorder.ops:
                recorder.note_folded(op, vals)
            return vals
        return _auto_val

    def note_folded(self, op: Any, vals: Any) -> None:
        from coremltools.converters.mil.mil.types.symbolic import any_symbolic, is_symbolic

        outs = [getattr(v, "val", None) for v in vals]
        if not outs or any(o is None or is_symbolic(o) or (isinstance(o, np.ndarray) and any_symbolic(o.flatten()))
                           for o in outs):
            return
        params: dict[str, Any] = {}
        for name, var in op.inputs.items():
            values = [v.val for v in var] if isinstance(var, (list, tuple)) else [var.val]
            if any(v is None or (not isinstance(v, str) and is_symbolic(v)) for v in values):
                return
            values = [np.array(v, copy=True) if isinstance(v, np.ndarray) else v for v in values]
            params[name] = values if isinstance(var, (list, tuple)) else values[0]
        const_only = {n for n, t in op.input_spec.input_types.items() if getattr(t, "const", False)}
        self.folded.append(dict(op_type=op.op_type, opset=op.opset_version.value if op.opset_version else 6,
                                params=params, const_only=const_only, outputs=[np.array(o) for o in outs]))


# A test that fails only because it asks CoreML for a prediction (macOS only): its value-inference
# records were made before and stand on their own (e.g. band_part's test_value_inference).
_PREDICTION_ONLY_ON_MACOS = "Model prediction is only supported on macOS"


def harvest(ops: Iterable[str], max_cases: int = MAX_CASES) -> tuple[list[Case], dict[str, int]]:
    """coremltools' op test cases for `ops`; and counts of what was left out, by reason."""
    import coremltools as ct
    from _pytest.outcomes import OutcomeException
    from coremltools.converters.mil.mil import operation
    from coremltools.converters.mil.testing_reqs import BackendConfig

    shimmed = _scipy_shim()
    ops = set(ops)
    opsets = (ct.target.iOS18, ct.target.iOS17, ct.target.iOS16, ct.target.iOS15)
    left_out: Counter[str] = Counter()
    recorder = _Recorder(ops, left_out)
    cases: list[Case] = []
    original = operation.Operation._auto_val
    operation.Operation._auto_val = recorder.hook(original)
    convert_ = ct.convert

    def no_convert(*args: Any, **kwargs: Any) -> None:
        # a test converting and predicting itself would fail at predict on Linux: stop it before
        # the (slow) conversion; what it folded up to here is kept
        raise RuntimeError(f"{_PREDICTION_ONLY_ON_MACOS} (not converted while harvesting)")

    ct.convert = no_convert
    import pytest

    xfail_ = pytest.xfail
    pytest.xfail = recorder.pytest_xfail
    patched: list[Any] = []  # test modules whose run_compare_builder is the recorder's
    rng = np.random.get_state(), random.getstate()
    try:
        with quiet():
            for path in sorted(tests_root().glob("iOS1*/test_*.py")):
                classes = classes_using(path, ops)
                if not classes:
                    continue
                module = importlib.import_module(
                    f"coremltools.converters.mil.mil.ops.tests.{path.parent.name}.{path.stem}")
                if hasattr(module, "run_compare_builder"):
                    patched.append((module, module.run_compare_builder))
                    module.run_compare_builder = recorder.run_compare_builder
                for cname in classes:
                    cls = getattr(module, cname)
                    for mname, fn in inspect.getmembers(cls, inspect.isfunction):
                        if mname.startswith("test"):
                            test_id = f"{path.parent.name}/{path.stem}.py::{cname}::{mname}"
                            cases += _harvest_test(cls, mname, fn, test_id, recorder, opsets, max_cases,
                                                   BackendConfig, OutcomeException)
    finally:
        operation.Operation._auto_val = original
        ct.convert = convert_
        pytest.xfail = xfail_
        for module, original_rcb in patched:
            module.run_compare_builder = original_rcb
        np.random.set_state(rng[0])
        random.setstate(rng[1])
        for name in shimmed:
            sys.modules.pop(name, None)
    return _dedupe(cases, left_out), dict(left_out)


def _harvest_test(cls: type, mname: str, fn: Callable[..., Any], test_id: str, recorder: _Recorder,
                  opsets: tuple[Any, ...], max_cases: int, backend_config: type,
                  outcome_exception: type) -> list[Case]:
    wanted = [n for n, p in inspect.signature(fn).parameters.items() if n != "self"
              and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]  # ssa_fn wraps tests as (*args, **kwargs)
    if "_xfail" in wanted:
        return []
    combos = [c for c in _combos(fn, cls) if set(wanted) <= set(c)
              and (not isinstance(c.get("backend"), backend_config) or c["backend"].backend == "mlprogram")]
    unique: dict[str, dict[str, Any]] = {}
    for c in combos:  # one per combination of the parameters other than backend and compute unit
        unique.setdefault(_label(c), c)
    out: list[Case] = []
    covering, rest = _order(list(unique.values()))
    for n, combo in enumerate(covering + rest):
        if n >= len(covering) and len(out) >= max_cases:
            recorder.left_out["over the per-test cap"] += 1
            continue
        kwargs = {k: combo[k] for k in wanted}
        lowest = combo["backend"].opset_version if "backend" in combo else None
        for opset in [o for o in opsets if o >= lowest] if lowest is not None else [None]:
            if opset is not None:
                kwargs["backend"] = backend_config(backend="mlprogram", precision="fp16", opset_version=opset)
            recorder.calls, recorder.folded, recorder.xfail = [], [], combo.get("_xfail", "")
            np.random.seed(1984)
            random.seed(1984)
            outcome = ""
            recorder.recording = True
            try:
                getattr(cls(), mname)(**kwargs)
            except outcome_exception as e:  # skipped, xfailed, failed (a pytest.raises that did not raise)
                outcome = type(e).__name__
            except Exception as e:  # noqa: BLE001
                # after a recorded call: the test went on to inspect the model we did not build
                if not recorder.calls and _PREDICTION_ONLY_ON_MACOS not in str(e):
                    outcome = type(e).__name__
            finally:
                recorder.recording = False
            if outcome == "Skipped" and not recorder.calls:
                continue  # the next older opset
            if outcome:
                recorder.left_out[f"test outcome {outcome}"] += 1
                break
            label = _label(combo)
            for i, call in enumerate(recorder.calls):
                out.append(Case(
                    id=f"{test_id}[{label}]" + (f"#{i}" if len(recorder.calls) > 1 else ""),
                    source="run_compare_builder", opset=call["opset"], placeholders=call["placeholders"],
                    build=call["build"], inputs=call["inputs"], expected=call["expected"], atol=call["atol"],
                    rtol=call["rtol"], compare_shapes=call["compare_shapes"], pipeline=call["pipeline"],
                    input_types=call["input_types"], xfail=call["xfail"]))
            for i, rec in enumerate(recorder.folded):
                case = _folded_case(rec, f"{test_id}[{label}]@{rec['op_type']}#{i}")
                if case is None:
                    recorder.left_out["value inference: no input can be a runtime value"] += 1
                else:
                    out.append(case)
            break
    return out


def _dedupe(cases: list[Case], left_out: Counter[str]) -> list[Case]:
    """Value-inference records repeat (a test folds the same op in several combinations)."""
    out, seen = [], set()
    for c in cases:
        if c.source == "value_inference":
            key = (c.id.split("[")[0], c.opset, getattr(c.build, "signature", c.id))
            if key in seen:
                left_out["value inference: duplicate"] += 1
                continue
            seen.add(key)
        out.append(c)
    return out


def _folded_case(rec: dict[str, Any], case_id: str) -> Case | None:
    """A value-inference record as a program: the op's tensor inputs that may be runtime values
    become function inputs (so the converter cannot fold the op away again), the rest constants."""
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    # the Builder stores float64 / int64 constants as fp32 / int32
    dtypes = {np.dtype(np.float32): types.fp32, np.dtype(np.float64): types.fp32, np.dtype(np.float16): types.fp16,
              np.dtype(np.int32): types.int32, np.dtype(np.int64): types.int32}
    placeholders: dict[str, Any] = {}
    inputs: dict[str, np.ndarray] = {}

    def runtime(value: Any, const_only: bool) -> Any:
        if const_only or not isinstance(value, np.ndarray) or value.ndim == 0 or value.dtype not in dtypes:
            return value
        key = f"in{len(placeholders)}"
        placeholders[key] = mb.placeholder(shape=value.shape, dtype=dtypes[value.dtype])
        inputs[key] = value.astype({types.fp32: np.float32, types.fp16: np.float16, types.int32: np.int32}[dtypes[value.dtype]])
        return ("input", key)

    params: dict[str, Any] = {}
    for name, value in rec["params"].items():
        const_only = name in rec["const_only"]
        params[name] = [runtime(v, const_only) for v in value] if isinstance(value, list) else runtime(value, const_only)
    if not placeholders:
        return None
    op_type = rec["op_type"]

    def build(**vars_: Any) -> Any:
        def resolve(v: Any) -> Any:
            return vars_[v[1]] if isinstance(v, tuple) and len(v) == 2 and v[0] == "input" else v
        return getattr(mb, op_type)(**{k: [resolve(x) for x in v] if isinstance(v, list) else resolve(v)
                                       for k, v in params.items()})

    build.signature = repr((op_type, sorted((k, repr(v)) for k, v in rec["params"].items())))  # type: ignore[attr-defined]
    return Case(id=case_id, source="value_inference", opset=max(rec["opset"], 6), placeholders=placeholders,
                build=build, inputs=inputs, expected=rec["outputs"])


# --- conversion -------------------------------------------------------------------------------

def _function(case: Case, opset: Any) -> Any:
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import Function

    placeholders = {k: mb.placeholder(shape=p.sym_shape, dtype=p.dtype, allow_rank0_input=True)
                    for k, p in case.placeholders.items()}
    with Function(placeholders, opset_version=opset) as fn:
        outputs = case.build(**fn.inputs)
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        fn.set_outputs(outputs)
    if case.input_types:
        fn.set_input_types(tuple(copy.deepcopy(case.input_types)))
    return fn


def _pipeline_key(case: Case) -> tuple[str, ...]:
    if case.pipeline is None:
        return ("<default>",)
    return tuple(case.pipeline.passes) + tuple(sorted(case.pipeline.get_all_options()))


def convert(cases: list[Case], root: Path, known: set[str], precision: str = "fp16") -> list[Path]:
    """Every case as a function of one package per opset (and pass pipeline), lowered by coremltools
    at `precision` ("fp16": compute_precision=FLOAT16, as coremltools' op tests; "fp32"). Fills each
    case's `converted[precision]`, or `dropped[precision]`: coremltools cannot build or convert it,
    it uses an op the interpreter does not register, or coremltools' passes removed the op under
    test (a batch that fails is converted again without the case the error came from)."""
    import coremltools as ct

    packages: list[Path] = []
    groups: dict[tuple[int, tuple[str, ...]], list[tuple[Case, Any]]] = defaultdict(list)
    with quiet():
        for case in cases:
            try:
                fn = _function(case, ct.target(case.opset))
            except Exception as e:  # noqa: BLE001  (coremltools refuses the program: not a case)
                case.dropped[precision] = f"coremltools cannot build it: {type(e).__name__}: {str(e)[:200]}"
                continue
            case.built = frozenset(op.op_type for op in fn.operations if op.op_type != "const")
            outside = sorted(case.built - known)
            if outside or not case.built:
                case.dropped[precision] = (f"uses ops the interpreter does not register: {outside}" if outside
                                           else "builds no op")
                continue
            groups[(case.opset, _pipeline_key(case))].append((case, fn))
        for n, ((opset, _), group) in enumerate(sorted(groups.items())):
            _convert_batch(group, opset, root / f"{OPSET_NAMES[opset]}-{precision}-{n}", precision, packages)
    _keep_converted_ops(cases, packages, precision)
    return packages


def _keep_converted_ops(cases: list[Case], packages: list[Path], precision: str) -> None:
    """The ops under test are those the test built that the converted function still has."""
    from runtime.verify.program import Function, load_model, model_file

    present: dict[tuple[Path, str], set[str]] = {}
    for package in packages:
        for name, fn in load_model(model_file(package)).mlProgram.functions.items():
            present[(package, name)] = set(Function.parse(name, fn).op_types())
    for case in cases:
        conv = case.converted.get(precision)
        if conv is None:
            continue
        kept = case.built & present[(conv.package, conv.function)]
        if kept:
            conv.ops = frozenset(kept)
        else:
            case.dropped[precision] = f"coremltools' passes removed {sorted(case.built)} (folded or rewritten)"
            del case.converted[precision]


def _convert_batch(group: list[tuple[Case, Any]], opset: int, stem: Path, precision: str,
                   packages: list[Path]) -> None:
    """Convert the batch; when coremltools fails on one case, drop that case (found from the op the
    error arose in, else by halving the batch) and convert the others again, rebuilt."""
    import coremltools as ct

    try:
        package = _write_package(group, opset, Path(f"{stem}.mlpackage"), precision)
    except Exception as e:  # noqa: BLE001
        culprit = _failing_case(e, group)
        if culprit is None and len(group) == 1:
            culprit = group[0][0]
        if culprit is not None:
            culprit.dropped[precision] = f"coremltools cannot convert it: {type(e).__name__}: {str(e)[:200]}"
            rest = [(case, _function(case, ct.target(opset))) for case, _ in group if case is not culprit]
            if rest:
                _convert_batch(rest, opset, Path(f"{stem}r"), precision, packages)
            return
        fresh = [(case, _function(case, ct.target(opset))) for case, _ in group]
        half = len(fresh) // 2
        _convert_batch(fresh[:half], opset, Path(f"{stem}a"), precision, packages)
        _convert_batch(fresh[half:], opset, Path(f"{stem}b"), precision, packages)
        return
    packages.append(package)
    for i, (case, _) in enumerate(group):
        case.converted[precision] = Converted(package, "main" if i == 0 else f"f{i}", case.built)


def _failing_case(error: BaseException, group: list[tuple[Case, Any]]) -> Case | None:
    """The case whose function holds the op (or block) a coremltools error was raised in."""
    from coremltools.converters.mil.mil import Block, Operation

    owners = {id(fn): case for case, fn in group}
    tb = error.__traceback__
    found = None
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            block = value.enclosing_block if isinstance(value, Operation) else value if isinstance(value, Block) else None
            while block is not None and id(block) not in owners:
                outer = getattr(block, "outer_op", None)
                block = outer.enclosing_block if outer is not None else None
            if block is not None:
                found = owners[id(block)]
        tb = tb.tb_next
    return found


def _write_package(group: list[tuple[Case, Any]], opset: int, path: Path, precision: str) -> Path:
    """What ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=..., compute_precision=...)
    writes, for a program whose functions are the cases: mil_convert_to_proto's three pipelines (the
    program validated once at the end, not after every pass), each function treated as the main
    function of its own program (Core ML I/O types and checks; a fresh add_int16_cast), the proto
    writer and `_create_mlpackage`."""
    from coremltools.converters.mil import mil
    from coremltools.converters.mil.backend.mil.load import CoreMLProtoExporter, load
    from coremltools.converters.mil.mil import Block
    from coremltools.converters.mil.backend.mil.passes import adjust_io_to_supported_types as adjust_io
    from coremltools.converters.mil.converter import _construct_other_pipelines, _reset_conversion_state
    from coremltools.converters.mil.mil.passes.pass_pipeline import PASS_REGISTRY, PassPipeline
    from coremltools.models.model import _create_mlpackage

    prog = mil.Program()
    for i, (_, fn) in enumerate(group):
        prog.functions["main" if i == 0 else f"f{i}"] = fn
    prog._check_program_opset_version()
    pipeline = copy.deepcopy(group[0][0].pipeline) or PassPipeline()
    if precision != "fp16":
        pipeline.remove_passes({"common::add_fp16_cast", "common::add_int16_cast"})
    frontend, backend = _construct_other_pipelines(pipeline, "milinternal", "mlprogram")
    main_only = adjust_io.adjust_io_to_supported_types.apply
    adjust_io.adjust_io_to_supported_types.apply = lambda self, p: [
        adjust_io._adjust_io_to_supported_types(f, True) for f in p.functions.values()]
    # passes format whole blocks into logger.debug strings eagerly (reduce_transposes on every block):
    # with debug logging off that text is never read, so blocks print as their name meanwhile
    block_str = Block.__str__
    Block.__str__ = lambda self: f"<block {getattr(self, 'name', '')}>"
    try:
        for stage in (frontend, pipeline, backend):
            stage.validate()
            for name in stage.passes:
                graph_pass = PASS_REGISTRY[name]
                graph_pass.set_options(stage.get_options(name))
                if name == "common::add_int16_cast":
                    # the pass keeps its int16/uint16 choice between parameters (and programs): a
                    # runtime gather index after a non-negative constant one is cast to uint16.
                    # A one-op program converted alone starts from int16.
                    for fn_name, fn in list(prog.functions.items()):
                        graph_pass._target_dtype = "int16"
                        single = mil.Program()
                        single.functions[fn_name] = fn
                        graph_pass(single)
                else:
                    graph_pass(prog)
        prog.validate(check_essential_scope=True)
        prog._check_early_error_out_for_invalid_program()
        describe = CoreMLProtoExporter(prog, None, None, None, None, "mlprogram", "milinternal", opset)
        for fn in prog.functions.values():
            describe.get_func_input(fn)
            describe.get_func_output(fn)
        weights = tempfile.mkdtemp(dir=path.parent)
        proto = load(prog, weights, specification_version=opset, convert_to="mlprogram", convert_from="milinternal")
    finally:
        Block.__str__ = block_str
        adjust_io.adjust_io_to_supported_types.apply = main_only
        _reset_conversion_state()
    _create_mlpackage(proto, weights, str(path))
    return path


# --- running ----------------------------------------------------------------------------------

def tolerance(case: Case, precision: str) -> tuple[float, float]:
    """coremltools' tolerances (compare_backend): an fp16 program at max(100 atol, 0.5),
    max(100 rtol, 0.05), an fp32 one at the test's atol/rtol. Expected values coremltools computed
    in fp16 (value inference on fp16 constants) are fp16 values: the fp16 tolerance."""
    if precision == "fp16" or any(np.asarray(e).dtype == np.float16 for e in case.expected):
        return max(case.atol * 100.0, 5e-1), max(case.rtol * 100.0, 5e-2)
    return case.atol, case.rtol


MODES = {"fp16": ("fp16", "fp32"), "fp32": ("fp32",)}  # interpreter modes run on each program precision


def run(cases: list[Case], precision: str = "fp16") -> list[Outcome]:
    """Each case converted at `precision` through the interpreter in each of MODES[precision]."""
    from runtime.verify.interp import Interpreter

    outcomes: list[Outcome] = []
    interps: dict[tuple[Path, str], Interpreter] = {}
    try:
        for case in cases:
            conv = case.converted.get(precision)
            if conv is None:
                continue
            for mode in MODES[precision]:
                key = (conv.package, mode)
                if key not in interps:
                    interps[key] = Interpreter(conv.package, fp16=mode == "fp16")
                outcomes.append(_run_one(interps[key], case, precision, mode))
    finally:
        for interp in interps.values():
            interp.close()
    return outcomes


def _run_one(interp: Any, case: Case, precision: str, mode: str) -> Outcome:
    from runtime.verify.mil_ops import NP_DTYPES

    conv = case.converted[precision]
    fn = interp.function(conv.function)
    given = {}
    for name, desc in fn.inputs.items():
        value = np.asarray(case.inputs[name])
        if not desc.unknown_rank and None not in desc.shape and value.size == int(np.prod(desc.shape)):
            value = value.reshape(desc.shape)  # CoreML's predict takes a scalar for a [1] input
        given[name] = value.astype(np.float32 if desc.is_float else NP_DTYPES[desc.dtype])
    try:
        result = interp.run(conv.function, given)
    except Exception as e:  # noqa: BLE001  (every refusal is a finding)
        return Outcome(case, precision, mode, False, f"{type(e).__name__}: {e}")
    got = [result.outputs[n] for n in fn.outputs]
    if len(got) != len(case.expected):
        return Outcome(case, precision, mode, False, f"{len(got)} outputs, expected {len(case.expected)}")
    atol, rtol = tolerance(case, precision)
    for i, (g, e) in enumerate(zip(got, case.expected)):
        e64 = np.asarray(e).astype(np.float64)
        g64 = np.asarray(g).astype(np.float64)
        if case.compare_shapes and g64.shape != e64.shape and e64.size > 1:
            return Outcome(case, precision, mode, False,
                           f"output {i}: shape {list(g64.shape)}, expected {list(e64.shape)}")
        if g64.size != e64.size:
            return Outcome(case, precision, mode, False, f"output {i}: {g64.size} values, expected {e64.size}")
        g64 = g64.reshape(e64.shape)
        close = np.isclose(g64, e64, atol=atol, rtol=rtol, equal_nan=True)
        if mode == "fp16":
            # an fp16 value cannot hold one beyond the fp16 range: it is inf of that sign
            close |= (np.abs(e64) > FP16_MAX) & (g64 == np.copysign(np.inf, e64))
        if not close.all():
            where = tuple(int(b) for b in np.argwhere(~close)[0])
            return Outcome(case, precision, mode, False,
                           f"output {i}: {int((~close).sum())}/{close.size} values outside atol {atol:g} "
                           f"rtol {rtol:g}; at {list(where)} got {g64[where]!r}, expected {e64[where]!r}")
    return Outcome(case, precision, mode, True)


# --- the whole suite, and its report ------------------------------------------------------------

def conformance(root: Path, precisions: tuple[str, ...] = ("fp16", "fp32")) -> dict[str, Any]:
    """Harvest, add the definition cases, convert at each precision, run; the JSON-ready report."""
    from runtime.verify.mil_ops import OPS

    from .mil_definitions import definition_cases

    seconds: dict[str, float] = {}
    t = time.process_time()
    cases, left_out = harvest(OPS)
    seconds["harvest"] = time.process_time() - t
    definitions = definition_cases()
    outcomes: list[Outcome] = []
    for precision in precisions:
        t = time.process_time()
        convert(cases + definitions, root, set(OPS), precision)
        seconds[f"convert_{precision}"] = time.process_time() - t
        t = time.process_time()
        outcomes += run(cases + definitions, precision)
        seconds[f"run_{precision}"] = time.process_time() - t
    harvested_ops: set[str] = set()
    for case in cases:
        for conv in case.converted.values():
            harvested_ops |= conv.ops
    by_case: dict[int, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_case[id(o.case)].append(o)
    import coremltools as ct

    return {
        "coremltools": ct.__version__,
        "registered_ops": sorted(OPS),
        "ops_without_harvested_cases": sorted(set(OPS) - harvested_ops),
        "left_out": dict(sorted(left_out.items())),
        "cpu_seconds": {k: round(v, 2) for k, v in seconds.items()},
        "cases": [{
            "id": c.id, "source": c.source, "opset": OPSET_NAMES[c.opset], "xfail": c.xfail,
            "ops": {p: sorted(conv.ops) for p, conv in c.converted.items()},
            "dropped": c.dropped,
            "outcomes": [{"precision": o.precision, "mode": o.mode, "ok": o.ok, "detail": o.detail[:500]}
                         for o in by_case[id(c)]],
        } for c in cases + definitions],
    }


def table(report: dict[str, Any]) -> dict[str, Counter[str]]:
    """Per registered op: cases run (by source) and, per program precision and interpreter mode,
    passes and failures (`fp16/fp16 pass` is an fp16 program in fp16 emulation)."""
    out: dict[str, Counter[str]] = {op: Counter() for op in report["registered_ops"]}
    for c in report["cases"]:
        ops = set().union(*map(set, c["ops"].values())) if c["ops"] else set()
        for op in ops & set(out):
            out[op][c["source"]] += 1
        for o in c["outcomes"]:
            for op in set(c["ops"].get(o["precision"], ())) & set(out):
                out[op][f"{o['precision']}/{o['mode']} {'pass' if o['ok'] else 'fail'}"] += 1
    return out


def main() -> None:
    """`python -m tests.verify.mil_conformance`: run the suite and print the per-op table."""
    import json

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        report = conformance(Path(tmp))
        total = time.perf_counter() - t
    rows = table(report)
    cols = ["run_compare_builder", "value_inference", "definition", "fp16/fp16 pass", "fp16/fp32 pass",
            "fp32/fp32 pass", "fp16/fp16 fail", "fp16/fp32 fail", "fp32/fp32 fail"]
    print(f"{'op':32s}" + "".join(f"{c.replace('run_compare_builder', 'rcb').replace('value_inference', 'VI'):>16s}"
                                  for c in cols))
    for op, row in rows.items():
        print(f"{op:32s}" + "".join(f"{row.get(c, 0):>16d}" for c in cols))
    run_cases = [c for c in report["cases"] if c["outcomes"]]
    print(json.dumps({"cases run": len(run_cases), "by source": Counter(c["source"] for c in run_cases),
                      "outcomes": len([o for c in run_cases for o in c["outcomes"]]),
                      "failed": [(c["id"], o["precision"], o["mode"], o["detail"][:200]) for c in run_cases
                                 for o in c["outcomes"] if not o["ok"]],
                      "dropped": Counter(r.split(":")[0] for c in report["cases"] for r in c["dropped"].values()),
                      "left_out": report["left_out"], "ops without harvested cases": report["ops_without_harvested_cases"],
                      "cpu_seconds": report["cpu_seconds"], "wall_seconds": round(total, 1)}, indent=1, default=str))


if __name__ == "__main__":
    main()
