"""The tokenizer job: special tokens at their spec ids, checks, pretrained loading, determinism."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from compiler.planning.params import SpecialTokenP, TokenizerParams
from runtime.hashing import tree_sha256
from runtime.jobs import tokenizer as tokjob
from tests.runtime.helpers import Ctx

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
CORPUS = SPECS / "data" / "toy" / "corpus.txt"
TOY_SPECIAL = {
    "pad": ("<pad>", 0), "bos": ("<s>", 1), "eos": ("</s>", 2), "think_start": ("<think>", 3), "think_end": ("</think>", 4),
    "tool_call_start": ("<tool_call>", 5), "tool_call_end": ("</tool_call>", 6),
    "tool_result_start": ("<tool_result>", 7), "tool_result_end": ("</tool_result>", 8),
}




def special(overrides: dict[str, tuple[str, int]] | None = None) -> dict[str, SpecialTokenP]:
    table = {**TOY_SPECIAL, **(overrides or {})}
    return {name: SpecialTokenP(text=text, id=tid) for name, (text, tid) in table.items()}


def bpe_params(**kw) -> TokenizerParams:
    base = dict(source_kind="bpe", source_path="data/toy/corpus.txt", trained_vocab_size=512, model_vocab_size=512,
                special_tokens=special())
    return TokenizerParams(**{**base, **kw})


def run_job(params: TokenizerParams, out: Path, ctx: Ctx | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    return tokjob.run(params, {}, out, ctx or Ctx())


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    ctx = Ctx()
    metrics = run_job(bpe_params(), out, ctx)
    return SimpleNamespace(out=out, folder=out / "tokenizer", metrics=metrics, ctx=ctx,
                           tok=tokjob.load_tokenizer(out / "tokenizer"))


def test_plan_params_match_these_tests():
    plan = json.loads((ROOT / "generated" / "toy-worker" / "plan.json").read_text())
    params = next(j for j in plan["jobs"] if j["id"] == "tokenizer")["params"]
    assert TokenizerParams.model_validate(params, strict=False) == bpe_params(chat_template="data/toy/chat_template.jinja")


def test_outputs_and_report(toy):
    assert sorted(p.name for p in toy.out.iterdir()) == ["report.json", "tokenizer"]
    assert (toy.folder / "tokenizer.json").is_file()
    report = json.loads((toy.out / "report.json").read_text())
    assert report == json.loads(json.dumps(toy.metrics)) | {"provenance": {}}
    assert (toy.out / "report.json").read_text() == json.dumps(report, sort_keys=True, indent=2) + "\n"
    assert report["fingerprint"] == tree_sha256(toy.folder)
    assert report["vocab_size"] == len(toy.tok) == 512
    assert report["special_token_ids"] == {name: tid for name, (_, tid) in TOY_SPECIAL.items()}
    assert report["determinism_check"].startswith("passed")
    assert any(e[0] == "start" for e in toy.ctx.events) and any(e[0] == "advance" for e in toy.ctx.events)


def test_special_tokens_on_their_ids_and_single(toy):
    for name, (text, tid) in TOY_SPECIAL.items():
        assert toy.tok.convert_tokens_to_ids(text) == tid, name
        assert toy.tok.encode(text, add_special_tokens=False) == [tid], name
        # also inside running text
        ids = toy.tok.encode(f"ab{text}cd", add_special_tokens=False)
        assert ids.count(tid) == 1, name
    assert (toy.tok.bos_token_id, toy.tok.eos_token_id, toy.tok.pad_token_id) == (1, 2, 0)
    assert max(toy.tok.get_vocab().values()) < 512


def test_reference_string_round_trips(toy):
    ref = "<pad><s></s><think></think><tool_call></tool_call><tool_result></tool_result> hello world"
    assert tokjob.reference_string(special()) == ref == toy.metrics["reference_string"]
    ids = toy.tok.encode(ref, add_special_tokens=False)
    assert ids[:9] == list(range(9))
    assert toy.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) == ref
    text = "Ünïcödé → 東京 ☃ tabs\tand\nnewlines"  # bytes never seen in the corpus still round-trip
    assert toy.tok.decode(toy.tok.encode(text, add_special_tokens=False)) == text


def test_tokenizer_json_is_deterministic(toy, tmp_path):
    again = run_job(bpe_params(), tmp_path / "again")
    assert (tmp_path / "again" / "tokenizer" / "tokenizer.json").read_bytes() == (toy.folder / "tokenizer.json").read_bytes()
    assert again["fingerprint"] == toy.metrics["fingerprint"]


def test_tokenizer_json_is_deterministic_across_processes(toy, tmp_path):
    """Rust hash maps are seeded per process: train in a fresh interpreter and compare bytes."""
    code = (
        "import json, sys, pathlib\n"
        "from runtime.jobs.tokenizer import _place_specials, _train_bpe\n"
        "items = [tuple(i) for i in json.loads(sys.argv[2])]\n"
        "tok = _place_specials(_train_bpe(pathlib.Path(sys.argv[1]), 512, [t for _, t, _ in items]), items)\n"
        "print(tok.to_str())\n"
    )
    items = json.dumps(tokjob.special_ids_in_order(special()))
    proc = subprocess.run([sys.executable, "-c", code, str(CORPUS), items], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    saved = json.loads((toy.folder / "tokenizer.json").read_text())
    fresh = json.loads(proc.stdout)
    assert fresh["model"] == saved["model"]
    assert [(t["id"], t["content"]) for t in fresh["added_tokens"]] == [(t["id"], t["content"]) for t in saved["added_tokens"]]


def test_non_contiguous_ids_are_honoured(tmp_path):
    overrides = {"tool_call_start": ("<tool_call>", 300), "tool_result_end": ("</tool_result>", 511)}
    params = bpe_params(special_tokens=special(overrides))
    metrics = run_job(params, tmp_path)
    tok = tokjob.load_tokenizer(tmp_path / "tokenizer")
    for name, t in params.special_tokens.items():
        assert tok.encode(t.text, add_special_tokens=False) == [t.id], name
    assert metrics["special_token_ids"]["tool_call_start"] == 300
    assert sorted(tok.get_vocab().values()) == list(range(512))
    text = "<s>How much is 50 USD in EUR?<tool_call>{\"name\":\"x\"}</tool_call></tool_result>"
    assert tok.decode(tok.encode(text, add_special_tokens=False), skip_special_tokens=False) == text


def test_id_that_cannot_be_honoured_fails_clearly(tmp_path):
    params = bpe_params(model_vocab_size=1024, special_tokens=special({"tool_call_end": ("</tool_call>", 700)}))
    with pytest.raises(tokjob.TokenizerJobError, match=r"'tool_call_end' \('</tool_call>'\) wants id 700.*only 512 tokens"):
        run_job(params, tmp_path)
    assert not (tmp_path / "report.json").exists()


def test_duplicate_ids_fail_clearly(tmp_path):
    with pytest.raises(tokjob.TokenizerJobError, match="'bos' and 'think_start' both want id 1"):
        run_job(bpe_params(special_tokens=special({"think_start": ("<think>", 1)})), tmp_path)


def test_vocab_too_small_for_bytes_and_specials(tmp_path):
    with pytest.raises(tokjob.TokenizerJobError, match="below 265"):
        run_job(bpe_params(trained_vocab_size=260), tmp_path)


def test_unsupported_uri_source_is_refused(tmp_path):
    # s3://, gs://, hf:// and https:// are fetched into the store (tests/runtime/test_remote_inputs.py)
    from runtime.remote import RemoteInputError

    with pytest.raises(RemoteInputError, match="the ftp:// scheme is not supported"):
        run_job(bpe_params(source_path="ftp://host/corpus.txt"), tmp_path)


def test_absolute_corpus_path_is_used_as_is(tmp_path):
    metrics = run_job(bpe_params(source_path=str(CORPUS)), tmp_path / "out", Ctx(spec_dir=tmp_path))
    assert metrics["corpus"]["bytes"] == CORPUS.stat().st_size


def pretrained_params(folder: Path, **kw) -> TokenizerParams:
    base = dict(source_kind="pretrained", source_path=str(folder), trained_vocab_size=None, model_vocab_size=512,
                special_tokens=special())
    return TokenizerParams(**{**base, **kw})


def test_pretrained_loads_saved_folder(toy, tmp_path):
    metrics = run_job(pretrained_params(toy.folder), tmp_path)
    tok = tokjob.load_tokenizer(tmp_path / "tokenizer")
    assert metrics["pretrained"]["added_special_tokens"] == []
    assert metrics["special_token_ids"] == toy.metrics["special_token_ids"]
    assert tok.get_vocab() == toy.tok.get_vocab()
    sample = "<s>How much is 50 USD in EUR?</s>"
    assert tok.encode(sample, add_special_tokens=False) == toy.tok.encode(sample, add_special_tokens=False)


def test_pretrained_relative_path_resolves_against_spec_dir(toy, tmp_path):
    spec_dir = tmp_path / "spec"
    shutil.copytree(toy.folder, spec_dir / "tok")
    metrics = run_job(pretrained_params(Path("tok")), tmp_path / "out", Ctx(spec_dir=spec_dir))
    assert metrics["vocab_size"] == 512


def test_pretrained_adds_missing_special_tokens(toy, tmp_path):
    params = pretrained_params(toy.folder, model_vocab_size=520,
                               special_tokens=special({"extra": ("<extra>", 512), "sep": ("<sep>", 513)}))
    metrics = run_job(params, tmp_path)
    tok = tokjob.load_tokenizer(tmp_path / "tokenizer")
    assert metrics["pretrained"]["added_special_tokens"] == ["extra", "sep"]
    assert tok.encode("<extra><sep>", add_special_tokens=False) == [512, 513]
    assert metrics["vocab_size"] == 514


def test_pretrained_wrong_id_fails_clearly(toy, tmp_path):
    params = pretrained_params(toy.folder, model_vocab_size=520, special_tokens=special({"extra": ("<extra>", 515)}))
    with pytest.raises(tokjob.TokenizerJobError, match=r"'extra' \('<extra>'\) has id 512 .* spec says 515"):
        run_job(params, tmp_path)


def test_pretrained_over_model_vocab_fails_clearly(toy, tmp_path):
    params = pretrained_params(toy.folder, special_tokens=special({"extra": ("<extra>", 512)}))
    with pytest.raises(tokjob.TokenizerJobError, match="'extra'.*not below the model's vocab_size 512"):
        run_job(params, tmp_path)


def test_auto_map_folder_is_refused(toy, tmp_path):
    folder = tmp_path / "remote"
    shutil.copytree(toy.folder, folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(tokjob.TokenizerJobError, match="auto_map.*remote code"):
        run_job(pretrained_params(folder), tmp_path / "out")
    with pytest.raises(tokjob.TokenizerJobError, match="remote code"):
        tokjob.load_tokenizer(folder)


# --- the folder outside modelspec: transformers 5 here, 4.45 (the oldest supported) in a venv of its own

OLDEST_TRANSFORMERS = "4.45.2"
PROBE = """
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
print(json.dumps({"class": type(tok).__name__, "max": tok.model_max_length, "with": tok(sys.argv[2])["input_ids"],
                  "bare": tok(sys.argv[2], add_special_tokens=False)["input_ids"], "len": len(tok),
                  "special": {t: tok.convert_tokens_to_ids(t) for t in tok.all_special_tokens}}))
