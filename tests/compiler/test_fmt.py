"""`modelspec fmt`: canonical layout, idempotence, comments kept, --check, refusals."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest

from compiler.authoring import yaml_emit as fmt_mod  # the layout: what the refusal tests patch
from compiler.core.canonical import canonical_json
from compiler.core.errors import SpecError
from compiler.authoring.fmt import FmtRefused, format_text
from compiler.authoring.yaml_tree import parse_tree
from compiler.reading.loader import load_text

REPO = Path(__file__).resolve().parents[2]
SPECS_DIR = REPO / "specs"
SPECS = sorted(SPECS_DIR.glob("*.yaml"))
TOY = (SPECS_DIR / "toy.yaml").read_text(encoding="utf-8")


def fmt(text: str) -> str:
    return format_text(text, "t.yaml", str(SPECS_DIR))


def comments_of(text: str) -> list[str]:
    return parse_tree(text).comments


def without_comments(text: str) -> str:
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    return "\n".join(re.sub(r"\s+#\s.*$", "", ln) for ln in lines) + "\n"


def dump(data, **indent) -> str:
    import ruamel.yaml

    y = ruamel.yaml.YAML()
    y.width = 4096
    if indent:
        y.indent(**indent)
    out = io.StringIO()
    y.dump(data, out)
    return out.getvalue()


def reverse_keys(value, free: bool = False):
    """Every mapping's keys reversed, except a free-form map's (special tokens keep the author's order)."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(value, dict):
        keys = list(value) if free else list(reversed(list(value)))
        return CommentedMap((k, reverse_keys(value[k], k == "special_tokens")) for k in keys)
    if isinstance(value, list):
        return CommentedSeq(reverse_keys(v) for v in value)
    return value


def blockify(value):
    if isinstance(value, (dict, list)):
        value.fa.set_block_style()
        for v in value.values() if isinstance(value, dict) else value:
            blockify(v)
    return value




@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "data").symlink_to(SPECS_DIR / "data", target_is_directory=True)
    return tmp_path


# ---------------------------------------------------------------- the shipped specs


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_shipped_specs_are_canonical_and_idempotent(spec):
    text = spec.read_text(encoding="utf-8")
    once = fmt(text)
    assert once == text, "the shipped spec is not fmt-clean"
    assert fmt(once) == once
    assert comments_of(once) == comments_of(text)
    assert comments_of(text), "every shipped spec has comments"


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_shipped_specs_survive_relayout(spec):
    """Re-indented, all-block, key-reversed copies come back to the shipped text (minus comments where lost)."""
    import ruamel.yaml

    text = spec.read_text(encoding="utf-8")
    rt = ruamel.yaml.YAML().load(text)
    assert fmt(dump(rt, mapping=4, sequence=6, offset=4)) == text  # odd indentation, comments kept by ruamel
    bare = without_comments(text)
    data = ruamel.yaml.YAML().load(bare)  # round-trip types keep the numbers' spelling
    block = dump(blockify(data))
    assert "{" not in block and "[" not in block
    assert fmt(block) == bare
    assert fmt(dump(reverse_keys(data))) == bare


# ---------------------------------------------------------------- messy inputs


MESSY = """\
# header comment
version: 1.0.0
modelspec: 1
name: 'toy-worker'
description: >-
  Tiny tool-calling worker that runs
  end to end on a laptop CPU.
role: "worker"



architecture:
    # about the width
    d_model: 128   # width
    vocab_size: 0x200
    n_layers: 2
    n_heads: 4
    n_kv_heads: 2
    d_head: 32
    mlp:
        hidden: 352
        kind: swiglu
    norm: {eps: 1.0e-6, kind: rmsnorm}
    rope: {theta: 10000.0,
           scaling: none}   # no scaling
    max_context: 256
    tie_embeddings: false
"""


def messy_toy() -> str:
    """MESSY's head plus the rest of the toy with a few rows rewritten."""
    rest = TOY[TOY.index("\ntokenizer:"):]
    rest = rest.replace("  curriculum:\n    - {until_step: 200, seq_len: 64}\n    - {until_step: 400, seq_len: 128}\n",
                        "  curriculum: [{until_step: 200, seq_len: 64}, {until_step: 400, seq_len: 128}]\n")
    rest = rest.replace('      - {match: "layers.*.mlp.*", dtype: int4, granularity: per_block, block_size: 32}\n',
                        "      # int4 MLPs\n      - dtype: int4\n        match: layers.*.mlp.*\n"
                        "        granularity: per_block\n        block_size: 32\n")
    rest = rest.replace("  prefill: [64, 128, 256]\n", "  prefill:\n  - 64\n  - 128\n  - 256\n")
    rest = rest.replace('{metric: package.size_mb, op: "<=", value: 2.0}', "{value: 2.0, op: '<=', metric: package.size_mb}")
    return MESSY + rest + "# trailing comment\n"


