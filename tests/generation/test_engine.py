"""The generation engine against a real loopback server (tests/generation/server.py): tool rounds
answered from fixtures, the cache on a rerun, retries and their waits, failures within the
tolerated rate, fatal answers that stop at once without the key, the budget with 64 in flight,
and no stored answer paid twice after kill -9 at random moments."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.generation.budget import Budget, Prices
from runtime.generation.cache import ResponseCache
from runtime.generation.client import Endpoint, FatalTeacherError
from runtime.generation.engine import Prompt, Settings, generate
from runtime.generation.wire import parse_completion, request_extras
from tests.generation.server import ChatServer

KEY = "sk-test-0123456789abcdef0123456789"
ROOT = Path(__file__).resolve().parents[2]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def script(body: dict) -> dict | None:
    """Tool prompts call get_weather once, then answer from the tool's result; others generate freely."""
    if not body.get("tools"):
        return None
    last = body["messages"][-1]
    if last["role"] == "tool":
        return {"content": f"It is {json.loads(last['content'])['sky']}."}
    city = body["messages"][-1]["content"].split()[-1]
    return {"tool_calls": [{"name": "get_weather", "arguments": {"city": city}}]}


def prompts(n: int, tools_every: int = 2, fixtures: bool = True) -> list[Prompt]:
    out = []
    for i in range(n):
        if i % tools_every == 0:
            fx = {"get_weather": [{"arguments": {"city": f"C{i}"}, "result": {"sky": "sunny"}}]} if fixtures else {}
            out.append(Prompt(f"p{i}", ({"role": "user", "content": f"weather in C{i}"},), (WEATHER,), fx))
        else:
            out.append(Prompt(f"p{i}", ({"role": "user", "content": f"Say hello {i}"},)))
    return out


@pytest.fixture(scope="module")
def server(teacher_dir):
    with ChatServer(teacher_dir, api_key=KEY, script=script, default_max_tokens=4) as srv:
        yield srv


@pytest.fixture(autouse=True)
def fresh(server):
    server.stats.reset()
    server.faults = []


def run(server_url: str, cache: Path, ps: list[Prompt], *, retries: int = 3, timeout: float = 20.0, budget=None,
        in_flight: int = 4, max_tokens: int = 40, key: str = KEY, model: str = "tiny-teacher"):
    ep = Endpoint(server_url, model, "TEACHER_KEY", timeout_s=timeout, retries=retries, max_in_flight=in_flight)
    settings = Settings(server_url, model, {"temperature": 0.0, **request_extras("vllm", 3)}, max_tokens, tool_rounds=2)
    return asyncio.run(generate(ps, ep, key, settings, ResponseCache(cache), budget or Budget(Prices()),
                                lambda d: parse_completion(d, "vllm")))


def test_tool_rounds_from_fixtures_and_a_rerun_sends_nothing(server, tmp_path):
    ps = prompts(6)
    result = run(server.base_url, tmp_path / "cache", ps)
    assert result.counts() == {"done": 6} and result.sent == 9, "3 tool prompts x 2 rounds + 3 plain prompts"
    tool = result.outcomes[0]
    assert [m["role"] for m in tool.messages] == ["user", "assistant", "tool", "assistant"]
    assert tool.messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert tool.messages[2]["tool_call_id"] == tool.messages[1]["tool_calls"][0]["id"]
    assert tool.messages[3]["content"] == "It is sunny." and tool.fixture_hits == tool.fixture_calls == 1
    paid = server.stats.paid
    again = run(server.base_url, tmp_path / "cache", ps)
    assert server.stats.paid == paid and again.sent == 0 and again.cached == 9
    assert [o.messages for o in again.outcomes] == [o.messages for o in result.outcomes]


def test_a_call_without_a_fixture_drops_the_sample(server, tmp_path):
    result = run(server.base_url, tmp_path / "cache", prompts(2, fixtures=False))
    assert result.counts() == {"dropped": 1, "done": 1} and result.reasons() == {"no_fixture": 1}
    assert result.outcomes[0].fixture_calls == 1 and result.outcomes[0].fixture_hits == 0


def test_transient_faults_are_retried_honouring_retry_after(server, tmp_path):
    # three kinds (the client's own backoff doubles per retry: more faults cost seconds, not coverage;
    # tests/generation/test_server.py maps every fault to its client error)
    server.faults = [("429", 0.5), ("503",), ("truncated",)]
    result = run(server.base_url, tmp_path / "cache", [prompts(2)[1]], retries=3, in_flight=1)
    assert result.counts() == {"done": 1}
    stats = server.stats.snapshot()
    assert stats["requests"] == 4 and stats["paid"] == 1, "three faults, then the answer"
    assert stats["arrivals"][1] - stats["arrivals"][0] >= 0.45, "the client waited for Retry-After"


def test_a_prompt_still_failing_is_recorded_with_its_reason(server, tmp_path):
    server.faults = lambda i: ("503",) if i < 3 else None
    result = run(server.base_url, tmp_path / "cache", [prompts(2)[1]], retries=2, in_flight=1)
    assert result.counts() == {"failed": 1} and result.reasons() == {"http_503": 1}
    assert server.stats.requests == 3, "one try and two retries"


def test_stall_past_the_timeout_is_a_timeout(server, tmp_path):
    server.faults = [("stall", 2.0)]
    result = run(server.base_url, tmp_path / "cache", [prompts(2)[1]], retries=0, timeout=0.5, in_flight=1)
    assert result.reasons() == {"timeout": 1}


