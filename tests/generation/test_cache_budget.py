"""The response cache (write once, content-addressed, corrupt entries are misses) and the budget
(worst case reserved, reconciled with usage, never crossed)."""

from __future__ import annotations

import json
import threading

import pytest

from runtime.generation.budget import Budget, Prices, prompt_token_bound
from runtime.generation.cache import ResponseCache, request_key

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0.0}


def test_the_key_is_the_canonical_request_and_never_a_credential():
    k1, req = request_key("http://h/v1/", "m", BODY, "tok")
    k2, _ = request_key("http://h/v1", "m", dict(reversed(list(BODY.items()))), "tok")
    assert k1 == k2, "key order and a trailing slash do not matter"
    assert request_key("http://h/v1", "m", BODY | {"temperature": 0.5}, "tok")[0] != k1, "a changed setting misses"
    assert request_key("http://h/v1", "m", BODY, "other-tokenizer")[0] != k1
    assert "api_key" not in json.dumps(req) and set(req) == {"format", "endpoint", "model", "body", "teacher_tokenizer"}


MESSAGE = {"content": "hello", "tool_calls": []}


def test_an_entry_is_written_once_and_read_back(tmp_path):
    cache = ResponseCache(tmp_path)
    key, req = request_key("http://h/v1", "m", BODY, None)
    assert cache.get(key) is None and key not in cache
    assert cache.put(key, req, '{"choices": []}', {"prompt_tokens": 3, "completion_tokens": 2}, MESSAGE)
    assert not cache.put(key, req, '{"other": 1}', None, MESSAGE), "an existing entry is never overwritten"
    entry = cache.get(key)
    assert entry.message == MESSAGE and entry.usage == {"prompt_tokens": 3, "completion_tokens": 2}
    assert cache.body(entry) == '{"choices": []}', "the raw body, byte for byte"
    assert cache.count() == 1 and not list(tmp_path.rglob("*.tmp")), "no temporary file is left behind"


def test_a_body_left_by_a_killed_put_is_not_an_entry(tmp_path):
    cache = ResponseCache(tmp_path)
    key, req = request_key("http://h/v1", "m", BODY, None)
    body = cache.path(key).with_suffix(".body")
    body.parent.mkdir(parents=True)
    body.write_text("half a resp")  # killed between the two links: no .json, no entry
    assert cache.get(key) is None and cache.count() == 0
    assert cache.put(key, req, "{}", None, MESSAGE) and cache.body(cache.get(key)) == "{}"


@pytest.mark.parametrize("damage", ["truncate", "other_request", "not_json", "body_changed", "body_gone"])
def test_a_damaged_entry_is_a_miss_and_moved_aside(tmp_path, damage):
    cache = ResponseCache(tmp_path)
    key, req = request_key("http://h/v1", "m", BODY, None)
    cache.put(key, req, "{}", None, MESSAGE)
    path = cache.path(key)
    text = path.read_text()
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "other_request":
        data = json.loads(text)
        data["request"]["model"] = "another"
        path.write_text(json.dumps(data))
    elif damage == "not_json":
        path.write_text("garbage")
    elif damage == "body_changed":
        path.with_suffix(".body").write_text('{"x": 1}')
    else:
        path.with_suffix(".body").unlink()
    entry = cache.get(key)
    if damage == "body_changed":  # found by its hash when the body is read
        assert entry is not None and cache.body(entry) is None
    else:
        assert entry is None
    assert not path.exists() and (tmp_path / "corrupt" / path.name).exists()
    assert cache.put(key, req, "{}", None, MESSAGE), "the request can be stored again"


def test_names_are_never_paths(tmp_path):
    with pytest.raises(ValueError, match="not a cache key"):
        ResponseCache(tmp_path).path("../../etc/passwd")


def test_the_budget_reserves_the_worst_case_and_reconciles_with_usage():
    budget = Budget(Prices(max_usd=1.1, input_per_million=100.0, output_per_million=200.0))  # $0.1 / 1k in, $0.2 / 1k out
    r = budget.reserve(1000, 1000)  # worst case $0.3
    assert r is not None and budget.reserved == pytest.approx(0.3)
    assert budget.settle(r, {"prompt_tokens": 1000, "completion_tokens": 100}) == pytest.approx(0.12)
    assert budget.spent == pytest.approx(0.12) and budget.reserved == pytest.approx(0.0)
    with pytest.raises(RuntimeError, match="settled twice"):
        budget.settle(r, None)
    rs = [budget.reserve(1000, 1000) for _ in range(4)]
    assert [x is not None for x in rs] == [True, True, True, False], "0.12 + 3 x 0.3 fits under $1.10, a fourth does not"
    budget.release(rs[0])
    assert budget.reserve(1000, 1000) is not None, "a released reservation frees its room"


def test_a_token_cap_and_paid_responses_from_an_earlier_run():
    budget = Budget(Prices(max_tokens=100))
    budget.add_paid({"prompt_tokens": 40, "completion_tokens": 30})
    assert budget.reserve(20, 20) is None, "70 paid + 40 worst case > 100"
    assert budget.reserve(10, 20) is not None
    assert "70 tokens spent of 100 tokens" == budget.describe()


def test_no_interleaving_crosses_the_cap():
    budget = Budget(Prices(max_tokens=10_000))
    admitted = []

    def hammer():
        for _ in range(500):
            r = budget.reserve(7, 13)
            if r is not None:
                admitted.append(r)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 500 and budget.reserved == 10_000


def test_the_prompt_bound_covers_a_byte_level_tokenization():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    text = "naïve café — 東京 🚀 " * 20
    body = {"messages": [{"role": "user", "content": text}]}
    # an untrained byte-level BPE gives one token per byte: the worst case a real tokenizer can reach
    assert len(text.encode("utf-8")) <= prompt_token_bound(body)
