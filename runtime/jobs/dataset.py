"""The dataset job: validate samples against the tool registry, split, tokenize, build span masks.

Inputs: ``params.train`` / ``params.eval`` (JSONL, sample schema in specs/data/toy/README.md),
``params.tool_registry`` (JSON) and the tokenizer folder ``inputs["tokenizer"]["tokenizer"]``.

Validation drops a sample for the first failing reason, in this order: ``bad_line`` (not a
JSON object), ``bad_schema`` (keys or types), ``duplicate_id``, ``pii_in_target``,
``bad_call_markup`` (unbalanced or repeated tool-call tags), ``bad_json`` (the tool-call body
does not parse), ``bad_call_shape`` (not ``{"name": str, "arguments": {...}}``),
``unknown_tool``, ``missing_required``, ``wrong_type`` (string / integer / number / boolean /
array / object / null; a bool is neither an integer nor a number), ``unknown_argument``,
``call_mismatch`` (the body differs from the sample's ``tool_call`` field, or only one of them
is there), ``control_with_tool_call``, ``tool_kind_without_call``, ``integration_missing`` (an integration string is not
in the final answer). Corruption rate = dropped / read, per input file and per output split.

Chat samples: a line of ``data.train`` in the OpenAI chat format (``messages``; docs/chat_data.md)
is checked with ``validate_chat`` (its reasons: ``schema_violation``, ``pii_echoed``, ...), must be
ready-made (``not_ready_made``: a prompt belongs in data.prompts) and call only registry tools
(``unknown_tool``); it is rendered with the tokenizer's chat template and encoded with
``encode_chat`` (loss on assistant turns only; a template failure drops it: ``template_error``).
Its row metadata carries ``"format": "chat"``. ``data.eval`` must stay in the toy format (the eval
job replays tool results in it): a chat sample there fails the job.

Split: train-file samples go to ``val`` when sha256(id) read as a fraction of 2**64 falls below
``VAL_FRACTION`` (deterministic, independent of order); the eval file is ``eval``.

Tokens: ``[bos] + tokens(prompt) + tokens(target) + [eos]``. Prompt and target are encoded
separately (as at inference, where the prompt is encoded alone and the target generated), so
no token straddles the boundary. A sample longer than ``max_seq_len`` is rejected (not
truncated: a cut target would teach a broken tool call) and counted as ``too_long``.

Masks are per position over ``input_ids`` (1 = this token is a target of the loss; trainers
shift by one): ``loss_mask`` = target tokens and eos; ``tool_name_mask`` = tokens overlapping
the tool name's characters inside the tool-call JSON; ``json_args_mask`` = tokens overlapping
the ``arguments`` object; ``integration_mask`` = tokens overlapping each integration string in
the final answer (after the last ``</tool_result>``). Spans come from the fast tokenizer's
character offsets; each masked span's decoded text must contain the span's text, else it is
counted in ``alignment_errors``.

A judge's rows (the spec has a ``judge`` section) are preference pairs and clause labels instead:
runtime/jobs/dataset_judge.py.

Outputs in ``out/data``: ``{train,val,eval}.safetensors`` (int32 ``[rows, max_seq_len]``,
padded with the pad id; masks and attention 0 on padding) and ``{split}.jsonl`` (row metadata,
same order as the tensors), plus ``out/report.json``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any


from runtime.data.chat import MASKS, ChatTemplate, ChatTemplateError, encode_chat
from runtime.data.chat_checks import is_ready_made, iter_calls, validate_chat
from runtime.data.rows import TENSORS, write_rows  # noqa: F401  (TENSORS: this job's public name too)
from runtime.hashing import tree_sha256

from .dataset_checks import (  # noqa: F401  (SPAN_MASKS and the error are this job's public names too)
    DEFAULT_MARKERS, SPAN_MASKS, VAL_FRACTION, DatasetJobError, Drops, check_sample, load_registry, split_of,
)
from .tokenizer import TokenizerJobError, load_tokenizer, resolve_path, special_token_mismatch, write_report

SPLITS = ("train", "val", "eval")



def _check_tokenizer_matches(tok, special_tokens: dict) -> None:
    problem = special_token_mismatch(tok, special_tokens)
    if problem:
        raise DatasetJobError(problem)


def _read_jsonl(path: Path) -> list[tuple[str, Any]]:
    """(raw line, parsed object or None) per non-blank line."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            try:
                rows.append((line, json.loads(line)))
            except json.JSONDecodeError:
                rows.append((line, None))
    return rows


