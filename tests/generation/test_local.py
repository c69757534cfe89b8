"""The local teacher (runtime/generation/local.py) and the generate job's failure path.

The local teacher stands where the HTTP server would for the `train` and `hf_local` kinds: these tests
check that its turn parser splits text as vLLM's hermes-style parsers do, that batching with left
padding changes no answer, that answers are cut at the stop ids and at max_tokens, that a rerun is
answered from the response cache with no generation, and that the generate job fails past its
tolerated failure rate with a message naming the reasons.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from runtime.generation.local import Markers, split_turn

MARKERS = Markers(call=("<tool_call>", "</tool_call>"), think=("<think>", "</think>"))


@pytest.mark.parametrize("text, want", [
    ('<think>Plan.</think><tool_call>{"arguments":{"city":"Paris"},"name":"get_weather"}</tool_call>',
     {"content": None, "reasoning_content": "Plan.", "tool_calls": [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]}),
    ("<think>Sum.</think>2+2 is 4.", {"content": "2+2 is 4.", "reasoning_content": "Sum.", "tool_calls": []}),
    ('<tool_call>{"name":"a","arguments":{}}</tool_call><tool_call>{"name":"b","arguments":{"x":1}}</tool_call>',
     {"content": None, "reasoning_content": None,
      "tool_calls": [{"name": "a", "arguments": "{}"}, {"name": "b", "arguments": '{"x": 1}'}]}),
    # a call that is not JSON, or not {"name": str, "arguments": {...}}, stays in the content (as vLLM leaves it)
    ('Sure.<tool_call>{"name": "a", "arguments": {</tool_call>',
     {"content": 'Sure.<tool_call>{"name": "a", "arguments": {</tool_call>', "reasoning_content": None, "tool_calls": []}),
    ('<tool_call>{"name": "a", "arguments": "x=1"}</tool_call>',
     {"content": '<tool_call>{"name": "a", "arguments": "x=1"}</tool_call>', "reasoning_content": None, "tool_calls": []}),
    # an unclosed think block is content, not reasoning
    ("<think>never closed", {"content": "<think>never closed", "reasoning_content": None, "tool_calls": []}),
    ("", {"content": "", "reasoning_content": None, "tool_calls": []}),
])
def test_split_turn(text, want):
    assert split_turn(text, MARKERS) == want


def _teacher(teacher_dir: Path, batch: int):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from runtime.data.chat import ChatTemplate
    from runtime.generation.local import LocalTeacher

    tok = AutoTokenizer.from_pretrained(str(teacher_dir))
    model = LlamaForCausalLM.from_pretrained(str(teacher_dir), attn_implementation="eager").to(torch.float32).eval()
    return LocalTeacher(model, tok, ChatTemplate.from_tokenizer(tok), MARKERS, [tok.eos_token_id], name="tiny",
                        batch=batch, temperature=0.0, seed=0)


BODIES = [{"messages": [{"role": "user", "content": text}], "max_tokens": n}
          for text, n in (("hi", 12), ("What is the weather in Paris today?", 12), ("Add lunch on Monday at noon.", 5),
                          ("Set a timer for tea, five minutes, please, and then remind me.", 12))]


async def _complete_all(teacher, bodies):
    return await asyncio.gather(*(teacher.complete(b, 0) for b in bodies))


def test_batching_with_left_padding_changes_no_answer(teacher_dir):
    together = _teacher(teacher_dir, batch=4)
    alone = _teacher(teacher_dir, batch=1)
    a = asyncio.run(_complete_all(together, BODIES))
    b = [asyncio.run(_complete_all(alone, [body]))[0] for body in BODIES]
    assert together.batches == 1 and alone.batches == 4
    for (_, da), (_, db), body in zip(a, b, BODIES):
        assert da["choices"][0]["message"] == db["choices"][0]["message"]
        assert da["usage"] == db["usage"]
        assert da["usage"]["completion_tokens"] <= body["max_tokens"]
        assert da["usage"]["prompt_tokens"] == len(together.tok(together.prompt_text(body), add_special_tokens=False)["input_ids"])
    # the random tiny model rarely writes eos: an answer that reached max_tokens says so
    lengths = [(d["choices"][0]["finish_reason"], d["usage"]["completion_tokens"], body["max_tokens"]) for (_, d), body in zip(a, BODIES)]
    assert all((f == "length") == (n == m) for f, n, m in lengths), lengths


def test_generation_stops_at_a_stop_id(teacher_dir):
    """Every token the greedy teacher writes for this prompt is made a stop id in turn: the answer ends
    right before it, and finish_reason is stop."""
    teacher = _teacher(teacher_dir, batch=1)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    enc = teacher.tok(teacher.prompt_text(body), add_special_tokens=False, return_tensors="pt")
    ids = teacher.model.generate(**enc, max_new_tokens=8, do_sample=False, eos_token_id=teacher.stop_ids,
                                 pad_token_id=teacher.tok.pad_token_id)[0, enc["input_ids"].shape[1]:].tolist()
    _, free = asyncio.run(_complete_all(teacher, [body]))[0]
    assert len(ids) == 8 and free["usage"]["completion_tokens"] == 8 and free["choices"][0]["finish_reason"] == "length"
    assert free["choices"][0]["message"]["content"] == teacher.tok.decode(ids)
    teacher.stop_ids = [ids[3]]
    _, cut = asyncio.run(_complete_all(teacher, [body]))[0]
    first = ids.index(ids[3])
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["message"]["content"] == teacher.tok.decode(ids[:first])
    assert cut["usage"]["completion_tokens"] == first + 1  # the stop token counts, as servers count it


def test_a_rerun_is_answered_from_the_cache(teacher_dir, tmp_path):
    from runtime.generation.budget import Budget, Prices
    from runtime.generation.cache import ResponseCache
    from runtime.generation.engine import Engine, Prompt, Settings
    from runtime.generation.wire import parse_completion

    prompts = [Prompt(f"p{i}", (b["messages"][0],)) for i, b in enumerate(BODIES)]
    results = []
    for attempt in range(2):
        teacher = _teacher(teacher_dir, batch=4)
        engine = Engine(Settings("local:test", "weights-sha256:x", {"temperature": 0.0}, 6, tool_rounds=1),
                        ResponseCache(tmp_path / "cache"), Budget(Prices()), lambda d: parse_completion(d, "vllm"))
        finished = []
        engine.on_answer = lambda out: finished.append(out.prompt_id) if out.status != "pending" else None
        result = asyncio.run(engine.run(prompts, teacher.complete, in_flight=8))
        results.append((result, teacher.batches, sorted(finished)))
    (first, batches1, done1), (second, batches2, done2) = results
    assert batches1 >= 1 and first.sent == 4
    assert batches2 == 0 and second.sent == 0 and second.cached == 4
    assert done1 == done2 == ["p0", "p1", "p2", "p3"]
    assert [o.messages for o in first.outcomes] == [o.messages for o in second.outcomes]
    assert all(o.truncated for o in first.outcomes)  # 6 tokens: the random model is always cut


def test_the_job_fails_past_its_failure_rate_naming_the_reasons(teacher_dir, tmp_path):
    """A random teacher never finishes an answer within 6 tokens: every prompt is dropped (max_tokens), the
    report is still written, and the error says how many failed, why, and which fields to change."""
    from compiler.planning.params import GenerateParams, SpecialTokenP
    from runtime.context import JobContext
    from runtime.generation.progress import read_progress
    from runtime.jobs.generate import GenerateJobError, run

    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": f"p{i}", "kind": "control", "messages": [{"role": "user", "content": f"hello {i}"}]} for i in range(5)]
    rows.append({"id": "p0", "kind": "control", "messages": [{"role": "user", "content": "again"}]})  # duplicate id
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n", encoding="utf-8")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(teacher_dir))
    special = {"pad": SpecialTokenP(text=tok.pad_token, id=tok.pad_token_id), "bos": SpecialTokenP(text=tok.bos_token, id=tok.bos_token_id),
               "eos": SpecialTokenP(text=tok.eos_token, id=tok.eos_token_id),
               "tool_call_start": SpecialTokenP(text="<tool_call>", id=0), "tool_call_end": SpecialTokenP(text="</tool_call>", id=0)}
    params = GenerateParams(teacher_kind="hf_local", prompts=str(prompts), max_tokens=6, temperature=0.0, tool_rounds=1, batch=4,
                            max_failure_rate=0.5, seed=0, top_k=4, max_seq_len=64, special_tokens=special)
    ctx = JobContext(job_id="generate", spec_dir=tmp_path, work_dir=tmp_path / "work", provenance={}, cache_dir=tmp_path / "cache")
    out = tmp_path / "out"
    with pytest.raises(GenerateJobError) as err:
        run(params, {"tokenizer": {"tokenizer": teacher_dir}, "teacher": {"model": teacher_dir}}, out, ctx)
    message = str(err.value)
    assert "5 of 5 prompts (100.0%)" in message and "{'max_tokens': 5}" in message and "max_failure_rate 0.5" in message
    report = json.loads((out / "report.json").read_text())
    assert report["prompts_dropped_by_reason"] == {"bad_line": 1, "duplicate_id": 1}
    assert report["metrics"]["failure_rate"] == {"value": 1.0, "n": 5}
    assert read_progress(tmp_path / "work") == {**read_progress(tmp_path / "work"), "prompts": 5, "finished": 5}
