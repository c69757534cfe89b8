"""Cross-field rules about the teacher and its prompts: generation settings, an HTTP teacher's fields and
loss terms, and the shared vocabulary logit KD needs (known at compile time when both tokenizers are local).

Each rule yields `(path, message, hint)`, as the rules of `rules.py`, which runs them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path as PathLib
from typing import Iterator

from compiler.core.errors import Path
from compiler.reading.vocab import read_vocab, vocabulary_differences
from compiler.schema.spec import Spec
from compiler.schema.teacher import HfLocalTeacher, OpenAICompatibleTeacher, TrainTeacher
from compiler.schema.tokenizer import BpeSource, PretrainedSource
from compiler.schema.training import loss_used

Finding = tuple[Path, str, str | None]


def prompts(spec: Spec) -> Iterator[Finding]:
    """data.prompts needs a teacher that can answer them and a chat template to render them."""
    if spec.data.prompts is None:
        return
    t = spec.teacher
    if isinstance(t, (TrainTeacher, HfLocalTeacher)) and t.generation is None:
        yield (("teacher",), "data.prompts is set and the teacher has no generation settings",
               "add teacher.generation: {max_tokens: ...} (docs/teachers.md), or drop data.prompts")
    if isinstance(spec.tokenizer.source, BpeSource) and spec.tokenizer.chat_template is None:
        yield (("tokenizer",), "data.prompts are chat conversations, and a tokenizer trained from a corpus has no chat "
               "template to render them with", "set tokenizer.chat_template to a Jinja template file (docs/chat_data.md)")


def teacher(spec: Spec) -> Iterator[Finding]:
    t = spec.teacher
    if not isinstance(t, OpenAICompatibleTeacher):
        return
    base = ("teacher",)
    if not re.match(r"^https?://[^\s/]+", t.base_url):
        yield (base + ("base_url",), f"'{t.base_url}' is not an http(s) URL", "e.g. https://api.moonshot.ai/v1 or http://10.0.0.5:8000/v1")
    if t.token_ids == "bytes" and t.tokenizer is None and t.top_k > 0:
        yield (base + ("tokenizer",), "token_ids: bytes maps each token's bytes to an id through the served model's tokenizer, "
               "and none is given", "set teacher.tokenizer to a local folder holding the served model's tokenizer.json")
    if spec.data.prompts is None:
        yield (base + ("kind",), "an openai_compatible teacher writes its transcripts for data.prompts, and data.prompts is not set",
               "set data.prompts to a JSONL file of chat prompts (docs/chat_data.md)")
    # Logit KD from an HTTP teacher: the generated rows hold the teacher's own token ids and the KL compares the
    # student with its top-k logprobs plus the mass outside them (runtime/train/sparse_kl.py), on those rows only.
    kl = spec.training.losses.kl
    if loss_used(kl):
        if t.top_k == 0:
            yield (("training", "losses", "kl"), "logit KD (kl) needs the teacher's top logprobs, and teacher.top_k is 0",
                   "set teacher.top_k (1-20), or drop losses.kl (sequence-level KD: ce_ground_truth on the transcripts)")
        elif t.tokenizer is None:
            yield (("training", "losses", "kl"), "logit KD (kl) compares teacher and student id by id, which needs the served "
                   "model's tokenizer to equal the student's, and teacher.tokenizer is not set",
                   "set teacher.tokenizer to the served model's tokenizer folder, or drop losses.kl (sequence-level KD)")
        if kl.temperature != 1.0:
            yield (("training", "losses", "kl", "temperature"), f"temperature {kl.temperature:g} cannot apply to an HTTP teacher's "
                   "logprobs: they are its temperature-1 top k plus the mass outside them, which cannot be re-tempered",
                   "set temperature: 1.0 (runtime/train/sparse_kl.py)")
    # ce_teacher and length_kd read a dense teacher distribution at every position of every row
    for name, what in (("ce_teacher", "cross-entropy on the teacher's top-1 (ce_teacher)"),
                       ("length_kd", "length-aware KD (length_kd)")):
        term = getattr(spec.training.losses, name)
        if loss_used(term):
            yield (("training", "losses", name), f"{what} needs the teacher's distribution at every position of every "
                   "training row (ready-made rows included), which an openai_compatible teacher does not give",
                   "drop it: kl distils the teacher's logprobs on its transcripts, ce_ground_truth its tokens")


def is_local_relative(path: str) -> bool:
    return "://" not in path and not os.path.isabs(path)


def shared_vocabulary(spec: Spec, spec_dir: str) -> Iterator[Finding]:
    """An hf_local teacher's tokenizer must be the student's (logit KD compares ids); known at compile
    time when both folders are local: the student's is the pretrained source plus the spec's special
    tokens the source lacks (the tokenizer job appends them at their ids)."""
    src = spec.tokenizer.source
    t = spec.teacher
    if isinstance(t, HfLocalTeacher):
        folder, key = t.path, ("teacher", "path")
    elif isinstance(t, OpenAICompatibleTeacher) and t.tokenizer is not None and loss_used(spec.training.losses.kl):
        folder, key = t.tokenizer, ("teacher", "tokenizer")  # logit KD from an HTTP teacher
    else:
        return
    if not isinstance(src, PretrainedSource):
        return  # a corpus-trained student tokenizer exists only after its job: the generate job checks before any request
    paths = [os.path.join(spec_dir, p) if is_local_relative(p) else p for p in (folder, src.path)]
    if any("://" in p for p in paths):
        return
    teacher, student = (read_vocab(PathLib(p) / "tokenizer.json") for p in paths)
    if teacher is None or student is None:
        return  # not there or not readable as JSON: the job that loads it says what is wrong
    for tok in spec.tokenizer.special_tokens.values():
        student.setdefault(tok.text, tok.id)
    problems = vocabulary_differences(teacher, student)
    if problems:
        yield (key, f"the teacher's tokenizer differs from the student's (tokenizer.source.path plus the "
               f"spec's special tokens), so its logits cannot be distilled id by id: {problems}",
               "distil from a teacher saved with the student's tokenizer, or start the student's tokenizer from the "
               "teacher's folder (tokenizer.source.path)")
