"""The job DAG: determinism, cycles, unknown needs, topological order and the shape of every plan."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from compiler.output.build import build_outputs, compile_one
from compiler.planning.graph import GraphError, build_graph, plan_jobs, topo_order
from compiler.planning.interface import functions
from compiler.planning.jobs import CODE_VERSIONS, KINDS, READS, WHY, Job, parity_lengths
from compiler.planning.params import PublishParams

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "specs").glob("*.yaml"))
SPEC_IDS = [p.name for p in SPECS]
_SCRIPT = Path(sys.executable).with_name("modelspec")
# the installed console script; the same entry point through this interpreter if it is missing
MODELSPEC = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from compiler.cli.main import main; main()"]

# Export jobs per shipped spec: one per package function (multifunction: one per prefill
# shape; enumerated: one for all shapes), plus decode when it is enabled.
EXPORTS = {
    "toy.yaml": {"export-prefill-64", "export-prefill-128", "export-prefill-256", "export-decode", "export-verify"},
    "toy-drafter.yaml": {"export-prefill-64", "export-prefill-128", "export-prefill-256", "export-decode"},
    "worker-9b.yaml": {"export-prefill-4096", "export-prefill-8192", "export-prefill-16384", "export-decode", "export-verify"},
    "drafter-4b.yaml": {"export-prefill-2048", "export-prefill-4096", "export-decode"},
    "judge-4b.yaml": {"export-prefill"},  # enumerated packaging, decode disabled
    "toy-judge.yaml": {"export-prefill"},
}


def _job(job_id: str, *needs: str) -> Job:
    return Job(job_id, "publish", tuple(needs), PublishParams(name="x", version="1.0.0", role="worker", special_tokens={}))


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def compiled():
    return {p.name: compile_one(str(p), [], str(REPO / "generated")) for p in SPECS}


# --- determinism ----------------------------------------------------------------------------


def test_compiling_twice_gives_the_same_bytes():
    paths = [str(p) for p in SPECS]
    first = build_outputs(paths, [], str(REPO / "generated"))
    second = build_outputs(paths, [], str(REPO / "generated"))
    assert first == second
    for files in first.values():
        for rel, text in files.items():
            assert str(REPO) not in text, f"{rel} contains the absolute repository path"


def test_two_processes_write_the_same_bytes_without_local_paths(tmp_path):
    """Separate interpreters, hash seeds, working folders and output roots: identical files."""
    trees = []
    for run, seed in (("a", "0"), ("b", "4242")):
        cwd = tmp_path / run
        cwd.mkdir()
        (cwd / "specs").symlink_to(REPO / "specs", target_is_directory=True)
        env = dict(os.environ, PYTHONHASHSEED=seed)
        proc = subprocess.run([*MODELSPEC, "compile", "--out", str(cwd / "out"), *(f"specs/{n}" for n in SPEC_IDS)],
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        tree = _tree(cwd / "out")
        assert tree, "nothing written"
        for rel, data in tree.items():
            text = data.decode("utf-8")
            for local in {str(tmp_path), os.path.realpath(tmp_path), str(cwd), str(REPO), os.path.realpath(REPO)}:
                assert local not in text, f"{rel} contains the local path {local}"
        trees.append(tree)
    assert trees[0].keys() == trees[1].keys()
    differ = sorted(k for k in trees[0] if trees[0][k] != trees[1][k])
    assert not differ, f"outputs differ between two runs: {differ}"


# --- graph construction -----------------------------------------------------------------------


def _is_cycle_of(message: str, names: list[str], needs: dict[str, str]) -> bool:
    """`message` names a closed walk over all `names` that follows needs in one direction."""
    tail = message.split(":", 1)[1].strip()
    walk = [w.strip() for w in tail.split("->")]
    if walk[0] != walk[-1] or sorted(walk[:-1]) != sorted(names):
        return False
    pairs = list(zip(walk, walk[1:]))
    return all(needs[a] == b for a, b in pairs) or all(needs[b] == a for a, b in pairs)


def test_cycle_is_rejected_and_named():
    # a needs b, b needs c, c needs a
    jobs = [_job("a", "b"), _job("b", "c"), _job("c", "a"), _job("d")]
    with pytest.raises(GraphError) as exc:
        plan_jobs(jobs)
    message = str(exc.value)
    assert "cycle" in message
    rotations = ["a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c",
                 "a -> c -> b -> a", "c -> b -> a -> c", "b -> a -> c -> b"]
    assert any(r in message for r in rotations), message
    assert _is_cycle_of(message, ["a", "b", "c"], {"a": "b", "b": "c", "c": "a"}), message
    assert "d" not in message.split(":", 1)[1]


def test_cycle_through_a_larger_graph_names_only_the_cycle():
    jobs = [_job("root"), _job("x", "root", "z"), _job("y", "x"), _job("z", "y"), _job("leaf", "z")]
    with pytest.raises(GraphError) as exc:
        plan_jobs(jobs)
    assert _is_cycle_of(str(exc.value), ["x", "y", "z"], {"x": "z", "y": "x", "z": "y"}), str(exc.value)


def test_self_need_is_a_cycle():
    with pytest.raises(GraphError, match=r"cycle: a -> a"):
        plan_jobs([_job("a", "a")])


def test_unknown_need_is_rejected():
    with pytest.raises(GraphError) as exc:
        plan_jobs([_job("a"), _job("b", "a", "ghost")])
    assert "'b'" in str(exc.value) and "'ghost'" in str(exc.value)


def test_duplicate_job_ids_are_rejected():
    with pytest.raises(GraphError, match="duplicate"):
        plan_jobs([_job("a"), _job("a")])


def test_plan_jobs_orders_by_needs_and_keeps_builder_order_for_ties():
    jobs = [_job("z"), _job("late", "m"), _job("m", "z"), _job("a")]
    planned = plan_jobs(jobs)
    assert [p.id for p in planned] == ["z", "m", "late", "a"]
    assert topo_order(jobs) == ["z", "m", "late", "a"]
    assert sorted(build_graph(jobs).edges) == [("m", "late"), ("z", "m")]


# --- every shipped plan -----------------------------------------------------------------------


def test_job_vocabularies_agree():
    assert set(WHY) == set(READS) == set(CODE_VERSIONS) == set(KINDS)


@pytest.mark.parametrize("spec", SPEC_IDS)
def test_topological_order_respects_needs(compiled, spec):
    c = compiled[spec]
    position = {j.id: i for i, j in enumerate(c.jobs)}
    assert len(position) == len(c.jobs), "duplicate job ids"
    for j in c.jobs:
        for need in j.job.needs:
            assert position[need] < position[j.id], f"{j.id} comes before its need {need}"
    assert set(c.graph.edges) == {(n, j.id) for j in c.jobs for n in j.job.needs}
    assert [j["id"] for j in c.plan()["jobs"]] == [j.id for j in c.jobs]


@pytest.mark.parametrize("spec", SPEC_IDS)
def test_job_kinds_are_known(compiled, spec):
    c = compiled[spec]
    assert {j.job.kind for j in c.jobs} <= set(KINDS)
    for j in c.jobs:
        assert j.id == j.job.kind or j.id.startswith(j.job.kind + "-"), j.id


@pytest.mark.parametrize("spec", SPEC_IDS)
def test_one_export_and_one_parity_job_per_function(compiled, spec):
    c = compiled[spec]
    s = c.spec
    exports = {j.id for j in c.jobs if j.job.kind == "export"}
    parity = {j.id for j in c.jobs if j.job.kind == "parity"}
    assert exports == EXPORTS[spec]
    # a parity job per function whose lengths export.parity runs (the toy: all; the others: the smallest)
    lengths = parity_lengths(s)
    runs = {f"export-{fn.name.replace('_', '-')}" for fn in functions(s) if fn.role != "prefill" or set(fn.seq_lens) & set(lengths)}
    assert parity == {e.replace("export-", "parity-", 1) for e in runs}
    assert lengths == (list(s.shapes.prefill) if s.export.parity.lengths == "all" else [min(s.shapes.prefill)])
    assert exports == {f"export-{fn.name.replace('_', '-')}" for fn in functions(s)}
    prefill_functions = len(s.shapes.prefill) if s.export.coreml.packaging == "multifunction" else 1
    verify = s.shapes.decode.enabled and s.shapes.decode.verify_k is not None
    assert len(exports) == prefill_functions + (1 if s.shapes.decode.enabled else 0) + (1 if verify else 0)
    assert ("export-verify" in exports) == verify
    assert ("export-decode" in exports) == s.shapes.decode.enabled
    assert set(c.job("convert").job.needs) == exports | {"tokenizer"}
    assert set(c.job("gates").job.needs) >= parity


@pytest.mark.parametrize("spec", SPEC_IDS)
def test_shipped_specs_export_the_qat_checkpoint(compiled, spec):
    c = compiled[spec]
    assert c.spec.training.qat.enabled
    for j in c.jobs:
        if j.job.kind == "export":
            assert j.job.needs == ("qat",)
        if j.job.kind in ("parity", "eval"):
            assert "qat" in j.job.needs and "train" not in j.job.needs


QAT_ON = "qat: {enabled: true, start_fraction: 0.8, lr_scale: 0.1}"


@pytest.fixture(scope="module")
def toy_without_qat(tmp_path_factory):
    root = tmp_path_factory.mktemp("qat-off")
    (root / "data").symlink_to(REPO / "specs" / "data", target_is_directory=True)
    text = (REPO / "specs" / "toy.yaml").read_text(encoding="utf-8")
    assert text.count(QAT_ON) == 1
    path = root / "toy.yaml"
    path.write_text(text.replace(QAT_ON, "qat: {enabled: false}"), encoding="utf-8")
    return compile_one(str(path), [])


def test_qat_on_exports_need_qat(compiled):
    c = compiled["toy.yaml"]
    ids = [j.id for j in c.jobs]
    assert "qat" in ids
    assert c.job("train").job.params.end_step == 320  # floor(400 * 0.8)
    assert (c.job("qat").job.params.start_step, c.job("qat").job.params.end_step) == (320, 400)
    assert all(c.job(e).job.needs == ("qat",) for e in EXPORTS["toy.yaml"])


def test_qat_off_exports_need_train(toy_without_qat):
    c = toy_without_qat
    ids = {j.id for j in c.jobs}
    assert "qat" not in ids
    assert not any("qat" in j.job.needs for j in c.jobs)
    assert {j.id for j in c.jobs if j.job.kind == "export"} == EXPORTS["toy.yaml"]
    for j in c.jobs:
        if j.job.kind == "export":
            assert j.job.needs == ("train",)
        if j.job.kind in ("parity", "eval"):
            assert "train" in j.job.needs
    assert (c.job("train").job.params.start_step, c.job("train").job.params.end_step) == (0, 400)
