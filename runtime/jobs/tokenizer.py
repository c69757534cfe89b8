"""The tokenizer job: a transformers fast tokenizer with every special token at exactly its spec id.

``source_kind == "bpe"`` trains a byte-level BPE on the corpus (full 256-byte alphabet, so any
text encodes; deterministic: the same corpus gives a byte-identical ``tokenizer.json``).
The trainer puts the special tokens first, in id order, so spec ids ``0..k-1`` come out as is;
other ids below the trained vocabulary size are honoured by renumbering the vocabulary (BPE
merges are stored as strings, so this changes nothing else). An id that cannot be honoured
(at or above the trained size, a duplicate) fails the job naming the token.

``source_kind == "pretrained"`` loads a local folder (no remote code: a folder whose config
carries ``auto_map`` is refused), adds the spec's special tokens it lacks (they are appended
after the vocabulary) and requires every special token to sit at its spec id already.

Outputs: ``out/tokenizer`` (``save_pretrained``, then made portable: see ``make_portable``) and
``out/report.json``. The saved folder is reloaded and checked before the job succeeds: each
special token encodes to exactly its id, every id is below the model's vocab size, the reference
string round-trips, and encoding with special tokens starts with bos exactly as training rows do.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from runtime.hashing import tree_sha256
from runtime.remote import local_path

# A corpus up to this size is trained twice and the two results compared byte for byte.
DETERMINISM_CHECK_MAX_BYTES = 16 << 20
BYTE_ALPHABET = 256


class TokenizerJobError(RuntimeError):
    """A tokenizer that does not meet the spec; the message names the token and the fix."""


# --------------------------------------------------------------------------------------------
# Helpers shared with other jobs
# --------------------------------------------------------------------------------------------


def resolve_path(ctx: Any, value: str) -> Path:
    """A path from params: a URI fetched into the store, relative to ``ctx.spec_dir``, absolute as is."""
    return local_path(ctx, value)


def special_token_mismatch(tok, special_tokens: dict) -> str | None:
    """Why a loaded tokenizer disagrees with the spec's special tokens (each must encode to its id), or None."""
    for name, t in sorted(special_tokens.items()):
        ids = tok.encode(t.text, add_special_tokens=False)
        if ids != [t.id]:
            return (f"the tokenizer encodes special token '{name}' ({t.text!r}) as {ids}, "
                    f"but the spec says [{t.id}]: tokenizer and spec disagree")
    return None


def write_report(out: Path, report: dict) -> None:
    (out / "report.json").write_text(json.dumps(report, sort_keys=True, indent=2) + "\n", encoding="utf-8")


def _remote_code_in(folder: Path) -> str | None:
    """Why ``folder`` would need remote code, or None."""
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        try:
            data = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise TokenizerJobError(f"{cfg}: not readable JSON ({exc})") from exc
        if isinstance(data, dict) and "auto_map" in data:
            return f"{cfg.name} has 'auto_map' ({json.dumps(data['auto_map'], sort_keys=True)})"
    model_cfg = folder / "config.json"
    if model_cfg.is_file():
        try:
            data = json.loads(model_cfg.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("auto_map"), dict) and "AutoTokenizer" in data["auto_map"]:
            return "config.json has 'auto_map.AutoTokenizer'"
    return None


