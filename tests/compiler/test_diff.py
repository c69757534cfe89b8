"""`modelspec diff`: semantic changes, their classes, the jobs they invalidate, and the command.

The catalogue edits specs/toy.yaml and specs/worker-9b.yaml as text and states, for each edit,
the class of the whole diff and the jobs whose fingerprints change (plus added and removed
jobs). The expected sets are written out from the DAG

    tokenizer -> dataset -> teacher -> train -> qat -> export-* -> convert -> verify
    convert + qat -> parity-*;  qat + dataset + tokenizer -> eval
    convert + verify + parity-* + eval -> gates;  gates + convert + verify + parity-* + tokenizer -> publish

(the same one tests/compiler/test_invalidation.py spells out), so a wrong attribution or a
wrong contract rule fails here, not only a wrong fingerprint.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from compiler.review import diff as d
from compiler.review.sides import parse_side

REPO = Path(__file__).resolve().parents[2]
SPECS = {"toy": REPO / "specs" / "toy.yaml", "w9": REPO / "specs" / "worker-9b.yaml"}
LENGTHS = {"toy": (64, 128, 256), "w9": (4096, 8192, 16384)}


def plan_sets(lengths, generate: bool, parity_lengths=None) -> dict[str, frozenset[str]]:
    """`parity_lengths`: the prefill lengths with a parity job (export.parity.lengths; None: all)."""
    exports = frozenset({f"export-prefill-{t}" for t in lengths} | {"export-decode", "export-verify"})  # verify: decode.verify_k
    parity = frozenset({f"parity-prefill-{t}" for t in (parity_lengths or lengths)} | {"parity-decode", "parity-verify"})
    from_convert = frozenset({"convert", "verify", "gates", "publish"}) | parity
    package = exports | from_convert
    from_qat = frozenset({"qat", "eval"}) | package
    from_train = frozenset({"train"}) | from_qat
    from_teacher = frozenset({"teacher"} | ({"generate"} if generate else set())) | from_train  # the toy answers data.prompts
    from_dataset = frozenset({"dataset"}) | from_teacher
    return {"NONE": frozenset(), "GATES": frozenset({"gates", "publish"}), "PUBLISH": frozenset({"publish"}),
            "EXPORTS": exports, "PARITY": parity, "FROM_CONVERT": from_convert, "PACKAGE": package,
            "FROM_QAT": from_qat, "FROM_TRAIN": from_train, "FROM_TEACHER": from_teacher,
            "FROM_DATASET": from_dataset, "ALL": from_dataset | {"tokenizer"}}


# the toy runs parity at every length; worker-9b at export.parity's default, the smallest
T, W = plan_sets(LENGTHS["toy"], generate=True), plan_sets(LENGTHS["w9"], generate=False, parity_lengths=(4096,))
W_SMALLEST_MOVES = frozenset({"convert", "verify", "parity-decode", "parity-verify", "gates", "publish"})  # parity-prefill-4096 leaves or comes


@dataclass(frozen=True)
class Edit:
    id: str
    spec: str  # toy | w9
    replace: tuple[tuple[str, str], ...]
    cls: str  # the class of the whole diff
    invalidated: frozenset[str]  # jobs on both sides whose fingerprint changes
    paths: tuple[str, ...] = ()  # change paths the diff must report (a subset check)
    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    base: tuple[tuple[str, str], ...] = ()  # applied to both sides first
    version: str | None = "2.0.0"  # the new side's version for BREAKING_CONTRACT edits (None: leave it)
    unattributed: tuple[str, ...] = ()  # job kinds whose params changed although READS names no changed path


def R(old: str, new: str) -> tuple[str, str]:
    return (old, new)


TOY_GATE = '{metric: eval.json_validity, op: ">=", value: 0.90, min_n: 50}'
TOY_SIZE = '  - {metric: package.size_mb, op: "<=", value: 2.0}\n'
TOY_SPEED = '  - {metric: speed.ttft_p50_regression, op: "<=", value: 0.05, policy: warn}\n'

CATALOGUE = [
    # --- COSMETIC: no job reads it --------------------------------------------------------
    Edit("island-reason", "toy", (R('reason: "long-context softmax"', 'reason: "softmax loses mass in fp16"'),),
         "COSMETIC", T["NONE"], ("precision.islands[op=softmax].reason",)),
    Edit("deployment-memory", "toy", (R("memory_gb: 64,", "memory_gb: 32,"),),
         "COSMETIC", T["NONE"], ("deployment.profiles[name=m1-max-64g].memory_gb",)),
    Edit("deployment-profile-added", "toy",
         (R("    - {name: m1-max-64g, memory_gb: 64, sessions: 2, context: 256, chip: apple-m1-max}\n",
            "    - {name: m1-max-64g, memory_gb: 64, sessions: 2, context: 256, chip: apple-m1-max}\n"
            "    - {name: iphone-8g, memory_gb: 2, sessions: 1, context: 128}\n"),),
         "REVERIFY", T["GATES"], ("deployment.profiles[name=iphone-8g]",)),  # a speed report is due for it
    Edit("deployment-profiles-reordered", "w9",
         (R("    - {name: m1-max-64g, memory_gb: 48, sessions: 2, context: 16384, chip: apple-m1-max}\n", ""),
          R("    - {name: m3-pro-36g, memory_gb: 24, sessions: 1, context: 8192, chip: apple-m3-pro}\n",
            "    - {name: m3-pro-36g, memory_gb: 24, sessions: 1, context: 8192, chip: apple-m3-pro}\n"
            "    - {name: m1-max-64g, memory_gb: 48, sessions: 2, context: 16384, chip: apple-m1-max}\n")),
         "COSMETIC", W["NONE"], ("deployment.profiles",)),
    Edit("w9-deployment-context", "w9", (R("sessions: 1, context: 8192,", "sessions: 1, context: 4096,"),),
         "COSMETIC", W["NONE"], ("deployment.profiles[name=m3-pro-36g].context",)),
    # --- REVERIFY: gates, publish, verify ---------------------------------------------------
    Edit("gate-threshold", "toy", (R(TOY_GATE, TOY_GATE.replace("0.90", "0.85")),),
         "REVERIFY", T["GATES"], ('gates[metric=eval.json_validity,op=">="].value',)),
    Edit("gate-policy", "toy", (R(TOY_SIZE, TOY_SIZE.replace("2.0}", "2.0, policy: warn}")),),
         "REVERIFY", T["GATES"], ('gates[metric=package.size_mb,op="<="].policy',)),
    Edit("gate-added", "toy", (R(TOY_SPEED, TOY_SPEED + '  - {metric: parity.quant_snr_db, op: ">=", value: 40}\n'),),
         "REVERIFY", T["GATES"], ('gates[metric=parity.quant_snr_db,op=">="]',)),
    Edit("gate-removed", "toy", (R(TOY_SPEED, ""),), "REVERIFY", T["GATES"],
         ('gates[metric=speed.ttft_p50_regression,op="<="]',)),
    # gates are evaluated and reported in spec order: a reorder is a (REVERIFY) change, not nothing
    Edit("gates-reordered", "toy", (R(TOY_SPEED, ""), R("gates:\n", "gates:\n" + TOY_SPEED)),
         "REVERIFY", T["GATES"], ("gates",)),
    # the size budget is also checked by verify (VerifyParams.size_budget_mb), but READS["verify"]
    # does not list "gates": the diff reports verify as changed by no listed change (a READS gap)
    Edit("size-budget", "toy", (R(TOY_SIZE, TOY_SIZE.replace("2.0}", "3.0}")),),
         "REVERIFY", frozenset({"verify"}) | T["GATES"], ('gates[metric=package.size_mb,op="<="].value',),
         ),
    # disjoint rules: every module keeps its recipe; verify names the rule behind each module
    Edit("quant-rules-reordered", "toy",
         (R('      - {match: "embed_tokens", dtype: none}\n', ""),
          R('      - {match: "lm_head", dtype: int8, granularity: per_channel}\n',
            '      - {match: "lm_head", dtype: int8, granularity: per_channel}\n      - {match: "embed_tokens", dtype: none}\n')),
         "REVERIFY", frozenset({"verify"}) | T["GATES"], ("quantization.weights.rules",)),
    Edit("w9-gate-threshold", "w9", (R("value: 0.98, min_n: 500}", "value: 0.97, min_n: 500}"),),
         "REVERIFY", W["GATES"], ('gates[metric=eval.json_validity,op=">="].value',)),
    # --- REEXPORT: export, convert --------------------------------------------------------
    Edit("name", "toy", (R("name: toy-worker", "name: toy-worker-v2"),), "REEXPORT", T["FROM_CONVERT"], ("name",)),
    # the package carries the spec's description and version as its standard metadata
    Edit("description", "toy", (R("description: Tiny tool-calling", "description: A tiny tool-calling"),),
         "REEXPORT", T["FROM_CONVERT"], ("description",)),
    Edit("version-minor-bump", "toy", (R("version: 1.0.0", "version: 1.1.0"),), "REEXPORT", T["FROM_CONVERT"], ("version",)),
    Edit("compute-units", "toy", (R("compute_units: all", "compute_units: cpu_and_ne"),), "REEXPORT", T["FROM_CONVERT"]),
    Edit("coreml-target", "toy", (R("target: macOS15", "target: iOS18"),), "REEXPORT", T["FROM_CONVERT"],
         ("export.coreml.target",)),
    Edit("island-removed", "toy", (R('    - {module: "norm", reason: "final norm"}\n', ""),),
         "REEXPORT", T["FROM_CONVERT"], ("precision.islands[module=norm]",)),
    Edit("island-added", "toy",
         (R("    - {op: softmax, reason", "    - {op: exp, reason: \"exp overflows\"}\n    - {op: softmax, reason"),),
         "REEXPORT", T["FROM_CONVERT"], ("precision.islands[op=exp]",)),
    # a new prefill shape is a compatible addition: one more export and parity job, the others cached
    Edit("prefill-shape-added", "toy", (R("prefill: [64, 128, 256]", "prefill: [32, 64, 128, 256]"),),
         "REEXPORT", T["FROM_CONVERT"], ("shapes.prefill[32]",),
         added=frozenset({"export-prefill-32", "parity-prefill-32"})),
    # a new smallest length: parity moves to it (export.parity.lengths: smallest)
    Edit("w9-prefill-shape-added", "w9", (R("prefill: [4096, 8192, 16384]", "prefill: [2048, 4096, 8192, 16384]"),),
         "REEXPORT", W_SMALLEST_MOVES, ("shapes.prefill[2048]",),
         added=frozenset({"export-prefill-2048", "parity-prefill-2048"}), removed=frozenset({"parity-prefill-4096"})),
    # the cache is a CoreML state: its length is not something a consumer feeds
    Edit("decode-cache-len", "toy", (R("decode: {enabled: true, cache_len: 256,", "decode: {enabled: true, cache_len: 512,"),),
         "REEXPORT", T["PACKAGE"], ("shapes.decode.cache_len",), base=(R("max_context: 256", "max_context: 512"),)),
    # --- RETRAIN: tokenizer, dataset, teacher, train, qat -----------------------------------
    Edit("learning-rate", "toy", (R("lr: 3.0e-3,", "lr: 2.0e-3,"),), "RETRAIN", T["FROM_TRAIN"], ("training.optimizer.lr",)),
    Edit("training-seed", "toy", (R("seed: 1234", "seed: 4321"),), "RETRAIN", T["FROM_TEACHER"], ("training.seed",)),
    Edit("qat-lr-scale", "toy", (R("lr_scale: 0.1", "lr_scale: 0.2"),), "RETRAIN", T["FROM_QAT"]),
    Edit("teacher-steps", "toy", (R("  steps: 300\n", "  steps: 200\n"),), "RETRAIN", T["FROM_TEACHER"], ("teacher.steps",)),
    Edit("loss-weight", "toy", (R("tool_name: {weight: 0.2}", "tool_name: {weight: 0.3}"),), "RETRAIN", T["FROM_TRAIN"],
         ("training.losses.tool_name.weight",)),
    Edit("checkpoint-every", "toy", (R("checkpoint_every: 100", "checkpoint_every: 50"),), "RETRAIN", T["FROM_TRAIN"]),
    Edit("curriculum", "toy", (R("{until_step: 200, seq_len: 64}", "{until_step: 100, seq_len: 64}"),), "RETRAIN",
         T["FROM_TRAIN"], ("training.curriculum[0].until_step",)),
    Edit("quant-rule-dtype", "toy", (R('{match: "layers.*.mlp.*", dtype: int4,', '{match: "layers.*.mlp.*", dtype: uint4,'),),
         "RETRAIN", T["FROM_QAT"], ('quantization.weights.rules[match=layers.*.mlp.*].dtype',)),
    Edit("max-context", "toy", (R("max_context: 256", "max_context: 512"),), "RETRAIN", T["FROM_TEACHER"]),
    Edit("tokenizer-vocab-size", "toy", (R("corpus: data/toy/corpus.txt, vocab_size: 512}", "corpus: data/toy/corpus.txt, vocab_size: 500}"),),
         "RETRAIN", T["ALL"], ("tokenizer.source.vocab_size",)),
    Edit("data-path", "toy", (R("train: data/toy/train.jsonl", "train: s3://toy-bucket/v2/train.jsonl"),),
         "RETRAIN", T["FROM_DATASET"], ("data.train",)),
    Edit("w9-teacher-path", "w9", (R("path: /mnt/models/teachers/worker-teacher-70b", "path: /mnt/models/teachers/worker-teacher-v2"),),
         "RETRAIN", W["FROM_TEACHER"], ("teacher.path",)),
    Edit("w9-teacher-top-k", "w9", (R("top_k: 32", "top_k: 64"),), "RETRAIN", W["FROM_TEACHER"]),
    Edit("w9-nproc", "w9", (R("nproc: 8,", "nproc: 16,"),), "RETRAIN", W["FROM_TRAIN"], ("training.resources.nproc",)),
    Edit("w9-quant-default", "w9", (R("default: {dtype: int4, granularity: per_block, block_size: 32}", "default: {dtype: int8, granularity: per_channel}"),),
         "RETRAIN", W["FROM_QAT"], ("quantization.weights.default.dtype",)),
    # with the cache in states, a shallower model keeps every input and output a consumer sees;
    # the local (hf_local) teacher does not depend on the student's architecture
    Edit("w9-n-layers", "w9", (R("n_layers: 36", "n_layers: 32"),), "RETRAIN", W["FROM_TRAIN"], ("architecture.n_layers",)),
    Edit("special-token-added", "toy",
         (R('    tool_result_end: {text: "</tool_result>", id: 8}\n',
            '    tool_result_end: {text: "</tool_result>", id: 8}\n    sep: {text: "<sep>", id: 9}\n'),),
         "RETRAIN", T["ALL"], ("tokenizer.special_tokens.sep",)),
    # --- BREAKING_CONTRACT: what a consumer of the package sees -----------------------------
    Edit("special-token-id", "toy", (R('think_start: {text: "<think>", id: 3}', 'think_start: {text: "<think>", id: 9}'),),
         "BREAKING_CONTRACT", T["ALL"], ("tokenizer.special_tokens.think_start.id",)),
    Edit("special-token-text", "toy", (R('think_end: {text: "</think>", id: 4}', 'think_end: {text: "<end_think>", id: 4}'),),
         "BREAKING_CONTRACT", T["ALL"], ("tokenizer.special_tokens.think_end.text",)),
    Edit("w9-special-token-id", "w9", (R("think_start: {text: \"<think>\", id: 32000}", "think_start: {text: \"<think>\", id: 32010}"),),
         "BREAKING_CONTRACT", W["ALL"]),
    Edit("vocab-size", "toy", (R("  vocab_size: 512\n", "  vocab_size: 1024\n"),), "BREAKING_CONTRACT", T["ALL"],
         ("architecture.vocab_size",)),
    Edit("prefill-shape-removed", "toy", (R("prefill: [64, 128, 256]", "prefill: [64, 128]"),), "BREAKING_CONTRACT",
         T["FROM_DATASET"] - {"export-prefill-256", "parity-prefill-256"}, ("shapes.prefill[256]",),
         removed=frozenset({"export-prefill-256", "parity-prefill-256"})),
    Edit("kv-cache-dtype", "toy", (R("kv_cache: fp16", "kv_cache: fp32"),), "BREAKING_CONTRACT", T["PACKAGE"],
         ("quantization.kv_cache",)),
    Edit("precision-compute", "toy", (R("  compute: fp16\n", "  compute: fp32\n"),), "BREAKING_CONTRACT", T["PACKAGE"]),
    Edit("decode-cache-explicit", "toy", (R("decode_cache: state", "decode_cache: explicit"),), "BREAKING_CONTRACT",
         T["PACKAGE"], ("export.coreml.decode_cache",)),
    Edit("packaging-enumerated", "toy", (R("packaging: multifunction", "packaging: enumerated"),), "BREAKING_CONTRACT",
         frozenset({"convert", "verify", "parity-decode", "parity-verify", "gates", "publish"}), ("export.coreml.packaging",),
         added=frozenset({"export-prefill", "parity-prefill"}),
         removed=frozenset({f"{k}-prefill-{t}" for k in ("export", "parity") for t in (64, 128, 256)})),
    # (the curriculum trains on every shipped length, so the removed one is added in the base)
    Edit("w9-prefill-removed", "w9", (R("prefill: [2048, 4096, 8192, 16384]", "prefill: [4096, 8192, 16384]"),),
         "BREAKING_CONTRACT", W_SMALLEST_MOVES, ("shapes.prefill[2048]",),
         removed=frozenset({"export-prefill-2048", "parity-prefill-2048"}), added=frozenset({"parity-prefill-4096"}),
         base=(R("prefill: [4096, 8192, 16384]", "prefill: [2048, 4096, 8192, 16384]"),)),
]

# The same spec written differently: no change at all.
FORMATTING = {
    "comments": (R("# The tiny tool-calling worker", "# A different comment.\n# The tiny tool-calling worker"),
                 R("  vocab_size: 512\n", "  vocab_size: 512    # trailing\n"),
                 R("    rules:                    # first match wins; a rule that matches nothing is an error\n", "    rules:\n")),
    "key-order": (R("version: 1.0.0\nrole: worker\n", "role: worker\nversion: 1.0.0\n"),
                  R("  seed: 1234\n  steps: 400\n", "  steps: 400\n  seed: 1234\n"),
                  R('    pad: {text: "<pad>", id: 0}\n    bos: {text: "<s>", id: 1}\n',
                    '    bos: {id: 1, text: "<s>"}\n    pad: {text: "<pad>", id: 0}\n')),
    "flow-vs-block": (R("  mlp: {kind: swiglu, hidden: 352}\n", "  mlp:\n    kind: swiglu\n    hidden: 352\n"),
                      R("  prefill: [64, 128, 256]\n", "  prefill:\n    - 64\n    - 128\n    - 256\n"),
                      R("    - {name: m1-max-64g, memory_gb: 64, sessions: 2, context: 256, chip: apple-m1-max}\n",
                        "    - name: m1-max-64g\n      memory_gb: 64\n      sessions: 2\n      context: 256\n      chip: apple-m1-max\n")),
    "quoting": (R("name: toy-worker\n", "name: 'toy-worker'\n"), R("version: 1.0.0\n", 'version: "1.0.0"\n'),
                R('{match: "embed_tokens", dtype: none}', "{match: embed_tokens, dtype: 'none'}"),
                R("{op: softmax,", '{op: "softmax",')),
    "number-spelling": (R("lr: 3.0e-3,", "lr: 0.003,"), R("memory_gb: 64,", "memory_gb: 64.0,"),
                        R("theta: 10000.0,", "theta: 1.0e4,")),
    "all-at-once": (),  # filled below
}
FORMATTING["all-at-once"] = tuple(r for k in ("comments", "key-order", "flow-vs-block", "quoting") for r in FORMATTING[k])


def apply(text: str, replacements) -> str:
    for old, new in replacements:
        assert text.count(old) == 1, f"edit text must occur exactly once: {old!r}"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("diff")
    (root / "data").symlink_to(REPO / "specs" / "data", target_is_directory=True)
    return root


def diff_texts(workdir: Path, old: str, new: str, stem: str) -> dict:
    a, b = workdir / f"{stem}-old.yaml", workdir / f"{stem}-new.yaml"
    a.write_text(old, encoding="utf-8")
    b.write_text(new, encoding="utf-8")
    return d.diff_sides(parse_side(str(a)), parse_side(str(b)))


def edit_texts(edit: Edit) -> tuple[str, str]:
    before = apply(SPECS[edit.spec].read_text(encoding="utf-8"), edit.base)
    after = apply(before, edit.replace)
    if edit.cls == "BREAKING_CONTRACT" and edit.version:
        after = apply(after, (R("version: 1.0.0", f"version: {edit.version}"),))
    return before, after


def test_catalogue_is_large_and_covers_every_class():
    assert len(CATALOGUE) >= 30
    assert len({e.id for e in CATALOGUE}) == len(CATALOGUE)
    assert {e.cls for e in CATALOGUE} == set(d.CLASSES)
    assert {e.spec for e in CATALOGUE} == {"toy", "w9"}


@pytest.mark.parametrize("edit", CATALOGUE, ids=[e.id for e in CATALOGUE])
def test_catalogue(workdir, edit: Edit):
    before, after = edit_texts(edit)
    assert before != after
    r = diff_texts(workdir, before, after, edit.id)
    assert r["class"] == edit.cls, json.dumps(r["changes"], indent=1)
    j = r["jobs"]
    assert set(j["invalidated"]) == set(edit.invalidated), (
        f"unexpected {sorted(set(j['invalidated']) - edit.invalidated)}, missing {sorted(edit.invalidated - set(j['invalidated']))}")
    assert (set(j["added"]), set(j["removed"])) == (set(edit.added), set(edit.removed))
    assert set(j["cached"]) | set(j["invalidated"]) | set(j["added"]) == {x for x in j["cached"] + j["invalidated"] + j["added"]}
    paths = {c["path"] for c in r["changes"]}
    assert set(edit.paths) <= paths, f"reported paths: {sorted(paths)}"
    # the diff's class is its worst change's, and every change has one; no job change goes unexplained
    assert r["changes"] and r["class"] == d.worst(c["class"] for c in r["changes"])
    assert j["unattributed_kinds"] == list(edit.unattributed)
    assert r["errors"] == []  # breaking edits bump the major version
    assert (r["class"] == "BREAKING_CONTRACT") == bool(r["contracts"]["breaking"])


@pytest.mark.parametrize("name", list(FORMATTING))
def test_formatting_is_no_change(workdir, name):
    text = SPECS["toy"].read_text(encoding="utf-8")
    new = apply(text, FORMATTING[name])
    assert new != text
    r = diff_texts(workdir, text, new, f"fmt-{name}")
    assert r["changes"] == [] and r["class"] == "COSMETIC"
    assert r["jobs"]["invalidated"] == [] and r["jobs"]["added"] == [] and r["jobs"]["removed"] == []
    assert r["contracts"]["changed"] == {}
    assert r["old"]["spec_hash"] == r["new"]["spec_hash"]


def test_identity_lists_match_by_identity_not_index(workdir):
    """Inserting a gate first changes no other gate's path; removing a shape names the shape."""
    text = SPECS["toy"].read_text(encoding="utf-8")
    new = apply(text, (R("gates:\n", 'gates:\n  - {metric: parity.quant_snr_db, op: ">=", value: 40}\n'),))
    r = diff_texts(workdir, text, new, "identity")
    kinds = {(c["path"], c["kind"]) for c in r["changes"]}
    assert ('gates[metric=parity.quant_snr_db,op=">="]', "added") in kinds
    assert ("gates", "reordered") not in kinds  # the common gates keep their relative order
    assert all(not c["path"].startswith("gates[metric=parity.snr_db") for c in r["changes"])


