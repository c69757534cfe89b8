"""Teacher generation (runtime/generation/): client overhead, the sparse store's size, resuming a cached job.

    .venv/bin/python bench/bench_generation.py [--requests N] [--rounds R] [--resume N]

1. Client overhead, 64 in flight, against tests/generation/server.py's ChatServer in echo mode (a
   canned 3-token answer, no model) in its own process (multiprocessing spawn: no shared GIL). Rows
   alternate over --rounds rounds (the machine is shared and noisy); each gives requests/s (wall;
   median and best round), the client's and the server's CPU ms per request (process_time) and
   1000 / client CPU ms (what one uncontended core allows the client):
   - raw: a minimal aiohttp client (one session, 64 connections): the server's capacity;
   - shipped_disk: `generate()` as shipped (Engine + TeacherClient: the body sent as is through
     `AsyncOpenAI.post`, over the SDK's default httpx2 transport), the cache in the temp folder on disk
     (each answer fsynced, in a worker thread);
   - shipped_tmpfs: the same with the cache on /dev/shm (no fsync cost); the rows below use it too;
   - httpx2_pool64: TeacherClient(http_client=httpx2.AsyncClient(limits: 64 connections, 64 keep-alive));
   - aiohttp_transport: TeacherClient(http_client=openai.DefaultAioHttpClient()), the SDK's aiohttp transport;
   - cache_hits: `generate()` rerun on the shipped_disk prompts once all are stored (nothing sent).
   Also cProfile of a shipped_disk and an aiohttp_transport batch (the event loop's thread: the engine's
   puts run in worker threads, unseen), and ResponseCache.put/s on disk, one at a time and from 8
   threads (concurrent fsyncs share journal commits).
2. Sparse store: 2,000 sequences x 200 tokens at k=20 (vocabulary 32,000) through SparseWriter;
   `SparseStore.bytes_per_token()` (every file, headers and meta.json included).
3. Resume: --resume (10,000) single-round prompts, all cached, each answer a realistic vLLM body
   (token ids, 50 tokens, chosen + top 20, float32 logprobs, bytes: ~140 kB) stored with
   ResponseCache.put (setup: os.fsync a no-op). `generate()` is timed with Engine.replay timed inside it;
   the server must see no request. A 300-entry sample splits the cost per entry (the small part
   replay reads; the body, its JSON and its logprobs, read later) and replay is profiled on it.

Goals: cache hits >= 2,000/s; fresh requests >= 500/s (2 cores); sparse <= 130 B/token at k=20;
replay of 10,000 cached prompts < 5 s. Writes bench/results/generation.json.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import multiprocessing as mp
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from importlib.metadata import version
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.generation.budget import Budget, Prices  # noqa: E402
from runtime.generation.cache import ResponseCache, request_key  # noqa: E402
from runtime.generation.client import Endpoint, TeacherClient  # noqa: E402
from runtime.generation.engine import Engine, Prompt, Settings, generate, message_of  # noqa: E402
from runtime.generation.sparse import SparseStore, SparseWriter  # noqa: E402
from runtime.generation.wire import parse_completion, request_extras  # noqa: E402

KEY, MODEL, IN_FLIGHT = "sk-bench-0123456789abcdef0123", "tiny-teacher", 64
parse = partial(parse_completion, mode="vllm")
SHM = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
WATCH = {"TeacherClient.complete": (("generation/client.py", "bench/bench_generation.py"), "complete"),
         "openai params transform": (("openai/_utils/_transform.py",), "async_transform"),
         "httpcore2 pool assignment": (("httpcore2/_async/connection_pool.py",), "_assign_requests_to_connections"),
         "ResponseCache.get": (("generation/cache.py",), "get"), "json.loads": (("json/__init__.py",), "loads"),
         "wire.parse_completion": (("generation/wire.py",), "parse_completion")}  # label: (file suffixes, function)


def serve(conn) -> None:
    """The echo server's process: answers each message with its url, request count and CPU seconds; 'stop' ends it."""
    from tests.generation.server import ChatServer

    with ChatServer(echo=True, api_key=KEY, model_name=MODEL, max_requests=10**9) as srv:
        while conn.recv() != "stop":
            conn.send({"url": srv.base_url, "requests": srv.stats.requests, "cpu_s": time.process_time()})


