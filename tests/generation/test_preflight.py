"""Preflight against the loopback server: ids recoverable at k and spelling the text, the served
tokenizer checked, logit KD on only with the student's vocabulary, fatal answers before any work."""

from __future__ import annotations

import asyncio
import copy
import json
import shutil

import pytest

from runtime.generation.client import Endpoint, FatalTeacherError, TeacherClient
from runtime.generation.preflight import PreflightFailed, check_answer, preflight
from runtime.generation.wire import request_extras
from tests.generation.server import ChatServer, tiny_teacher

KEY = "sk-preflight-abcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def server(teacher_dir):
    with ChatServer(teacher_dir, api_key=KEY, default_max_tokens=8) as srv:
        yield srv


def run(server, teacher_tok, student_tok, *, mode="vllm", k=3, model="tiny-teacher"):
    async def go():
        client = TeacherClient(Endpoint(server.base_url, model, "K", retries=0, timeout_s=30), KEY)
        try:
            return await preflight(client.complete, model, {"temperature": 0.0, **request_extras(mode, k)}, mode, k,
                                   teacher_tok, student_tok)
        finally:
            await client.aclose()
    return asyncio.run(go())


def test_the_served_teacher_passes_and_shares_the_students_vocabulary(server, teacher_dir):
    result = run(server, teacher_dir, teacher_dir)
    assert result.positions == 8 and result.top_k == 3 and result.logit_kd and result.reason == ""


def test_another_student_vocabulary_turns_logit_kd_off_with_the_reason(server, teacher_dir, tmp_path):
    student = tmp_path / "student"
    shutil.copytree(teacher_dir, student)
    data = json.loads((student / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = sorted(t for t, i in vocab.items() if i in (100, 101))
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (student / "tokenizer.json").write_text(json.dumps(data))
    result = run(server, teacher_dir, student)
    assert not result.logit_kd and "id 100: teacher" in result.reason


def test_a_tokenizer_that_is_not_the_served_models_is_caught(server, tmp_path):
    other = tiny_teacher(tmp_path / "other", seed=1, vocab_size=300)
    with pytest.raises(PreflightFailed, match="is not the served model's"):
        run(server, other, other)


def test_fewer_alternatives_than_top_k_and_the_wrong_mode_are_refused(server, teacher_dir):
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
    data = client.chat.completions.with_raw_response.create(
        model="tiny-teacher", messages=[{"role": "user", "content": "hi"}], max_tokens=4, **request_extras("vllm", 3, openai_kwargs=True))
    data = json.loads(data.text)
    short = copy.deepcopy(data)
    short["choices"][0]["logprobs"]["content"][1]["top_logprobs"].pop()
    with pytest.raises(PreflightFailed, match=r"fewer than top_k=3 alternatives at 1 of \d+ positions .*--max-logprobs 3"):
        check_answer(short, "vllm", 3, teacher_dir)
    with pytest.raises(PreflightFailed, match="does not give token ids in mode token_ids: sglang"):
        check_answer(data, "sglang", 3, teacher_dir)
    assert check_answer(data, "vllm", 3, teacher_dir)[0] == 4


def test_a_wrong_model_name_is_fatal_before_any_work(server, teacher_dir):
    with pytest.raises(FatalTeacherError, match="HTTP 404.*check teacher.model"):
        run(server, teacher_dir, teacher_dir, model="tiny-teacher-v2")