def test_messy_input_formats_to_canonical_form():
    out = fmt(messy_toy())
    head = out[: out.index("\ntokenizer:")]
    assert head == """\
# header comment
modelspec: 1
name: toy-worker
version: 1.0.0
role: worker
description: Tiny tool-calling worker that runs end to end on a laptop CPU.

architecture:
  vocab_size: 512
  # about the width
  d_model: 128     # width
  n_layers: 2
  n_heads: 4
  n_kv_heads: 2
  d_head: 32
  mlp: {kind: swiglu, hidden: 352}
  norm: {kind: rmsnorm, eps: 1.0e-6}
  rope: {theta: 10000.0, scaling: none}  # no scaling
  max_context: 256
  tie_embeddings: false
"""
    tail = TOY[TOY.index("\ntokenizer:"):].replace(
        '      - {match: "layers.*.mlp.*"', '      # int4 MLPs\n      - {match: "layers.*.mlp.*"')
    assert out[out.index("\ntokenizer:"):] == tail + "# trailing comment\n"
    assert fmt(out) == out
    assert sorted(comments_of(out)) == sorted(comments_of(messy_toy()))


def test_messy_input_means_the_same():
    messy = messy_toy()
    out = fmt(messy)
    assert canonical_json(load_text(out, "a").data) == canonical_json(load_text(messy, "b").data)


def test_comments_move_with_their_keys():
    text = TOY.replace("  vocab_size: 512\n  d_model: 128\n", "  # the width\n  d_model: 128  # residual\n  vocab_size: 512  # tokens\n")
    out = fmt(text)
    assert "  vocab_size: 512  # tokens\n  # the width\n  d_model: 128  # residual\n" in out
    assert fmt(out) == out


def test_comments_inside_a_flow_row_are_hoisted():
    text = TOY.replace("  mlp: {kind: swiglu, hidden: 352}\n",
                       "  mlp: {kind: swiglu,  # the only kind\n        # inner width\n        hidden: 352}  # explicit\n")
    out = fmt(text)
    assert "  # inner width\n  mlp: {kind: swiglu, hidden: 352}  # the only kind # explicit\n" in out
    assert fmt(out) == out


def test_strings_quoted_only_where_needed():
    text = TOY.replace("description: Tiny tool-calling worker that runs end to end on a laptop CPU.",
                       "description: 'note: a \"quoted\" word, # not a comment, - and\\ttab'")
    text = text.replace("corpus: data/toy/corpus.txt", "corpus: 'data/toy/corpus.txt'")
    out = fmt(text)
    assert 'description: "note: a \\"quoted\\" word, # not a comment, - and\\\\ttab"\n' in out
    assert "corpus: data/toy/corpus.txt," in out
    assert load_text(out, "x").data["description"] == load_text(text, "y").data["description"]
    assert fmt(out) == out


@pytest.mark.parametrize("value", ["- leading dash", "yes", "123", "null", "a: b", "*star", "multi\nline", "tab\there",
                                   "ünïcödé text", "trailing space ", "[brackets]", "x #y", "{x}", "%pct", "@at", "`tick`"])
def test_description_round_trips(value):
    import json

    text = TOY.replace("description: Tiny tool-calling worker that runs end to end on a laptop CPU.",
                       "description: " + json.dumps(value))
    out = fmt(text)
    assert load_text(out, "x").data["description"] == value
    assert fmt(out) == out


def test_numbers_keep_their_spelling_hex_becomes_decimal():
    text = TOY.replace("seed: 1234", "seed: 0x4d2").replace("lr: 3.0e-3", "lr: 0.003")
    out = fmt(text)
    assert "  seed: 1234\n" in out
    assert "lr: 0.003," in out


def test_aliases_are_written_out():
    text = TOY.replace("  norm: {kind: rmsnorm, eps: 1.0e-6}\n", "  norm: &n {kind: rmsnorm, eps: 1.0e-6}\n")
    text = text.replace("    ce_ground_truth: {weight: 0.2}\n", "    ce_ground_truth: &w {weight: 0.2}  # shared\n")
    text = text.replace("    tool_name: {weight: 0.2}\n", "    tool_name: *w\n")
    assert "*w" in text
    out = fmt(text)
    assert re.search(r"\n    ce_ground_truth: \{weight: 0\.2\} +# shared\n    tool_name: \{weight: 0\.2\}\n", out)
    assert re.sub(r" +# shared", "", out) == TOY


def test_long_rows_break_into_block_style():
    reason = "a reason long enough that the island row no longer fits in one hundred and twenty characters"
    text = TOY.replace('{module: "norm", reason: "final norm"}', f'{{module: "norm", reason: "{reason}"}}')
    out = fmt(text)
    assert f'    - module: "norm"\n      reason: "{reason}"\n' in out
    assert all(len(line) <= fmt_mod.WIDTH for line in out.splitlines() if "reason" not in line or reason not in line)
    assert fmt(out) == out