def ask(conn) -> dict:
    conn.send("stats")
    return conn.recv()


def settings(url: str, max_tokens: int = 16) -> Settings:
    return Settings(url, MODEL, {"temperature": 0.0, **request_extras("vllm", 20)}, max_tokens, tool_rounds=2)


def endpoint(url: str) -> Endpoint:
    return Endpoint(url, MODEL, "TEACHER_KEY", timeout_s=60, retries=2, max_in_flight=IN_FLIGHT)


def prompts(n: int, tag: str) -> list[Prompt]:
    return [Prompt(f"{tag}{i}", ({"role": "user", "content": f"[{tag}] Question {i}: explain distillation briefly."},))
            for i in range(n)]


def http_client(kind: str):
    import httpx2
    from openai import DefaultAioHttpClient

    if kind == "pool64":
        return httpx2.AsyncClient(limits=httpx2.Limits(max_connections=64, max_keepalive_connections=64), timeout=60)
    return DefaultAioHttpClient() if kind == "aiohttp" else None


async def through_engine(url: str, cache: Path, ps: list[Prompt], kind: str, cls=TeacherClient):
    """What generate() does, with a chosen http_client and client class; kind 'shipped' calls generate() itself."""
    if kind == "shipped":
        return await generate(ps, endpoint(url), KEY, settings(url), ResponseCache(cache), Budget(Prices()), parse)
    client = cls(endpoint(url), KEY, http_client=http_client(kind))
    try:
        return await Engine(settings(url), ResponseCache(cache), Budget(Prices()), parse).run(ps, client.complete, IN_FLIGHT)
    finally:
        await client.aclose()


async def raw(url: str, ps: list[Prompt]) -> int:
    import aiohttp

    bodies = [json.dumps({"model": MODEL, "messages": list(p.messages), "max_tokens": 16, **settings(url).body}).encode()
              for p in ps]
    slots, headers = asyncio.Semaphore(IN_FLIGHT), {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=IN_FLIGHT), headers=headers) as session:
        async def one(data: bytes) -> int:
            async with slots, session.post(f"{url}/chat/completions", data=data) as r:
                assert r.status == 200, r.status
                return len(await r.read())
        return (await asyncio.gather(*(one(b) for b in bodies)))[-1]


def measure(conn, fn) -> tuple[object, dict]:
    before, wall, cpu = ask(conn), time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu, after = time.perf_counter() - wall, time.process_time() - cpu, ask(conn)
    return out, {"wall_s": wall, "client_cpu_s": cpu, "server_cpu_s": after["cpu_s"] - before["cpu_s"],
                 "server_requests": after["requests"] - before["requests"]}


def profile(fn, top: int = 12) -> dict:
    prof = cProfile.Profile()
    prof.runcall(fn)
    stats = pstats.Stats(prof).stats  # (file, line, function) -> (primitive calls, calls, own s, cumulative s, callers)
    name = lambda k: f"{k[0].split('site-packages/')[-1].replace(str(ROOT) + '/', '')}:{k[1]}({k[2]})"  # noqa: E731
    watched = {label: round(max((v[3] for k, v in stats.items() if k[0].endswith(files) and k[2] == fn_), default=0.0), 3)
               for label, (files, fn_) in WATCH.items()}
    return {"profiled_total_s": round(sum(v[2] for v in stats.values()), 3), "cumulative_s_of": watched,
            "top_own_time": [{"function": name(k), "calls": v[1], "own_s": round(v[2], 3), "cum_s": round(v[3], 3)}
                             for k, v in sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]]}


def put_rate(folder: Path, threads: int, n: int = 400) -> float:
    cache, text = ResponseCache(folder), json.dumps({"choices": [{"message": {"content": "Hello from echo."}}]})
    message = {"content": "Hello from echo.", "tool_calls": []}
    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        list(pool.map(lambda i: cache.put(*request_key("http://x/v1", MODEL, {"i": i}, None), text, {}, message), range(n)))
        return round(n / (time.perf_counter() - start), 1)