"""
TEXT = "weather in Paris <tool_call>{}</tool_call>"


def _probe(python: str, folder: Path) -> dict:
    proc = subprocess.run([python, "-c", PROBE, str(folder), TEXT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_folder_adds_bos_like_training_rows(toy, tmp_path):
    got = _probe(sys.executable, toy.folder)
    bos = TOY_SPECIAL["bos"][1]
    assert got["with"] == [bos] + got["bare"] and got["bare"][0] != bos
    assert got["len"] == 512
    folder = tmp_path / "tok"  # where the folder leaves the store, it learns the context
    shutil.copytree(toy.folder, folder)
    tokjob.make_portable(folder, "<s>", bos, 256)
    assert _probe(sys.executable, folder)["max"] == 256
    assert got["special"] == {text: tid for text, tid in TOY_SPECIAL.values()}


@pytest.mark.slow
def test_folder_loads_alike_in_the_oldest_supported_transformers(toy, tmp_path_factory):
    """A second virtualenv with transformers 4.45 (no torch: a tokenizer needs none), from PyPI."""
    venv = tmp_path_factory.mktemp("transformers4") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"transformers=={OLDEST_TRANSFORMERS}"],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    old, new = _probe(str(venv / "bin" / "python"), toy.folder), _probe(sys.executable, toy.folder)
    assert old["class"] == "PreTrainedTokenizerFast"
    assert {k: old[k] for k in ("max", "with", "bare", "len", "special")} == {k: new[k] for k in ("max", "with", "bare", "len", "special")}
