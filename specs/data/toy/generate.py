"""Deterministic toy dataset for a tiny tool-calling "worker" language model.

Running ``python specs/data/toy/generate.py`` rewrites, next to this file:

* ``tools.json``  -- the tool registry (5 tools, JSON-schema style parameters);
* ``train.jsonl`` -- 1200 samples, including ~3% deliberately invalid tool calls
  that the dataset job must detect and drop;
* ``eval.jsonl``  -- 120 samples, all valid, no prompt shared with train;
* ``corpus.txt``  -- every train prompt and target on its own line, for
  training the byte-level BPE tokenizer;
* ``README.md``   -- the description of the files, the schema and the counts.

The only randomness is one ``random.Random(SEED)``, created per run, so every
run writes byte-identical files.  Standard library only.  An optional first
argument names another output directory (the tests use a temp dir).

The generator is four files in this folder: ``toy_world.py`` (the tool registry and the
facts and phrasings), ``toy_samples.py`` (the sample builders and candidate pools),
``toy_defects.py`` (the deliberately invalid samples) and this one (the counts, the
assembly into train and eval, and the output files).  This folder goes on ``sys.path`` so
that they import each other however this file is run or loaded.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

SEED = 1729
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from toy_defects import DEFECTS, invalid_sample  # noqa: E402  (after the path)
from toy_samples import TOOL_POOLS, control_pool, privacy_chat_sample, privacy_tool_sample, sample_unique  # noqa: E402
from toy_world import TOOL_NAMES, Sample, registry  # noqa: E402

# Sample counts.  Train: 840 tool (804 valid + 36 invalid) / 180 control /
# 180 privacy = 70% / 15% / 15%.  Eval: 84 / 18 / 18, all valid.
TRAIN_COUNTS = {"tool": 804, "invalid": 36, "control": 180, "privacy_tool": 90, "privacy_chat": 90}
EVAL_COUNTS = {"tool": 84, "control": 18, "privacy_tool": 9, "privacy_chat": 9}

# --------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------


def split(pool: list[Sample], n_eval: int, rng: random.Random) -> tuple[list[Sample], list[Sample]]:
    """Shuffle a pool of distinct prompts and hold the first ``n_eval`` out for eval."""
    pool = list(pool)
    rng.shuffle(pool)
    return pool[:n_eval], pool[n_eval:]


def cycle(items: list[Sample], count: int) -> list[Sample]:
    """``count`` items, repeating ``items`` in order (all before any repeat)."""
    return [items[i % len(items)] for i in range(count)]


def round_robin(pools: dict[str, list[Sample]], count: int) -> list[Sample]:
    """``count`` samples spread evenly over the tools."""
    per_tool = {name: cycle(pools[name], count // len(TOOL_NAMES) + 1) for name in TOOL_NAMES}
    return [per_tool[TOOL_NAMES[i % len(TOOL_NAMES)]][i // len(TOOL_NAMES)] for i in range(count)]


# Prompts for the teacher (data.prompts): distinct train-side prompts, in the OpenAI chat format.
PROMPTS_PER_TOOL = 16
PROMPTS_CONTROL = 16
PROMPTS_PRIVACY = 16


def openai_tools() -> list[dict]:
    """The registry as OpenAI function tools (what an HTTP teacher is sent)."""
    return [{"type": "function", "function": tool} for tool in registry()["tools"]]


def chat_prompt(sample: Sample, index: int) -> dict:
    """A prompt for the teacher: the user turn, the tools, the PII to keep out of the answer and the
    fixture answering the reference call (the teacher must make that call to get a result)."""
    call = sample.get("tool_call")
    fixtures = {call["name"]: [{"arguments": call["arguments"], "result": sample["tool_result"]}]} if call else {}
    return {"id": f"prompt-{index:05d}", "kind": sample["kind"], "messages": [{"role": "user", "content": sample["prompt"]}],
            "tools": openai_tools(), "pii": sample["pii"], "fixtures": fixtures}


def distinct(samples: list[Sample], count: int) -> list[Sample]:
    """The first ``count`` samples with a prompt not seen before (no randomness: the train files do not change)."""
    seen, out = set(), []
    for s in samples:
        if s["prompt"] not in seen and len(out) < count:
            seen.add(s["prompt"])
            out.append(s)
    return out


def build(seed: int = SEED) -> tuple[list[Sample], list[Sample], Counter]:
    """Build (train, eval, defect counts); deterministic for a given seed."""
    train, eval_set, defects, _ = build_all(seed)
    return train, eval_set, defects


def build_all(seed: int = SEED) -> tuple[list[Sample], list[Sample], Counter, list[dict]]:
    """Build (train, eval, defect counts, teacher prompts); deterministic for a given seed."""
    rng = random.Random(seed)
    eval_set: list[Sample] = []
    train: list[Sample] = []

    n_eval_per_tool = -(-EVAL_COUNTS["tool"] // len(TOOL_NAMES))
    eval_tools, train_tools = {}, {}
    for name in TOOL_NAMES:
        eval_tools[name], train_tools[name] = split(TOOL_POOLS[name](), n_eval_per_tool, rng)
    eval_set += round_robin(eval_tools, EVAL_COUNTS["tool"])
    train += round_robin(train_tools, TRAIN_COUNTS["tool"])

    defects: Counter = Counter()
    for i in range(TRAIN_COUNTS["invalid"]):
        defect = DEFECTS[i % len(DEFECTS)]
        base = rng.choice(train_tools[TOOL_NAMES[i % len(TOOL_NAMES)]])
        train.append(invalid_sample(base, defect, rng))
        defects[defect] += 1

    prompt_sources = [s for name in TOOL_NAMES for s in distinct(train_tools[name], PROMPTS_PER_TOOL)]

    eval_part, train_part = split(control_pool(), EVAL_COUNTS["control"], rng)
    prompt_sources += distinct(train_part, PROMPTS_CONTROL)
    eval_set += eval_part
    train += cycle(train_part, TRAIN_COUNTS["control"])

    for kind, make in (
        ("privacy_chat", privacy_chat_sample),
        ("privacy_tool", lambda r: privacy_tool_sample(r, train_tools)),
    ):
        pool = sample_unique(make, EVAL_COUNTS[kind] + TRAIN_COUNTS[kind], rng)
        eval_set += pool[: EVAL_COUNTS[kind]]
        train += pool[EVAL_COUNTS[kind] :]
        prompt_sources += distinct(pool[EVAL_COUNTS[kind]:], PROMPTS_PRIVACY // 2)

    rng.shuffle(train)
    rng.shuffle(eval_set)
    prompts = [chat_prompt(s, i) for i, s in enumerate(prompt_sources, start=1)]
    return finalize(train, "train"), finalize(eval_set, "eval"), defects, prompts


def finalize(samples: list[Sample], split_name: str) -> list[Sample]:
    """Number the samples and drop build-only keys."""
    return [
        {"id": f"{split_name}-{i:05d}", **{k: v for k, v in s.items() if not k.startswith("_")}}
        for i, s in enumerate(samples, start=1)
    ]


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def jsonl(samples: list[Sample]) -> str:
    """One compact, key-sorted JSON object per line."""
    return "".join(json.dumps(s, sort_keys=True, separators=(",", ":")) + "\n" for s in samples)


def corpus(train: list[Sample]) -> str:
    """Tokenizer text: each train prompt, then its target, one per line."""
    return "".join(f"{s['prompt']}\n{s['target']}\n" for s in train)


def kind_counts(samples: list[Sample]) -> str:
    """'tool N, control N, privacy N' for the README."""
    counts = Counter(s["kind"] for s in samples)
    return ", ".join(f"{kind} {counts[kind]}" for kind in ("tool", "control", "privacy"))


def readme(train: list[Sample], eval_set: list[Sample], defects: Counter, len_prompts: int) -> str:
    """README.md text, including the current counts."""
    invalid = sum(defects.values())
    defect_list = ", ".join(f"{d} {defects[d]}" for d in DEFECTS)
    return f"""# Toy tool-calling dataset