def test_derived_deltas(workdir):
    text = SPECS["w9"].read_text(encoding="utf-8")
    r = diff_texts(workdir, text, apply(text, (R("n_layers: 36", "n_layers: 32"),)), "derived")
    dv = r["derived"]
    assert dv["parameters"]["delta"] < 0 and dv["parameters"]["new"] == dv["parameters"]["old"] + dv["parameters"]["delta"]
    assert dv["kv_cache_bytes_per_token"]["new"] * 36 == dv["kv_cache_bytes_per_token"]["old"] * 32
    assert dv["package_size_mib"]["delta"] < 0 and dv["training_flops"]["delta"] < 0
    assert set(dv["profiles"]) == {"m1-max-64g", "m3-pro-36g"}
    assert all(p["total_bytes"]["delta"] < 0 for p in dv["profiles"].values())
    assert "contracts/budget.json" in r["contracts"]["changed"]


def test_version_rule():
    assert d.version_rule("1.2.3", "2.0.0")["major_bump"]
    assert not d.version_rule("1.2.3", "1.3.0")["major_bump"]
    assert d.version_rule("1.2.3", "1.3.0")["required"] == "2.0.0"
    assert d.version_rule("0.3.1", "0.4.0")["major_bump"]  # 0.y.z: a minor bump may break
    assert not d.version_rule("0.3.1", "0.3.2")["major_bump"]


