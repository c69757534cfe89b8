"""A drafter and the worker it drafts for: `drafts_for` names the worker's spec, and the pair must agree.

Speculative decoding feeds the drafter's token ids to the worker, so the two must read and write
the same ids: the same tokenizer source, special tokens (text and id), vocabulary size and chat
template (the file's content, not its name); and the drafter's context must fit in the worker's.
The worker's spec is read like any spec (safe YAML, validated, by the caller's `load`); a worker that does not validate is
reported at `drafts_for`, with the command that shows why. `drafters_of` finds, for a worker's
README, the specs beside it that name it.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Callable, Iterator

from compiler.core.errors import Path, SpecError
from compiler.core.uris import is_uri
from compiler.schema.spec import Spec

Finding = tuple[Path, str, str | None]
HERE: Path = ("drafts_for",)


def worker_path(spec_dir: str, drafts_for: str) -> str:
    return drafts_for if os.path.isabs(drafts_for) else os.path.normpath(os.path.join(spec_dir, drafts_for))


def _template(spec: Spec, spec_dir: str) -> str | None:
    """The chat template's identity: its file's sha256 (None: the tokenizer's own)."""
    value = spec.tokenizer.chat_template
    if value is None or is_uri(value):
        return value
    try:
        with open(value if os.path.isabs(value) else os.path.join(spec_dir, value), "rb") as f:
            return "sha256:" + hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return f"unreadable:{value}"


def _source(spec: Spec, spec_dir: str) -> dict[str, Any]:
    src = spec.tokenizer.source.model_dump(mode="json")
    for key in ("path", "corpus"):  # a relative path names a file next to its own spec
        value = src.get(key)
        if isinstance(value, str) and not os.path.isabs(value) and not is_uri(value):
            src[key] = os.path.normpath(os.path.join(spec_dir, value))
    return src


def pairing(spec: Spec, spec_dir: str, load: Callable[[str], Spec]) -> Iterator[Finding]:
    """The pair's problems; `load(path)` validates the worker's spec (compiler/reading/validate.py)."""
    if spec.speculative is not None:
        if spec.role != "drafter" or spec.drafts_for is None:
            yield (("speculative",), "speculative decoding is measured for a drafter against the worker it drafts for",
                   "set role: drafter and drafts_for: <the worker's spec>, or remove speculative")
        elif spec.teacher is not None and spec.teacher.kind != "hf_local":
            yield (("teacher", "kind"), f"the speculate job runs the worker as the drafter's teacher, and teacher.kind is "
                   f"{spec.teacher.kind}", "distil from the worker: teacher: {kind: hf_local, path: <the worker release's hf/ "
                   "folder (modelspec publish) or its export-hf folder>}")
    if spec.drafts_for is None:
        return
    if spec.role != "drafter":
        yield (HERE, f"drafts_for names a worker to draft for, and this spec's role is {spec.role}",
               "set role: drafter, or remove drafts_for")
        return
    path = worker_path(spec_dir, spec.drafts_for)
    if not os.path.isfile(path):
        yield (HERE, f"no worker spec at '{spec.drafts_for}' (looked at {path})", "drafts_for is a path relative to this spec")
        return
    try:
        worker = load(path)
    except (OSError, SpecError) as exc:
        n = len(exc.problems) if isinstance(exc, SpecError) else 1
        yield (HERE, f"the worker spec '{spec.drafts_for}' does not validate ({n} problem{'s' if n > 1 else ''})",
               f"run `modelspec validate {path}`")
        return
    if worker.role != "worker":
        yield (HERE, f"{path} is a {worker.role}, not a worker", "drafts_for names the worker's spec")
        return
    wdir = os.path.dirname(path)
    mine, theirs = spec.tokenizer, worker.tokenizer
    if _source(spec, spec_dir) != _source(worker, wdir):
        yield (("tokenizer", "source"), f"the drafter's tokenizer source differs from worker {worker.name}'s "
               f"({_source(worker, wdir)})", "a drafter must use its worker's tokenizer: copy tokenizer.source")
    if spec.architecture.vocab_size != worker.architecture.vocab_size:
        yield (("architecture", "vocab_size"), f"vocab_size {spec.architecture.vocab_size} differs from worker "
               f"{worker.name}'s {worker.architecture.vocab_size}", "the drafter's logits index the worker's vocabulary")
    names = sorted(set(mine.special_tokens) | set(theirs.special_tokens))
    for name in names:
        a, b = mine.special_tokens.get(name), theirs.special_tokens.get(name)
        if a is None or b is None or (a.text, a.id) != (b.text, b.id):
            show = (lambda t: "absent" if t is None else f"{t.text!r} id {t.id}")
            yield (("tokenizer", "special_tokens", name) if a is not None else ("tokenizer", "special_tokens"),
                   f"special token '{name}' is {show(a)} here and {show(b)} in worker {worker.name}",
                   "copy the worker's special_tokens: the worker reads the drafter's ids")
    if _template(spec, spec_dir) != _template(worker, wdir):
        yield (("tokenizer", "chat_template") if mine.chat_template else ("tokenizer",),
               f"the chat template differs from worker {worker.name}'s", "use the worker's chat template file")
    k = spec.speculative.k if spec.speculative is not None else None
    verify_k = worker.shapes.decode.verify_k if worker.shapes.decode.enabled else None
    if k is not None and k != verify_k:
        yield (("speculative", "k"), f"the drafter drafts {k} tokens per call and worker {worker.name} "
               + (f"verifies {verify_k}" if verify_k else "exports no verify function"),
               f"set shapes.decode.verify_k: {k} in the worker's spec (its package then verifies k drafted tokens in one call)")
    if spec.architecture.max_context > worker.architecture.max_context:
        yield (("architecture", "max_context"), f"max_context {spec.architecture.max_context} exceeds worker "
               f"{worker.name}'s {worker.architecture.max_context}", "a drafter cannot draft past the worker's context")


def drafters_of(spec: Spec, spec_file: str) -> list[tuple[str, str]]:
    """(name, file) of the specs beside this one whose `drafts_for` names it (for the worker's README)."""
    from compiler.reading.loader import load_file  # safe YAML, as every spec is read

    if spec.role != "worker":
        return []
    here = os.path.abspath(spec_file)
    folder = os.path.dirname(here)
    out = []
    for entry in sorted(os.listdir(folder)):
        other = os.path.join(folder, entry)
        if other == here or not entry.endswith((".yaml", ".yml")):
            continue
        try:
            data = load_file(other).data
        except (OSError, SpecError):
            continue
        target = data.get("drafts_for") if isinstance(data, dict) else None
        if isinstance(target, str) and worker_path(folder, target) == here:
            out.append((str(data.get("name")), entry))
    return out