def test_empty_rules_list_is_flow():
    text = TOY.replace(TOY[TOY.index("    rules:"):TOY.index("\nshapes:")], "    rules: []\n")
    out = fmt(text)
    assert "    rules: []\n" in out
    assert fmt(out) == out


# ---------------------------------------------------------------- errors and refusals


def test_invalid_yaml_is_a_positioned_error():
    with pytest.raises(SpecError) as info:
        fmt(TOY.replace("  n_layers: 2\n", "  n_layers: [2\n"))
    p = info.value.problems[0]
    assert p.file == "t.yaml" and p.line > 1


def test_invalid_spec_is_a_positioned_error():
    with pytest.raises(SpecError) as info:
        fmt(TOY.replace("n_kv_heads: 2\n", "n_kv_heads: 3\n"))
    assert any(p.path.startswith("architecture") for p in info.value.problems)


def test_refuses_when_meaning_would_change(monkeypatch):
    original = fmt_mod.scalar_text

    def wrong(node, spath, flow):
        return "3" if spath == "architecture.n_layers" else original(node, spath, flow)

    monkeypatch.setattr(fmt_mod, "scalar_text", wrong)
    with pytest.raises(FmtRefused, match="would change"):
        fmt(TOY)


def test_refuses_when_a_comment_would_be_lost(monkeypatch):
    monkeypatch.setattr(fmt_mod, "_with_eol", lambda line, eol: line)
    with pytest.raises(FmtRefused, match="comment"):
        fmt(TOY)


# ---------------------------------------------------------------- the command


def test_check_names_files_and_writes_nothing(run, workdir):
    messy = workdir / "messy.yaml"
    messy.write_text(messy_toy(), encoding="utf-8")
    clean = workdir / "clean.yaml"
    clean.write_text(TOY.replace("name: toy-worker", "name: clean-toy"), encoding="utf-8")
    before = messy.stat()
    code, out, err = run("fmt", "--check", "messy.yaml", "clean.yaml", cwd=workdir)
    assert code == 1
    assert "would reformat: messy.yaml" in err and "clean.yaml" not in err
    assert messy.read_text(encoding="utf-8") == messy_toy()
    assert messy.stat().st_mtime_ns == before.st_mtime_ns

    code, out, _ = run("fmt", "--diff", "messy.yaml", cwd=workdir)
    assert code == 0 and out.startswith("--- messy.yaml (now)") and messy.read_text(encoding="utf-8") == messy_toy()


def test_fmt_rewrites_atomically_and_only_on_change(run, workdir):
    messy = workdir / "messy.yaml"
    messy.write_text(messy_toy(), encoding="utf-8")
    os.chmod(messy, 0o640)
    code, out, _ = run("fmt", "messy.yaml", cwd=workdir)
    assert code == 0 and "formatted: messy.yaml" in out
    assert messy.read_text(encoding="utf-8") == fmt(messy_toy())
    assert messy.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in workdir.iterdir()) == ["data", "messy.yaml"]  # no temp file left
    inode, mtime = messy.stat().st_ino, messy.stat().st_mtime_ns
    code, out, _ = run("fmt", "messy.yaml", cwd=workdir)
    assert code == 0 and "0 reformatted, 1 unchanged" in out
    assert (messy.stat().st_ino, messy.stat().st_mtime_ns) == (inode, mtime)
    assert run("fmt", "--check", "messy.yaml", cwd=workdir)[0] == 0


def test_invalid_file_exit_2_nothing_written(run, workdir):
    good = workdir / "good.yaml"
    good.write_text(messy_toy(), encoding="utf-8")
    bad = workdir / "bad.yaml"
    bad.write_text(TOY.replace("name: toy-worker", "name: bad").replace("  n_layers: 2\n", "  n_layers: [2\n"), encoding="utf-8")
    code, _, err = run("fmt", "good.yaml", "bad.yaml", cwd=workdir)
    assert code == 2
    assert re.search(r"bad\.yaml:\d+:\d+: ", err)
    assert good.read_text(encoding="utf-8") == messy_toy()


def test_refusal_exit_3_nothing_written(run, workdir, monkeypatch):
    messy = workdir / "messy.yaml"
    messy.write_text(messy_toy(), encoding="utf-8")
    original = fmt_mod.scalar_text
    monkeypatch.setattr(fmt_mod, "scalar_text",
                        lambda node, spath, flow: "3" if spath == "architecture.n_layers" else original(node, spath, flow))
    code, _, err = run("fmt", "messy.yaml", cwd=workdir)
    assert code == 3 and "nothing written" in err
    assert messy.read_text(encoding="utf-8") == messy_toy()


def test_shipped_specs_check_clean(run):
    code, out, _ = run("fmt", "--check", *[f"specs/{p.name}" for p in SPECS])
    assert code == 0 and "already canonical" in out