def load_tokenizer(folder: Path | str):
    """Load a saved fast tokenizer from a local folder: no network, no remote code."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(folder)
    if not folder.is_dir():
        raise TokenizerJobError(f"tokenizer folder {folder} does not exist")
    why = _remote_code_in(folder)
    if why:
        raise TokenizerJobError(f"refusing tokenizer folder {folder}: {why}, i.e. it needs remote code, "
                                "which this runtime never runs (trust_remote_code=False)")
    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)
    if not isinstance(tok, PreTrainedTokenizerFast) or not getattr(tok, "is_fast", False):
        raise TokenizerJobError(f"{folder} loads as {type(tok).__name__}, not a fast tokenizer "
                                "(offsets and exact ids need tokenizer.json)")
    return tok


def special_ids_in_order(special_tokens: dict) -> list[tuple[str, str, int]]:
    """(name, text, id) sorted by id; duplicates (ids or texts) and negative ids raise."""
    items = sorted(((name, t.text, t.id) for name, t in special_tokens.items()), key=lambda x: (x[2], x[0]))
    by_id: dict[int, str] = {}
    by_text: dict[str, str] = {}
    for name, text, tid in items:
        if tid < 0:
            raise TokenizerJobError(f"special token '{name}' ({text!r}) has negative id {tid}")
        if not text:
            raise TokenizerJobError(f"special token '{name}' has empty text")
        if tid in by_id:
            raise TokenizerJobError(f"special tokens '{by_id[tid]}' and '{name}' both want id {tid}")
        if text in by_text:
            raise TokenizerJobError(f"special tokens '{by_text[text]}' and '{name}' have the same text {text!r}")
        by_id[tid], by_text[text] = name, name
    return items


def reference_string(special_tokens: dict) -> str:
    """All special-token texts in id order, then ' hello world' (the tokens contract's reference)."""
    return "".join(text for _, text, _ in special_ids_in_order(special_tokens)) + " hello world"


# --------------------------------------------------------------------------------------------
# BPE
# --------------------------------------------------------------------------------------------


def _train_bpe(corpus: Path, vocab_size: int, specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(corpus)], trainer)
    return tok