@pytest.mark.parametrize("fault,status,hint", [
    (("401",), 401, "check the key in $TEACHER_KEY"),
    (("404",), 404, "check teacher.model"),
    (("429_quota",), 429, "no quota left"),
])
def test_fatal_answers_stop_at_once_and_never_show_the_key(server, tmp_path, fault, status, hint):
    server.faults = [fault] * 50
    with pytest.raises(FatalTeacherError) as err:
        run(server.base_url, tmp_path / "cache", prompts(8), retries=2, in_flight=1)
    message = str(err.value)
    assert f"HTTP {status}" in message and server.base_url in message and hint in message
    assert KEY not in message and KEY[3:15] not in message
    limit = 3 if fault[0] == "429_quota" else 1  # the client retries every 429 before it can see the code
    assert server.stats.requests <= limit, "nothing else was sent after the fatal answer"


def test_a_wrong_key_from_the_real_server_is_redacted(server, tmp_path):
    wrong = "sk-wrong-key-abcdefghijklmnop"
    with pytest.raises(FatalTeacherError) as err:
        run(server.base_url, tmp_path / "cache", prompts(1), key=wrong)
    assert "HTTP 401" in str(err.value) and wrong not in str(err.value)


def test_the_budget_is_never_exceeded_with_64_in_flight(tmp_path):
    with ChatServer(echo=True, api_key=KEY, default_max_tokens=8) as srv:
        # every answer takes a while, so 64 are really in flight (0.2 s let a loaded 2-core CI machine reach only 45)
        srv.faults = lambda i: ("stall", 0.5)
        # Each prompt is ~200 words (~1,100 bytes): its worst case is ~1,200 tokens, its real cost ~210. 64 worst
        # cases (~77k) fit under the cap, and 400 real costs (~84k) do not, so the cap is reached whatever the timing.
        cap = 80_000
        budget = Budget(Prices(max_tokens=cap))
        filler = " ".join(f"word{j}" for j in range(200))
        result = run(srv.base_url, tmp_path / "cache", [Prompt(f"p{i}", ({"role": "user", "content": f"hi {i} {filler}"},))
                                                        for i in range(400)], budget=budget, in_flight=64, max_tokens=8)
        stats = srv.stats.snapshot()
    assert stats["max_in_flight"] >= 48, stats["max_in_flight"]
    assert result.stopped and result.counts()["done"] == stats["paid"] < 400
    assert budget.spent <= cap and budget.reserved == 0
    assert result.counts()["not_admitted"] == 400 - stats["paid"]


def test_no_stored_answer_is_paid_twice_after_kill_9(server, tmp_path):
    """Kill the generating process at random moments; each rerun pays only for requests whose
    answers were not stored when it started."""
    ps = [{"id": p.id, "messages": list(p.messages), "tools": list(p.tools), "fixtures": p.fixtures} for p in prompts(24)]
    cache = tmp_path / "cache"
    rng = random.Random(7)
    env = os.environ | {"TEACHER_KEY": KEY, "PYTHONPATH": str(ROOT)}
    for attempt in range(3):
        done = tmp_path / f"done-{attempt}"
        args = tmp_path / f"args-{attempt}.json"
        args.write_text(json.dumps({"base_url": server.base_url, "cache": str(cache), "prompts": ps, "in_flight": 4,
                                    "max_tokens": 40, "done": str(done)}))
        stored_before = {p.stem for p in cache.glob("??/*.json")}
        server.stats.reset()
        proc = subprocess.Popen([sys.executable, "-m", "tests.generation.engine_child", str(args)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        last = attempt == 2
        if not last:
            deadline = time.monotonic() + 30
            target = rng.randint(2, 10)
            while server.stats.paid < target and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        if last:
            assert proc.returncode == 0, err.decode()[-2000:]
        from runtime.generation.cache import request_key
        paid = [request_key(server.base_url, "tiny-teacher", {k: v for k, v in b.items()}, None)[0]
                for b in server.stats.snapshot()["paid_bodies"]]
        assert not set(paid) & stored_before, f"attempt {attempt}: a stored answer was requested again"
    summary = json.loads((tmp_path / "done-2").read_text())
    assert summary["counts"] == {"done": 24}
    assert len({p.stem for p in cache.glob("??/*.json")}) == 36, "12 tool prompts x 2 rounds + 12 plain prompts"


def test_an_answer_that_does_not_parse_is_paid_but_never_stored(server, tmp_path):
    """A vLLM-style answer read as SGLang's: the prompt fails ('unparseable'), nothing is cached, so a
    rerun with the right mode asks again instead of failing on the stored body."""
    ep = Endpoint(server.base_url, "tiny-teacher", "TEACHER_KEY", retries=0, max_in_flight=2)
    settings = Settings(server.base_url, "tiny-teacher", {"temperature": 0.0, **request_extras("vllm", 3)}, 8, tool_rounds=2)
    budget = Budget(Prices(max_tokens=100_000))
    result = asyncio.run(generate(prompts(4)[1::2], ep, KEY, settings, ResponseCache(tmp_path / "cache"), budget,
                                  lambda d: parse_completion(d, "sglang")))
    assert result.reasons() == {"unparseable": 2} and budget.spent > 0
    assert ResponseCache(tmp_path / "cache").count() == 0
    assert run(server.base_url, tmp_path / "cache", prompts(4)[1::2]).counts() == {"done": 2}