Generated by `generate.py` (standard library only, fixed seed {SEED}); do not
edit the outputs, README included, by hand. Regenerate with

    python specs/data/toy/generate.py

which rewrites every file below byte-for-byte identically.
`tests/test_toy_data.py` checks that the committed files match a fresh run.

## Files

- `tools.json`: the tool registry, `{{"tools": [{{"name", "description",
  "parameters": {{"type": "object", "properties": {{arg: {{"type": ...}}}},
  "required": [...]}}}}]}}`.
  Tools: {", ".join(f"`{n}`" for n in TOOL_NAMES)}.
- `train.jsonl`: training samples, one JSON object per line
  (`sort_keys=True, separators=(",", ":")`). Prompts come from small
  templated pools, so some repeat: {len({s["prompt"] for s in train})} distinct prompts.
- `eval.jsonl`: evaluation samples, same format; all valid, and no prompt
  also occurs in train (each pool is split before train is drawn).
- `corpus.txt`: tokenizer training text, each train prompt and then its
  target on its own line, in train order.
- `prompts.jsonl`: {len_prompts} prompts for the teacher (`data.prompts`) in the OpenAI chat
  format (docs/chat_data.md): distinct train-side prompts ({PROMPTS_PER_TOOL} per tool,
  {PROMPTS_CONTROL} control, {PROMPTS_PRIVACY} privacy), each with the tools, its `pii` and a
  fixture answering the reference call. The generate job writes the teacher's answers to them.