def _place_specials(tok, items: list[tuple[str, str, int]]):
    """Renumber the vocabulary so each special token sits at its spec id (others keep their order)."""
    from tokenizers import Tokenizer

    data = json.loads(tok.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    old_ids = sorted(set(vocab.values()) | {t["id"] for t in data["added_tokens"]})
    n = len(old_ids)
    if old_ids != list(range(n)):
        raise TokenizerJobError("the trained vocabulary has gaps in its ids; cannot place special tokens")
    for name, text, tid in items:
        if tid >= n:
            raise TokenizerJobError(
                f"special token '{name}' ({text!r}) wants id {tid}, but the trained BPE vocabulary has only {n} tokens "
                f"(ids 0..{n - 1}) and a vocabulary has no gaps: use an id below {n} or raise "
                "tokenizer.source.vocab_size")
    if all(tok.token_to_id(text) == tid for _, text, tid in items):
        return tok
    wanted = {tok.token_to_id(text): tid for _, text, tid in items}  # old id -> spec id
    free = iter(i for i in range(n) if i not in set(wanted.values()))
    remap = {old: wanted[old] if old in wanted else next(free) for old in old_ids}
    data["model"]["vocab"] = {token: remap[i] for token, i in sorted(vocab.items(), key=lambda kv: remap[kv[1]])}
    for added in data["added_tokens"]:
        added["id"] = remap[added["id"]]
    data["added_tokens"].sort(key=lambda t: t["id"])
    return Tokenizer.from_str(json.dumps(data))


def _build_bpe(params, ctx, items, report: dict):
    corpus = resolve_path(ctx, params.source_path)
    if not corpus.is_file():
        raise TokenizerJobError(f"BPE corpus {params.source_path!r} not found (looked at {corpus})")
    vocab_size = params.trained_vocab_size
    if vocab_size is None:
        raise TokenizerJobError("source_kind 'bpe' needs trained_vocab_size")
    floor = len(items) + BYTE_ALPHABET
    if vocab_size < floor:
        raise TokenizerJobError(f"trained_vocab_size {vocab_size} is below {floor} "
                                f"({len(items)} special tokens + {BYTE_ALPHABET} byte tokens)")
    if vocab_size > params.model_vocab_size:
        raise TokenizerJobError(f"trained_vocab_size {vocab_size} exceeds the model's vocab_size {params.model_vocab_size}")
    size = corpus.stat().st_size
    if size == 0:
        raise TokenizerJobError(f"BPE corpus {corpus} is empty")
    step = ctx.progress("train byte-level BPE", None)
    specials = [text for _, text, _ in items]  # in id order: the trainer numbers them 0..k-1
    tok = _place_specials(_train_bpe(corpus, vocab_size, specials), items)
    step(1)
    if size <= DETERMINISM_CHECK_MAX_BYTES:
        again = _place_specials(_train_bpe(corpus, vocab_size, specials), items)
        if again.to_str() != tok.to_str():
            raise TokenizerJobError(f"BPE training on {corpus} is not deterministic: two runs gave different tokenizers")
        report["determinism_check"] = "passed (trained twice, identical tokenizer.json)"
    else:
        report["determinism_check"] = f"skipped (corpus over {DETERMINISM_CHECK_MAX_BYTES} bytes)"
    report["corpus"] = {"path": params.source_path, "bytes": size, "sha256": tree_sha256(corpus)}
    report["trained_vocab_size"] = vocab_size
    return tok, {}


# --------------------------------------------------------------------------------------------
# Pretrained
# --------------------------------------------------------------------------------------------


def _build_pretrained(params, ctx, items, report: dict):
    from tokenizers import AddedToken, Tokenizer

    folder = resolve_path(ctx, params.source_path)
    if not folder.is_dir():
        raise TokenizerJobError(f"pretrained tokenizer folder {params.source_path!r} not found (looked at {folder})")
    step = ctx.progress("load pretrained tokenizer", None)
    hf = load_tokenizer(folder)
    backend = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    base_size = backend.get_vocab_size(with_added_tokens=True)
    special_now = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
    added = []
    for name, text, tid in items:
        if text in special_now:
            continue
        backend.add_special_tokens([AddedToken(text, special=True, normalized=False)])
        added.append(name)
    for name, text, tid in items:
        got = backend.token_to_id(text)
        if got != tid:
            where = "appended after the vocabulary" if name in added else "in the pretrained vocabulary"
            raise TokenizerJobError(
                f"special token '{name}' ({text!r}) has id {got} {where}, but the spec says {tid}; a pretrained "
                f"vocabulary cannot be renumbered: set tokenizer.special_tokens.{name}.id to {got}")
    step(1)
    report["pretrained"] = {"path": params.source_path, "base_vocab_size": base_size, "added_special_tokens": added}
    extra = {}
    template = getattr(hf, "chat_template", None)
    if template:
        extra["chat_template"] = template
    return backend, extra


# --------------------------------------------------------------------------------------------
# Checks and the job
# --------------------------------------------------------------------------------------------


def check_tokenizer(tok, special_tokens: dict, model_vocab_size: int) -> dict:
    """Fail with a clear message unless ``tok`` honours the spec; returns facts for the report."""
    items = special_ids_in_order(special_tokens)
    for name, text, tid in items:
        ids = tok.encode(text, add_special_tokens=False)
        if ids != [tid]:
            raise TokenizerJobError(f"special token '{name}' ({text!r}) encodes to {ids}, expected exactly [{tid}]")
        back = tok.convert_ids_to_tokens(tid)
        if back != text:
            raise TokenizerJobError(f"special token '{name}': id {tid} maps back to {back!r}, not {text!r}")
        if tid >= model_vocab_size:
            raise TokenizerJobError(f"special token '{name}' ({text!r}) has id {tid}, not below the model's "
                                    f"vocab_size {model_vocab_size}")
    vocab = tok.get_vocab()
    top = max(vocab.values())
    if top >= model_vocab_size:
        token = next(t for t, i in vocab.items() if i == top)
        raise TokenizerJobError(f"token {token!r} has id {top}, not below the model's vocab_size {model_vocab_size}")
    if len(tok) > model_vocab_size:
        raise TokenizerJobError(f"the tokenizer has {len(tok)} tokens, more than the model's vocab_size {model_vocab_size}")
    ref = reference_string(special_tokens)
    ids = tok.encode(ref, add_special_tokens=False)
    back = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if back != ref:
        raise TokenizerJobError(f"the reference string does not round-trip: {ref!r} -> {ids} -> {back!r}")
    return {"reference_string": ref, "reference_ids": ids}


def make_portable(folder: Path, bos: str, bos_id: int, model_max_length: int | None) -> None:
    """Rewrite a saved folder so transformers 4.45+ and 5.x load it alike, as training sees text.

    transformers 5 writes ``tokenizer_class: TokenizersBackend`` (no such class in 4.x) and
    ``extra_special_tokens`` as a list (4.x reads ``additional_special_tokens``). Every training row
    starts with bos, so ``tokenizer.json``'s post-processor adds it (``add_special_tokens=False``
    still gives the bare ids the jobs use). ``model_max_length`` (the spec's max_context) is written
    where the folder leaves the store as a transformers folder (the HF export), so a context change does
    not invalidate the tokenizer and everything after it. A release ships the folder byte for byte
    (the package stamps its hash; docs/release.md): its runtime_config.json gives the token limit."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    tok_json = folder / "tokenizer.json"
    backend = Tokenizer.from_file(str(tok_json))
    backend.post_processor = TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    backend.save(str(tok_json))
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    extra = cfg.pop("extra_special_tokens", None)
    cfg.pop("backend", None)
    if isinstance(extra, list):
        cfg["additional_special_tokens"] = extra
    elif isinstance(extra, dict):  # named extra tokens (transformers 5): 4.x lists them
        cfg["additional_special_tokens"] = sorted(set(extra.values()))
    cfg.update({"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": True, "add_eos_token": False,
                "clean_up_tokenization_spaces": False})
    if model_max_length is not None:
        cfg["model_max_length"] = model_max_length
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _read_template(ctx, value: str) -> str:
    """The spec's chat template file, compiled in the sandbox before it is installed (a syntax error or an
    empty file fails here, naming the file, rather than in the first job that renders a conversation)."""
    from runtime.data.chat import ChatTemplate, ChatTemplateError

    path = resolve_path(ctx, value)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerJobError(f"tokenizer.chat_template {value!r} is unreadable (looked at {path}): {exc}") from exc
    try:
        ChatTemplate(text, name=f"tokenizer.chat_template {value!r}")
    except ChatTemplateError as exc:
        raise TokenizerJobError(str(exc)) from exc
    return text


def run(params, inputs: dict[str, dict[str, Path]], out: Path, ctx) -> dict:
    from transformers import PreTrainedTokenizerFast

    out = Path(out)
    items = special_ids_in_order(params.special_tokens)
    names = {name: text for name, text, _ in items}
    for required in ("bos", "eos", "pad"):
        if required not in names:
            raise TokenizerJobError(f"the spec has no '{required}' special token")

    report: dict[str, Any] = {"source_kind": params.source_kind, "model_vocab_size": params.model_vocab_size}
    if params.source_kind == "bpe":
        backend, extra = _build_bpe(params, ctx, items, report)
    elif params.source_kind == "pretrained":
        backend, extra = _build_pretrained(params, ctx, items, report)
    else:  # pragma: no cover - params are typed
        raise TokenizerJobError(f"unknown tokenizer source kind {params.source_kind!r}")

    if params.chat_template is not None:  # the spec's template replaces a pretrained tokenizer's own
        extra["chat_template"] = _read_template(ctx, params.chat_template)
        report["chat_template"] = {"path": params.chat_template,
                                   "sha256": hashlib.sha256(extra["chat_template"].encode("utf-8")).hexdigest()}
    elif extra.get("chat_template"):
        report["chat_template"] = {"path": None, "sha256": hashlib.sha256(str(extra["chat_template"]).encode("utf-8")).hexdigest()}
    others = [text for name, text, _ in items if name not in ("bos", "eos", "pad")]
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=names["bos"], eos_token=names["eos"],
                                   pad_token=names["pad"], additional_special_tokens=others, **extra)
    folder = out / "tokenizer"
    fast.save_pretrained(str(folder))
    bos_id = params.special_tokens["bos"].id
    make_portable(folder, names["bos"], bos_id, None)  # model_max_length: set by the HF export (a release keeps the folder as is)

    step = ctx.progress("check tokenizer", len(items) + 1)
    saved = load_tokenizer(folder)
    facts = check_tokenizer(saved, params.special_tokens, params.model_vocab_size)
    first = saved("x")["input_ids"][:1]
    if first != [bos_id]:
        raise TokenizerJobError(f"the saved tokenizer does not start an encoding with bos ({bos_id}): got {first}")
    step(len(items) + 1)

    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    report.update({
        "fingerprint": tree_sha256(folder),
        "vocab_size": len(saved),
        "special_token_ids": {name: tid for name, _, tid in items},
        "reference_string": facts["reference_string"],
        "reference_tokens": len(facts["reference_ids"]),
        "files": files,
        "tokenizer_json_sha256": hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest(),
    })
    write_report(out, report | {"provenance": ctx.provenance})
    return report