def with_replay_times(fn) -> tuple[object, list[float]]:
    """(fn(), seconds of each Engine.replay inside it): what a resumed job does before sending anything."""
    times, original = [], Engine.replay

    def timed(engine, batch):
        start = time.perf_counter()
        out = original(engine, batch)
        times.append(time.perf_counter() - start)
        return out
    Engine.replay = timed
    try:
        return fn(), times
    finally:
        Engine.replay = original


def client_overhead(conn, url: str, tmp: Path, shm: Path, n: int, rounds: int) -> dict:
    rows = {"raw": None, "shipped_disk": ("shipped", tmp, TeacherClient), "shipped_tmpfs": ("shipped", shm, TeacherClient),
            "httpx2_pool64": ("pool64", shm, TeacherClient),
            "aiohttp_transport": ("aiohttp", shm, TeacherClient)}  # name: (http client, cache folder, client class)
    runs: dict[str, list[dict]] = {name: [] for name in [*rows, "cache_hits"]}
    for r in range(rounds):
        for name, spec in rows.items():
            ps = prompts(n, f"{name}-{r}-")
            if spec is None:
                body_bytes, m = measure(conn, lambda: asyncio.run(raw(url, ps)))
                runs[name].append({**m, "requests": n})
                continue
            folder = spec[1] / f"{name}-{r}"
            result, m = measure(conn, lambda: asyncio.run(through_engine(url, folder, ps, spec[0], spec[2])))
            assert result.sent == n and result.counts() == {"done": n}, (name, result.sent, result.counts())
            runs[name].append({**m, "requests": n})
            if name == "shipped_disk":  # every request is stored now: the rerun is all cache hits
                (result, m), replays = with_replay_times(lambda: measure(conn, lambda: asyncio.run(
                    through_engine(url, folder, ps, "shipped"))))
                assert result.sent == 0 and result.cached == n and m["server_requests"] == 0
                runs["cache_hits"].append({**m, "requests": n, "replay_s": replays[0]})
            shutil.rmtree(folder)
    summary = {}
    for name, ms in runs.items():
        rate = statistics.median(m["requests"] / m["wall_s"] for m in ms)
        per = lambda key: round(statistics.median(m[key] / m["requests"] for m in ms) * 1e3, 3)  # noqa: E731
        summary[name] = {"requests_per_s_median": round(rate, 1), "requests_per_s_best": round(max(m["requests"] / m["wall_s"] for m in ms), 1),
                         "client_cpu_ms_per_request": per("client_cpu_s"), "server_cpu_ms_per_request": per("server_cpu_s"),
                         "requests_per_round": n, "rounds": len(ms)}
        summary[name]["client_cpu_bound_per_s"] = round(1e3 / max(summary[name]["client_cpu_ms_per_request"], 1e-6), 1)
        if name == "cache_hits":
            summary[name]["replay_only_per_s_median"] = round(statistics.median(n / m["replay_s"] for m in ms), 1)
        elif name != "raw":
            summary[name]["ratio_to_raw"] = round(rate / summary["raw"]["requests_per_s_median"], 3)
    half = prompts(n // 2, "profile-")
    profiles = {"shipped_disk": profile(lambda: asyncio.run(through_engine(url, tmp / "prof", half, "shipped"))),
                "aiohttp_transport": profile(lambda: asyncio.run(through_engine(url, shm / "prof", half, "aiohttp")))}
    puts = {"disk_one_at_a_time": put_rate(tmp / "puts-1", 1), "disk_8_threads": put_rate(tmp / "puts-8", 8)}
    best = max((k for k in summary if k not in ("raw", "cache_hits")), key=lambda k: summary[k]["requests_per_s_median"])
    return {"in_flight": IN_FLIGHT, "echo_response_bytes": body_bytes, "rows": summary, "best_engine_row": best,
            "profiles": profiles, "cache_put_per_s": puts}


def sparse(tmp: Path, sequences: int = 2000, length: int = 200, k: int = 20, vocab: int = 32000) -> dict:
    rng, start = np.random.default_rng(0), time.perf_counter()
    with SparseWriter(tmp / "sparse", k, vocab_size=vocab) as writer:
        for _ in range(sequences):  # distinct ids per row (stride * (k-1) < vocab); a softmax's k best, 0.1-30% outside
            ids = (rng.integers(0, vocab, (length, 1)) + rng.integers(1, vocab // k, (length, 1)) * np.arange(k)) % vocab
            logits = -np.sort(-rng.normal(0, 2.5, (length, k)), axis=1)
            writer.append(ids, np.log(np.exp(logits) / np.exp(logits).sum(1, keepdims=True) * rng.uniform(0.7, 0.999, (length, 1))))
    write_s, store = time.perf_counter() - start, SparseStore(tmp / "sparse", vocab_size=vocab)
    assert store.n_tokens == sequences * length and store[0].ids.shape == (length, k)
    return {"sequences": sequences, "tokens_per_sequence": length, "k": k, "vocab_size": vocab, "write_s": round(write_s, 2),
            "files_bytes": {f.name: f.stat().st_size for f in sorted(store.path.iterdir())},
            "bytes_per_token": round(store.bytes_per_token(), 3)}


def vllm_body(rng: np.random.Generator, index: int, tokens: int = 50, k: int = 20) -> str:
    """A vLLM chat.completion body in token-id mode: per token the chosen id first, then the top k (float32 logprobs)."""
    entry = lambda t, lp: {"token": f"token_id:{t}", "logprob": lp, "bytes": list(f"token_id:{t}".encode())}  # noqa: E731
    content = []
    for _ in range(tokens):
        ids, logits = rng.choice(32000, k, replace=False).tolist(), -np.sort(-rng.normal(0, 2.5, k))
        lps = np.log(np.exp(logits) / np.exp(logits).sum() * rng.uniform(0.7, 0.999)).astype(np.float32).tolist()
        content.append({**entry(ids[0], lps[0]), "top_logprobs": [entry(i, lp) for i, lp in zip(ids, lps)]})
    message = {"role": "assistant", "content": " ".join(f"word{rng.integers(1000)}" for _ in range(tokens))}
    return json.dumps({"id": f"chatcmpl-{index}", "object": "chat.completion", "created": 0, "model": MODEL,
                       "choices": [{"index": 0, "message": message, "logprobs": {"content": content}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 24, "completion_tokens": tokens, "total_tokens": 24 + tokens}})


def resume(conn, url: str, tmp: Path, n: int, sample: int = 300) -> dict:
    rng = np.random.default_rng(1)
    texts = [vllm_body(rng, i) for i in range(16)]
    messages = [message_of(parse(json.loads(t))) for t in texts]
    assert len(parse(json.loads(texts[0])).tokens) == 50
    cache, ps = ResponseCache(tmp / "resume-cache"), prompts(n, "resume-")
    engine = Engine(settings(url, 64), cache, Budget(Prices()), parse)

    usages, start = [json.loads(t)["usage"] for t in texts], time.perf_counter()
    with mock.patch.object(os, "fsync", lambda fd: None):  # setup: the real put, without waiting for the disk
        for i, p in enumerate(ps):
            assert cache.put(*engine.key(engine.body(p, [dict(m) for m in p.messages])), texts[i % 16], usages[i % 16],
                             messages[i % 16])
    fill_s = time.perf_counter() - start
    split = dict.fromkeys(("cache_get", "cache_body_read_and_hash", "json_loads_body", "parse_completion"), 0.0)
    for p in ps[:sample]:  # one entry at a time; replay needs the first step only, the rest is what reading logprobs costs
        key, t0 = engine.key(engine.body(p, list(p.messages)))[0], time.perf_counter()
        entry = cache.get(key)
        t1 = time.perf_counter()
        text = cache.body(entry)
        t2 = time.perf_counter()
        data = json.loads(text)
        t3 = time.perf_counter()
        parse(data)
        for name, dt in zip(split, (t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3)):
            split[name] += dt / sample * 1e3
    replay_profile = profile(lambda: Engine(settings(url, 64), cache, Budget(Prices()), parse).replay(ps[:sample]), top=8)
    (result, m), replays = with_replay_times(lambda: measure(conn, lambda: asyncio.run(
        generate(ps, endpoint(url), KEY, settings(url, 64), cache, Budget(Prices()), parse))))
    assert result.sent == 0 and result.cached == n and result.counts() == {"done": n} and m["server_requests"] == 0
    return {"prompts": n, "tokens_per_answer": 50, "k": 20, "response_body_bytes": len(texts[0]),
            "cache_bytes": sum(f.stat().st_size for f in (tmp / "resume-cache").glob("??/*") if f.is_file()),
            "fill_s": round(fill_s, 1), "replay_s": round(replays[0], 2), "generate_s": round(m["wall_s"], 2),
            "requests_sent": result.sent, "server_requests": m["server_requests"],
            "replay_ms_per_prompt": round(replays[0] / n * 1e3, 3), "replay_cache_hits_per_s": round(n / replays[0], 1),
            "sample_ms_per_entry": {k: round(v, 3) for k, v in split.items()}, "replay_profile_sample": replay_profile}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=800, help="requests per row and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--resume", type=int, default=10_000, help="cached prompts to resume")
    args = ap.parse_args()
    import aiohttp, httpx2, openai  # noqa: E401,F401  (imported before anything is timed)

    load, ctx = os.getloadavg(), mp.get_context("spawn")
    conn, child = ctx.Pipe()
    server = ctx.Process(target=serve, args=(child,), daemon=True)
    server.start()
    url = ask(conn)["url"]
    try:
        with tempfile.TemporaryDirectory() as folder, tempfile.TemporaryDirectory(dir=SHM) as shm:
            client = client_overhead(conn, url, Path(folder), Path(shm), args.requests, args.rounds)
            store, resumed = sparse(Path(folder)), resume(conn, url, Path(folder), args.resume)
    finally:
        conn.send("stop")
        server.join(10)
    rows, best = client["rows"], client["best_engine_row"]
    hits, shipped, fastest = (rows[k]["requests_per_s_median"] for k in ("cache_hits", "shipped_disk", best))
    big = resumed["replay_cache_hits_per_s"]
    goals = {f"cache_hits_per_s ({client['echo_response_bytes']} B echo answers)": (hits, ">= 2000", hits >= 2000),
             f"cache_hits_per_s ({resumed['response_body_bytes']} B k=20 answers, replay)": (big, ">= 2000", big >= 2000),
             "fresh_requests_per_s_as_shipped": (shipped, ">= 500", shipped >= 500),
             f"fresh_requests_per_s_best ({best})": (fastest, ">= 500", fastest >= 500),
             "sparse_bytes_per_token_k20": (store["bytes_per_token"], "<= 130", store["bytes_per_token"] <= 130),
             f"replay_{args.resume}_cached_s": (resumed["replay_s"], "< 5", resumed["replay_s"] < 5)}
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), None)
    result = {
        "benchmark": "teacher generation: client overhead vs a loopback echo server, sparse store size, resume of cached prompts",
        "_machine": {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "platform": platform.platform(),
                     "loadavg_start": [round(x, 2) for x in load], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                     "versions": {p: version(p) for p in ("openai", "httpx2", "aiohttp", "numpy")},
                     "cache_disk": tempfile.gettempdir(), "cache_tmpfs": str(SHM)},
        "goals": {name: {"value": value, "goal": goal, "met": met} for name, (value, goal, met) in goals.items()},
        "client": client, "sparse": store, "resume": resumed,
    }
    out = ROOT / "bench" / "results" / "generation.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, g in result["goals"].items():
        print(f"{name}: {g['value']} (goal {g['goal']}) {'met' if g['met'] else 'NOT met'}")
    print(f"raw server {rows['raw']['requests_per_s_median']}/s; generate() on {args.resume} cached {resumed['generate_s']} s -> {out}")


if __name__ == "__main__":
    main()