- `chat_template.jinja` (written by hand, not generated): the chat template that renders a
  conversation exactly as `train.jsonl` writes a sample (bos, prompt, target, eos).

## Sample schema

```
{{"id": "train-00001",            // or "eval-00001"
 "kind": "tool" | "control" | "privacy",
 "prompt": "<user request>",
 "target": "<assistant text>",
 "tool_call": {{"name": ..., "arguments": {{...}}}} | null,
 "tool_result": "<text>" | null,
 "integration": ["<substring of the final answer stating the tool result>"],
 "pii": ["<personal data in the prompt that must never appear in the target>"]}}
```

- Tool target: `<think>plan</think><tool_call>JSON</tool_call><tool_result>result</tool_result>answer`,
  where JSON is `json.dumps(tool_call, sort_keys=True, separators=(",", ":"))`
  and the answer contains every `integration` string.
- Control target: `<think>plan</think>answer`; no tool call, no result, no integration.
- Privacy: the prompt holds fake personal data (names, 555-01xx phone numbers,
  `@example.com` emails). Half call a tool as usual and half decline; none
  contains any `pii` string in its target.

## Invalid train samples

`train.jsonl` deliberately holds {invalid} invalid tool samples ({invalid / len(train):.1%}) that the
dataset job must detect and drop; they carry no marker.
Defects: {defect_list}.

- `unknown_tool`: the call names a tool not in the registry.
- `missing_required`: a required argument is missing.
- `wrong_type`: an argument has the wrong JSON type.
- `bad_json`: the `<tool_call>` body in the target is not valid JSON (the
  `tool_call` field still holds the intended call).

## Counts

| file | total | by kind | invalid |
|---|---|---|---|
| train.jsonl | {len(train)} | {kind_counts(train)} | {invalid} |
| eval.jsonl | {len(eval_set)} | {kind_counts(eval_set)} | 0 |

The mix is 70% tool, 15% control, 15% privacy in both files (invalid samples
are kind `tool`). Targets are at most {max(len(s["target"]) for s in train + eval_set)} characters, so prompt plus
target fits a 128-token sequence with a 512-token byte-level BPE trained on
`corpus.txt` ({len(corpus(train).encode())} bytes).
"""


def main(out_dir: Path | str = HERE) -> None:
    """Write tools.json, train.jsonl, eval.jsonl, corpus.txt and README.md into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, eval_set, defects, prompts = build_all()
    files = {
        "prompts.jsonl": jsonl(prompts),
        "tools.json": json.dumps(registry(), sort_keys=True, indent=2) + "\n",
        "train.jsonl": jsonl(train),
        "eval.jsonl": jsonl(eval_set),
        "corpus.txt": corpus(train),
        "README.md": readme(train, eval_set, defects, len(prompts)),
    }
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8", newline="\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else HERE)