# --- the command -------------------------------------------------------------------------



def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false", *args],
                          cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """A git repository with specs/toy.yaml and specs/worker-9b.yaml committed (data linked)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "data").symlink_to(REPO / "specs" / "data", target_is_directory=True)
    for name in ("toy.yaml", "worker-9b.yaml"):
        shutil.copy(REPO / "specs" / name, specs / name)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "specs/toy.yaml", "specs/worker-9b.yaml")
    _git(tmp_path, "commit", "-qm", "base")
    return tmp_path


def _edit(path: Path, *replacements) -> None:
    path.write_text(apply(path.read_text(encoding="utf-8"), replacements), encoding="utf-8")


def test_ref_path(run, repo):
    _edit(repo / "specs" / "toy.yaml", R("lr: 3.0e-3,", "lr: 2.0e-3,"))
    code, out, err = run("diff", "HEAD:specs/toy.yaml", "specs/toy.yaml", "--format", "json", cwd=repo)
    assert code == 0, err
    r = json.loads(out)
    assert r["class"] == "RETRAIN" and r["old"]["source"] == "HEAD:specs/toy.yaml"
    assert [c["path"] for c in r["changes"]] == ["training.optimizer.lr"]
    # from a subfolder, the path is relative to the current folder (data still resolves)
    code, out, _ = run("diff", "HEAD:toy.yaml", "toy.yaml", "--format", "json", cwd=repo / "specs")
    assert code == 0 and json.loads(out)["class"] == "RETRAIN"


def test_ref_path_errors(run, repo):
    code, out, err = run("diff", "no-such-ref:specs/toy.yaml", "specs/toy.yaml", cwd=repo)
    assert code == 2 and out == "" and "unknown git ref 'no-such-ref'" in err
    code, out, err = run("diff", "HEAD:specs/missing.yaml", "specs/toy.yaml", cwd=repo)
    assert code == 2 and out == "" and "does not exist at HEAD" in err
    code, out, err = run("diff", "--", "--output=/tmp/x:specs/toy.yaml", "specs/toy.yaml", cwd=repo)
    assert code == 2 and "is not a git ref" in err and not Path("/tmp/x").exists()


def test_invalid_spec_exits_2_with_position(run, repo):
    toy = repo / "specs" / "toy.yaml"
    _edit(toy, R("n_kv_heads: 2\n", "n_kv_heads: 3\n"))
    line = next(i for i, s in enumerate(toy.read_text().splitlines(), 1) if "n_kv_heads: 3" in s)
    code, out, err = run("diff", "HEAD:specs/toy.yaml", "specs/toy.yaml", cwd=repo)
    assert code == 2 and out == ""
    assert f"specs/toy.yaml:{line}:" in err and "nothing written" in err
    _git(repo, "commit", "-qam", "bad")  # now the REF side is the invalid one, reported as REF:path:line:col
    _edit(toy, R("n_kv_heads: 3\n", "n_kv_heads: 2\n"))
    code, out, err = run("diff", "HEAD:specs/toy.yaml", "specs/toy.yaml", cwd=repo)
    assert code == 2 and out == "" and f"HEAD:specs/toy.yaml:{line}:" in err


def test_base(run, repo):
    _edit(repo / "specs" / "toy.yaml", R("lr: 3.0e-3,", "lr: 2.0e-3,"))
    _edit(repo / "specs" / "worker-9b.yaml", R("# The 9B", "# Reworded: the 9B"))  # text changed, nothing else
    shutil.copy(REPO / "specs" / "judge-4b.yaml", repo / "specs" / "judge-4b.yaml")  # not in the base
    code, out, err = run("diff", "--base", "HEAD", "--format", "json", cwd=repo)
    assert code == 0, err
    r = json.loads(out)
    assert r["class"] == "RETRAIN"
    assert {s["new"]["source"]: s["class"] for s in r["specs"]} == {"specs/toy.yaml": "RETRAIN", "specs/worker-9b.yaml": "COSMETIC"}
    assert r["new_specs"] == ["specs/judge-4b.yaml"]
    code, out, _ = run("diff", "--base", "HEAD", "specs/worker-9b.yaml", cwd=repo)
    assert code == 0 and "no semantic change" in out and "toy-worker" not in out
    code, _, err = run("diff", "--base", "HEAD", "--fail-on", "retrain", cwd=repo)
    assert code == 1 and "RETRAIN" in err
    (repo / "specs" / "worker-9b.yaml").unlink()
    code, out, _ = run("diff", "--base", "HEAD", "specs/worker-9b.yaml", "--format", "json", cwd=repo)
    assert code == 0 and json.loads(out)["removed_specs"] == ["specs/worker-9b.yaml"]
    code, out, err = run("diff", "--base", "HEAD", "specs/typo.yaml", cwd=repo)
    assert code == 2 and out == "" and "no such spec" in err
    code, _, err = run("diff", "--base", "no-such-ref", cwd=repo)
    assert code == 2 and "unknown git ref" in err


MAJOR = R("version: 1.0.0", "version: 2.0.0")


@pytest.mark.parametrize("fail_on, replacements, code", [
    ("retrain", [R("lr: 3.0e-3,", "lr: 2.0e-3,")], 1),
    ("reexport", [R("lr: 3.0e-3,", "lr: 2.0e-3,")], 1),
    ("breaking", [R("lr: 3.0e-3,", "lr: 2.0e-3,")], 0),
    ("retrain", [R("compute_units: all", "compute_units: cpu_only")], 0),
    ("reexport", [R("compute_units: all", "compute_units: cpu_only")], 1),
    ("reverify", [R("memory_gb: 64,", "memory_gb: 32,")], 0),
    ("reverify", [MAJOR], 1),  # convert (the package version) and publish read the version
    ("breaking", [R("kv_cache: fp16", "kv_cache: fp32"), MAJOR], 1),
])
def test_fail_on(run, repo, fail_on, replacements, code):
    toy = repo / "specs" / "toy.yaml"
    _edit(toy, *replacements)
    got, out, err = run("diff", "HEAD:specs/toy.yaml", "specs/toy.yaml", "--fail-on", fail_on, cwd=repo)
    assert got == code, out + err
    assert out.startswith("toy-worker")  # the report is printed either way


def test_breaking_change_needs_a_major_bump(run, repo):
    toy = repo / "specs" / "toy.yaml"
    _edit(toy, R('think_start: {text: "<think>", id: 3}', 'think_start: {text: "<think>", id: 9}'))
    code, out, err = run("diff", "HEAD:specs/toy.yaml", "specs/toy.yaml", "--format", "json", cwd=repo)
    r = json.loads(out)
    assert code == 1 and r["class"] == "BREAKING_CONTRACT"
    assert r["errors"] and "major version bump" in r["errors"][0] and "2.0.0" in err
    code, out, _ = run("diff", "HEAD:specs/toy.yaml", "specs/toy.yaml", "--allow-unversioned", cwd=repo)
    assert code == 0 and "BREAKING_CONTRACT" in out and "error:" not in out
    _edit(toy, R("version: 1.0.0", "version: 1.1.0"))
    assert run("diff", "HEAD:specs/toy.yaml", "specs/toy.yaml", cwd=repo)[0] == 1  # a minor bump is not enough
    _edit(toy, R("version: 1.1.0", "version: 2.0.0"))
    code, out, _ = run("diff", "HEAD:specs/toy.yaml", "specs/toy.yaml", cwd=repo)
    assert code == 0 and "BREAKING_CONTRACT" in out


def test_formats(run, repo):
    _edit(repo / "specs" / "toy.yaml", R("kv_cache: fp16", "kv_cache: fp32"), R("memory_gb: 64,", "memory_gb: 32,"),
          R("version: 1.0.0", "version: 2.0.0"))
    args = ("diff", "HEAD:specs/toy.yaml", "specs/toy.yaml")
    code, out, _ = run(*args, "--format", "json", cwd=repo)
    r = json.loads(out)
    assert code == 0
    assert {"class", "changes", "jobs", "contracts", "derived"} <= set(r)
    assert r["class"] in d.CLASSES
    for c in r["changes"]:
        assert {"path", "old", "new", "class"} <= set(c) and c["class"] in d.CLASSES
    assert {"invalidated", "cached"} <= set(r["jobs"])
    assert all(isinstance(x, str) for x in r["jobs"]["invalidated"] + r["jobs"]["cached"])
    assert "contracts/io.json" in r["contracts"]["changed"]
    assert r["contracts"]["changed"]["contracts/io.json"].startswith("--- a/contracts/io.json\n+++ b/contracts/io.json\n")
    assert {"parameters", "package_size_mib", "kv_cache_bytes_per_token", "training_flops", "profiles"} <= set(r["derived"])
    assert r["derived"]["kv_cache_bytes_per_token"]["delta"] == r["derived"]["kv_cache_bytes_per_token"]["old"]

    code, out, _ = run(*args, "--format", "markdown", cwd=repo)
    assert code == 0
    assert "| class | path | old | new | invalidates |" in out and "|---|" in out
    assert "<details>" in out and "</details>" in out and "```diff" in out
    assert "`quantization.kv_cache`" in out and "BREAKING_CONTRACT" in out

    code, out, _ = run(*args, cwd=repo)
    assert code == 0
    assert "class: BREAKING_CONTRACT" in out and "quantization.kv_cache: fp16 -> fp32" in out
    assert "jobs:" in out and "--- a/contracts/io.json" in out and "kv cache bytes per token" in out


def test_bad_arguments(run):
    assert run("diff", "specs/toy.yaml")[0] == 2
    code, _, err = run("diff", "specs/toy.yaml", "specs/toy.yaml", "--format", "yaml")
    assert code == 2 and "unknown format" in err
    code, _, err = run("diff", "specs/toy.yaml", "specs/toy.yaml", "--fail-on", "everything")
    assert code == 2 and "unknown class" in err
    code, out, _ = run("diff", "specs/toy.yaml", "specs/toy.yaml")
    assert code == 0 and "no semantic change" in out


def test_diff_imports_nothing_heavy():
    code = ("import sys; from compiler.cli.main import main; sys.argv=['modelspec','diff','specs/toy.yaml','specs/worker-9b.yaml',"
            "'--allow-unversioned'];\ntry: main()\nexcept SystemExit: pass\n"
            "bad=[m for m in ('torch','transformers','coremltools','runtime','networkx') if m in sys.modules]; assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