def _overlap(offsets: list[tuple[int, int]], a: int, b: int) -> list[int]:
    return [i for i, (s, e) in enumerate(offsets) if s < b and e > a and e > s]


CHAT = {}  # the spans marker of a chat sample (its spans come from the chat template at encoding)


def is_chat(sample: Any) -> bool:
    """A sample in the OpenAI chat format (docs/chat_data.md) rather than the toy's prompt/target format."""
    return isinstance(sample, dict) and "messages" in sample and "target" not in sample


def _check_chat(sample: dict, seen: set[str], registry: dict) -> str | None:
    """The first reason to drop a chat sample: `validate_chat`'s reasons, `not_ready_made` (a prompt: it belongs
    in data.prompts), `unknown_tool` (a call to a tool the registry lacks)."""
    drop = validate_chat(sample, seen)
    if drop is not None:
        return drop.reason
    if not is_ready_made(sample):
        return "not_ready_made"
    if {call["function"]["name"] for *_, call in iter_calls(sample["messages"])} - set(registry):
        return "unknown_tool"
    return None


def run(params, inputs: dict[str, dict[str, Path]], out: Path, ctx) -> dict:
    out = Path(out)
    special = params.special_tokens
    for required in ("bos", "eos", "pad"):
        if required not in special:
            raise DatasetJobError(f"the spec has no '{required}' special token")
    bos, eos, pad = special["bos"].id, special["eos"].id, special["pad"].id
    markers = {k: (special[k].text if k in special else v) for k, v in DEFAULT_MARKERS.items()}
    L = params.max_seq_len
    if L < 3:
        raise DatasetJobError(f"max_seq_len {L} is too small")

    try:
        tok_dir = Path(inputs["tokenizer"]["tokenizer"])
    except KeyError as exc:
        raise DatasetJobError("the dataset job needs inputs['tokenizer']['tokenizer']") from exc
    try:
        tok = load_tokenizer(tok_dir)
    except TokenizerJobError as exc:
        raise DatasetJobError(str(exc)) from exc
    _check_tokenizer_matches(tok, special)

    paths = {"train": params.train, "eval": params.eval}
    if params.judge_clauses is None:
        if params.tool_registry is None:
            raise DatasetJobError("the dataset job needs data.tool_registry to check the samples' tool calls")
        paths["tool_registry"] = params.tool_registry
    resolved = {}
    for key, value in paths.items():
        try:
            resolved[key] = resolve_path(ctx, value)
        except TokenizerJobError as exc:
            raise DatasetJobError(f"data.{key}: {exc}") from exc
        if not resolved[key].is_file():
            raise DatasetJobError(f"data.{key} {value!r} not found (looked at {resolved[key]})")
    files = {"train": _read_jsonl(resolved["train"]), "eval": _read_jsonl(resolved["eval"])}
    if params.judge_clauses is not None:  # preference pairs and clause rows (docs/roles.md#judge-data)
        from .dataset_judge import run as run_judge

        return run_judge(params, tok, files, resolved, out, ctx)
    registry = load_registry(resolved["tool_registry"])

    # -- read and validate ----------------------------------------------------------------------
    step = ctx.progress("validate samples", sum(len(v) for v in files.values()))
    seen: set[str] = set()
    kept: dict[str, list[tuple[dict, dict]]] = {s: [] for s in SPLITS}
    read = Counter()
    drops = Drops(SPLITS, list(files))
    dropped, file_dropped, examples = drops.by_split, drops.by_file, drops.examples
    for fname, rows in files.items():
        for raw, sample in rows:
            sid = sample.get("id") if isinstance(sample, dict) else None
            key = sid if isinstance(sid, str) else raw
            split = "eval" if fname == "eval" else split_of(key)
            read[split] += 1
            if is_chat(sample):
                if fname == "eval":
                    raise DatasetJobError(f"data.eval {params.eval!r}: {sid!r} is a chat sample; the eval job replays tool "
                                          "results in the toy format (specs/data/toy/README.md), so data.eval must use "
                                          "it; chat samples are read in data.train (docs/chat_data.md)")
                reason, spans = _check_chat(sample, seen, registry), CHAT
            else:
                reason, spans = check_sample(sample, registry, markers, seen)
            if reason:
                drops.add(split, fname, reason, sid, raw)
            else:
                kept[split].append((sample, spans))
            step(1)

    # -- tokenize, mask, check alignment ---------------------------------------------------------
    total_kept = sum(len(v) for v in kept.values())
    step = ctx.progress("tokenize", total_kept)
    too_long = Counter()
    align = Counter()
    roundtrip_errors = 0
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    split_reports: dict[str, dict] = {}
    template = None
    chat_rows: dict[str, list[tuple[dict, Any]]] = {}
    if any(spans is CHAT for split in SPLITS for _, spans in kept[split]):
        try:
            template = ChatTemplate.from_tokenizer(tok, tools=[])
        except ChatTemplateError as exc:
            raise DatasetJobError(f"data.train has chat samples and {exc}; set tokenizer.chat_template in the spec") from exc
    for split in SPLITS:
        chat_rows[split] = []
        plain = []
        for sample, spans in kept[split]:
            if spans is not CHAT:
                plain.append((sample, spans))
                continue
            try:
                enc = encode_chat(sample, tok, template, arguments_as_dict=True)
            except ChatTemplateError:
                dropped[split]["template_error"] += 1
                file_dropped["train"]["template_error"] += 1
                continue
            chat_rows[split].append((sample, enc))
        kept[split] = plain

    for split in SPLITS:
        samples = kept[split]
        prompts = [s["prompt"] for s, _ in samples]
        targets = [s["target"] for s, _ in samples]
        enc_p = tok(prompts, add_special_tokens=False)["input_ids"] if samples else []
        enc_t = tok(targets, add_special_tokens=False, return_offsets_mapping=True) if samples else {
            "input_ids": [], "offset_mapping": []}
        rows: list[dict[str, list[int]]] = []
        meta: list[dict] = []
        by_kind = Counter()
        mask_tokens = Counter()
        for (sample, spans), p_ids, t_ids, offsets in zip(samples, enc_p, enc_t["input_ids"], enc_t["offset_mapping"]):
            step(1)
            ids = [bos] + list(p_ids) + list(t_ids) + [eos]
            if len(ids) > L:
                too_long[split] += 1
                continue
            if tok.decode(t_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) != sample["target"] or \
                    tok.decode(p_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) != sample["prompt"]:
                roundtrip_errors += 1
            base = 1 + len(p_ids)  # position of the first target token
            masks = {m: [0] * len(ids) for m in MASKS}
            for i in range(base, len(ids)):
                masks["loss_mask"][i] = 1
            for m in SPAN_MASKS:
                for a, b in spans[m]:
                    hit = _overlap(offsets, a, b)
                    text = sample["target"][a:b]
                    decoded = tok.decode([t_ids[i] for i in hit], skip_special_tokens=False,
                                         clean_up_tokenization_spaces=False)
                    if not hit or text not in decoded:
                        align[m] += 1
                    for i in hit:
                        masks[m][base + i] = 1
            rows.append({"input_ids": ids, **masks})
            for m in MASKS:
                mask_tokens[m] += sum(masks[m])
            by_kind[sample["kind"]] += 1
            call = sample.get("tool_call")
            meta.append({
                "id": sample["id"], "kind": sample["kind"], "row": len(meta), "prompt_len": base, "length": len(ids),
                "tool": call["name"] if call else None, "tool_call": call, "pii": sample["pii"],
                "integration": sample["integration"], "prompt": sample["prompt"], "target": sample["target"],
            })

        for sample, enc in chat_rows[split]:  # ready-made chat samples: the template wrote bos and eos
            step(1)
            if len(enc.input_ids) > L:
                too_long[split] += 1
                continue
            roundtrip_errors += not enc.roundtrip_ok
            for m in SPAN_MASKS:
                align[m] += enc.alignment_errors.get(m, 0)
            rows.append({"input_ids": enc.input_ids, **enc.masks})
            for m in MASKS:
                mask_tokens[m] += sum(enc.masks[m])
            by_kind[sample["kind"]] += 1
            calls = [call["function"]["name"] for *_, call in iter_calls(sample["messages"])]
            first = next(i for i, v in enumerate(enc.masks["loss_mask"]) if v) if any(enc.masks["loss_mask"]) else len(enc.input_ids)
            meta.append({"id": sample["id"], "kind": sample["kind"], "row": len(meta), "prompt_len": first,
                         "length": len(enc.input_ids), "tool": calls[0] if calls else None, "tools": calls,
                         "pii": sample.get("pii") or [], "format": "chat"})

        n = len(rows)
        write_rows(data_dir, split, rows, meta, L, {"split": split, "max_seq_len": L, "pad_id": pad, "bos_id": bos, "eos_id": eos})
        lengths = [m["length"] for m in meta]
        n_dropped = sum(dropped[split].values())
        split_reports[split] = {
            "read": read[split],
            "rows": n,
            "dropped": n_dropped,
            "dropped_by_reason": dict(sorted(dropped[split].items())),
            "corruption_rate": n_dropped / read[split] if read[split] else 0.0,
            "too_long": too_long[split],
            "by_kind": dict(sorted(by_kind.items())),
            "tool_rows": sum(1 for m in meta if m["tool"]),
            "tokens": sum(lengths),
            "max_length": max(lengths, default=0),
            "mean_length": sum(lengths) / n if n else 0.0,
            "mask_tokens": dict(sorted(mask_tokens.items())),
        }

    file_reports = {}
    for fname, rows in files.items():
        n_dropped = sum(file_dropped[fname].values())
        file_reports[fname] = {
            "path": paths[fname], "sha256": tree_sha256(resolved[fname]), "read": len(rows), "dropped": n_dropped,
            "dropped_by_reason": dict(sorted(file_dropped[fname].items())),
            "corruption_rate": n_dropped / len(rows) if rows else 0.0,
        }
    all_dropped = Counter()
    for c in file_dropped.values():
        all_dropped.update(c)

    report = {
        "role": params.role,
        "max_seq_len": L,
        "val_fraction": VAL_FRACTION,
        "special_token_ids": {name: t.id for name, t in sorted(special.items())},
        "tokenizer_fingerprint": tree_sha256(tok_dir),
        "tool_registry": {"path": params.tool_registry, "sha256": tree_sha256(resolved["tool_registry"]),
                          "tools": sorted(registry)},
        "inputs": file_reports,
        "splits": split_reports,
        "counts": {s: split_reports[s]["rows"] for s in SPLITS},
        "by_kind": {s: split_reports[s]["by_kind"] for s in SPLITS},
        "dropped_by_reason": dict(sorted(all_dropped.items())),
        "dropped_examples": dict(sorted(examples.items())),
        "corruption_rate": {f: file_reports[f]["corruption_rate"] for f in files},
        "too_long": sum(too_long.values()),
        "truncated": 0,  # too-long samples are rejected, never truncated
        "alignment_errors": {"total": sum(align.values()), **{m: align[m] for m in SPAN_MASKS}},
        "roundtrip_errors": roundtrip_errors,
        "files": {p.name: p.stat().st_size for p in sorted(data_dir.iterdir())},
        "fingerprint": tree_sha256(data_dir),
    }
    write_report(out, report | {"provenance": ctx.provenance})
    return report
