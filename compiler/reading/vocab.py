"""Vocabularies as token string -> id maps, and how two of them differ.

Logit KD compares a teacher's and a student's distributions id by id, so both tokenizers must map
every token string (special tokens included) to the same id. The teacher job checks this on the
real tokenizer files; the compiler checks it earlier whenever both folders are local
(compiler/reading/rules.py). Both word the difference with `vocabulary_differences`.

`read_vocab` parses `tokenizer.json` as plain JSON (the compiler does not import `tokenizers`):
the model's vocabulary (a dict for BPE and WordPiece, a list of `[token, score]` for Unigram)
plus `added_tokens`, which is what `tokenizers`' `get_vocab(with_added_tokens=True)` returns.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_vocab(path: Path) -> dict[str, int] | None:
    """token string -> id from a tokenizer.json, or None when the file is not one this reader knows
    (the teacher job reads it with `tokenizers` and says what is wrong)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        vocab = data["model"]["vocab"]
        if isinstance(vocab, dict):
            out = {str(tok): int(i) for tok, i in vocab.items()}
        elif isinstance(vocab, list):  # Unigram: ids are positions
            out = {str(entry[0]): i for i, entry in enumerate(vocab)}
        else:
            return None
        for added in data.get("added_tokens") or []:
            out[str(added["content"])] = int(added["id"])
        return out
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def vocabulary_differences(teacher: dict[str, int], student: dict[str, int], limit: int = 5) -> str:
    """'' when the maps are equal, else the first differing tokens by id, then the sizes."""
    if teacher == student:
        return ""
    by_id_t = {i: s for s, i in teacher.items()}
    by_id_s = {i: s for s, i in student.items()}
    diffs = [f"id {i}: teacher {by_id_t.get(i)!r}, student {by_id_s.get(i)!r}"
             for i in sorted(set(by_id_t) | set(by_id_s)) if by_id_t.get(i) != by_id_s.get(i)]
    return "; ".join(diffs[:limit]) + (f" (and {len(diffs) - limit} more)" if len(diffs) > limit else "") + \
        f"; teacher {len(teacher)} tokens, student {len(student)}"
