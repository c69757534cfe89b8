"""The generate job in a plan with an openai_compatible teacher, against the loopback server.

A tiny spec (specs/toy.yaml made small) whose teacher is the loopback ChatServer: `modelspec run`
starts the plan, the generate job sends the prompts through the real openai client (scripted tool
calls and answers, teacher-forced through the server's tiny model, so logprobs and token ids are
real), and the transcripts join the student's train split (sequence-level KD). The server counts
every paid request, so the tests prove: a rerun pays nothing, a budget stop leaves a resumable state
and the rerun with a raised cap pays only for what was missing, and a missing key fails before any
request with nothing about the key in any output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.generation.server import ChatServer
from tests.runtime.test_pipeline_resume import tiny_spec

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-generate-job-0123456789abcdefghijklmnop"
ENV_NAME = "TINY_TEACHER_KEY"
N_PROMPTS = 10


def _prompts(folder: Path) -> Path:
    """Toy prompts, each offered only the tool its fixture answers (the tiny server model has 512 positions)."""
    rows = []
    for line in (ROOT / "specs" / "data" / "toy" / "prompts.jsonl").read_text(encoding="utf-8").splitlines():
        p = json.loads(line)
        names = set(p["fixtures"])
        p["tools"] = [t for t in p["tools"] if t["function"]["name"] in names]
        rows.append(p)
    picked = [p for p in rows if p["kind"] == "tool"][::10][:N_PROMPTS - 2] + [p for p in rows if p["kind"] == "control"][:2]
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in picked), encoding="utf-8")
    return path


def script(body: dict) -> dict:
    """Call the one offered tool with the reference arguments (read back from the prompt's text by the test's
    fixture lookup), then restate the tool's result; a prompt without tools gets a short answer."""
    last = body["messages"][-1]
    if last["role"] == "tool":
        return {"content": f"Done: {last['content']}."}
    if not body.get("tools"):
        return {"content": "Four."}
    return {"tool_calls": [{"name": body["tools"][0]["function"]["name"], "arguments": REFERENCE[last["content"]]}]}


REFERENCE: dict[str, dict] = {}


@pytest.fixture(scope="module")
def server(teacher_dir):
    with ChatServer(teacher_dir, api_key=KEY, script=script, default_max_tokens=200) as srv:
        yield srv


def _spec(folder: Path, server, teacher_dir: Path, budget: str = "{max_tokens: 10000000}") -> Path:
    spec = tiny_spec(folder)
    prompts = _prompts(folder)
    for line in prompts.read_text(encoding="utf-8").splitlines():
        p = json.loads(line)
        for name, entries in p["fixtures"].items():
            REFERENCE[p["messages"][0]["content"]] = entries[0]["arguments"]
    text = spec.read_text(encoding="utf-8")
    teacher = (f"teacher:\n  kind: openai_compatible\n  base_url: {server.base_url}\n  model: tiny-teacher\n"
               f"  api_key_env: {ENV_NAME}\n  token_ids: vllm\n  tokenizer: {teacher_dir}\n  top_k: 3\n"
               f"  generation: {{max_tokens: 200}}\n  limits: {{in_flight: 4}}\n  retries: 1\n  timeout_s: 60\n"
               f"  budget: {budget}\n  max_failure_rate: 0.2\n\n")
    text = re.sub(r"teacher:\n.*?\n\n", teacher, text, count=1, flags=re.DOTALL)
    for line in ("    kl: {weight: 1.0, temperature: 2.0}\n", "    ce_teacher: {weight: 0.5}\n",
                 "    length_kd: {weight: 0.05, hinge: 0.15, slope: 1.0}\n"):
        assert line in text
        text = text.replace(line, "")
    text = text.replace("  tool_registry: data/toy/tools.json\n", f"  tool_registry: data/toy/tools.json\n  prompts: {prompts}\n")
    spec.write_text(text, encoding="utf-8")
    return spec


@pytest.fixture(scope="module")
def prebuilt(server, teacher_dir, tmp_path_factory) -> Path:
    """A store holding the tiny spec's tokenizer and dataset jobs, built once: each test copies it, so only the
    jobs it is about run (their keys depend on content, not on the folder the spec sits in)."""
    folder = tmp_path_factory.mktemp("prebuilt")
    spec = _spec(folder, server, teacher_dir)
    proc = _run(spec, folder / "store", "--until", "dataset")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return folder / "store"


def _store(prebuilt: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(prebuilt, tmp_path / "store", symlinks=True)
    return tmp_path / "store"


def _run(spec: Path, store: Path, *args: str, key: str | None = KEY) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV_NAME} | ({ENV_NAME: key} if key else {})
    return subprocess.run([sys.executable, "-m", "runtime.cli", "run", str(spec), "--workdir", str(store), "--allow-stale", *args],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)


def _report(store: Path, kind: str) -> dict:
    reports = sorted((store / "jobs" / kind).glob("*/report.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(reports[-1].read_text(encoding="utf-8"))


@pytest.mark.slow
def test_http_teacher_transcripts_train_the_student_and_a_rerun_pays_nothing(server, teacher_dir, tmp_path, prebuilt):
    spec = _spec(tmp_path, server, teacher_dir)
    store = _store(prebuilt, tmp_path)
    server.stats.reset()
    proc = _run(spec, store, "--until", "train")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stats = server.stats.snapshot()
    gen = _report(store, "generate")
    assert gen["transcripts"] == N_PROMPTS and gen["metrics"]["fixture_hit_rate"] == {"value": 1.0, "n": N_PROMPTS - 2}
    # one preflight + 2 rounds per tool prompt + 1 per control prompt, each paid once
    assert stats["paid"] == 1 + 2 * (N_PROMPTS - 2) + 2 == gen["requests_generated"] + 1
    assert gen["preflight"]["logit_kd_possible"] is False and "differs" in gen["preflight"]["why_not"]
    assert gen["logprobs"]["answers"] == 2 * (N_PROMPTS - 2) + 2 and gen["logprobs"]["top_k"] == 3
    assert gen["budget"]["spent"] > 0 and not gen["budget"]["stopped"]
    train = _report(store, "train")
    dataset = _report(store, "dataset")
    assert train["train_rows"] == dataset["counts"]["train"] + N_PROMPTS
    transcripts = [json.loads(line) for line in next((store / "jobs" / "generate").glob("*/transcripts.jsonl")).read_text().splitlines()]
    assert all(t["messages"][-1]["role"] == "assistant" for t in transcripts)
    assert not any(KEY in p.read_text(errors="ignore") for p in store.rglob("*") if p.is_file() and p.stat().st_size < 5_000_000)

    server.stats.reset()
    again = _run(spec, store, "--until", "train")
    assert again.returncode == 0 and server.stats.snapshot()["paid"] == 0
    # the job is cached; forcing it replays every answer from the response cache, preflight included
    forced = _run(spec, store, "--until", "generate", "--force", "generate")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert server.stats.snapshot()["paid"] == 0 and _report(store, "generate")["requests_cached"] == 2 * (N_PROMPTS - 2) + 2


@pytest.mark.slow
def test_a_budget_stop_resumes_and_pays_only_for_the_rest(server, teacher_dir, tmp_path, prebuilt):
    # all requests cost about 4,500 tokens: a cap below that must stop whatever the timing (a cap above it stopped
    # only when enough worst cases were reserved in flight at once, which depends on how fast the server answers)
    spec = _spec(tmp_path, server, teacher_dir, budget="{max_tokens: 3000}")
    store = _store(prebuilt, tmp_path)
    server.stats.reset()
    first = _run(spec, store, "--until", "generate")
    paid_first = server.stats.snapshot()["paid_bodies"]
    assert first.returncode != 0
    out = first.stdout + first.stderr
    assert "the spend budget is reached" in out and "raise teacher.budget.max_tokens" in out, out[-2000:]
    assert 0 < len(paid_first) < 1 + 2 * (N_PROMPTS - 2) + 2
    server.stats.reset()
    second = _run(spec, store, "--until", "generate", "--set", "teacher.budget.max_tokens=10000000")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    paid_second = server.stats.snapshot()["paid_bodies"]
    assert len(paid_first) + len(paid_second) == 1 + 2 * (N_PROMPTS - 2) + 2, "every request paid exactly once"
    assert not {json.dumps(b, sort_keys=True) for b in paid_first} & {json.dumps(b, sort_keys=True) for b in paid_second}
    assert _report(store, "generate")["transcripts"] == N_PROMPTS


def test_a_missing_key_fails_before_any_request(server, teacher_dir, tmp_path, prebuilt):
    spec = _spec(tmp_path, server, teacher_dir)
    server.stats.reset()
    proc = _run(spec, _store(prebuilt, tmp_path), "--until", "generate", key=None)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"environment variable {ENV_NAME}" in out and f"export {ENV_NAME}=" in out, out[-2000:]
    assert server.stats.snapshot()["requests"] == 0


# --- logit KD from an HTTP teacher that shares the student's tokenizer ------------------------------------

KD_SPECIALS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_result>", "</tool_result>")
KD_TOKENS = (
    "  special_tokens:\n"
    '    pad: {text: "<|pad|>", id: 0}\n    bos: {text: "<|bos|>", id: 1}\n    eos: {text: "<|im_end|>", id: 3}\n'
    '    think_start: {text: "<think>", id: 4}\n    think_end: {text: "</think>", id: 5}\n'
    '    tool_call_start: {text: "<tool_call>", id: 6}\n    tool_call_end: {text: "</tool_call>", id: 7}\n'
    '    tool_result_start: {text: "<tool_result>", id: 8}\n    tool_result_end: {text: "</tool_result>", id: 9}\n'
)


@pytest.fixture(scope="module")
def kd_teacher(tmp_path_factory):
    """A served model whose tokenizer is the student's: the toy's special tokens at ids 4-9."""
    from tests.generation.server import tiny_teacher

    folder = tiny_teacher(tmp_path_factory.mktemp("kd-teacher"), extra_specials=KD_SPECIALS)
    with ChatServer(folder, api_key=KEY, script=script, default_max_tokens=200) as srv:
        yield folder, srv


@pytest.mark.slow
def test_logit_kd_from_an_http_teacher_trains_on_its_own_token_ids(kd_teacher, tmp_path):
    """The student starts from the served model's tokenizer; losses.kl (temperature 1) is distilled from the teacher's
    top-k logprobs: the generated rows hold exactly the ids the teacher sent (checked against logprobs/answers.jsonl),
    the targets sit one position before each answer token, and the KL term is trained on them."""
    from runtime.data.shards import read_split

    folder, server = kd_teacher
    spec = _spec(tmp_path, server, folder)
    text = spec.read_text(encoding="utf-8")
    start = text.index("tokenizer:\n")
    end = text.index("\n\n", start)
    text = text[:start] + f"tokenizer:\n  source: {{kind: pretrained, path: {folder}}}\n" + KD_TOKENS + text[end:]
    text = text.replace("    ce_ground_truth: {weight: 0.2}\n", "    kl: {weight: 1.0, temperature: 1.0}\n    ce_ground_truth: {weight: 0.2}\n")
    # the served template puts each tool's JSON schema in a system turn: rows need more than 256 tokens here
    for old, new in (("max_context: 256", "max_context: 512"), ("prefill: [64, 128, 256]", "prefill: [64, 128, 512]"),
                     ("cache_len: 256", "cache_len: 512"), ("- {until_step: 60, seq_len: 64}", "- {until_step: 60, seq_len: 512}")):
        assert old in text, old
        text = text.replace(old, new)
    spec.write_text(text, encoding="utf-8")
    store = tmp_path / "store"
    proc = _run(spec, store, "--until", "train")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    gen = _report(store, "generate")
    assert gen["kd"].startswith("logit") and gen["preflight"]["logit_kd_possible"] is True
    assert gen["template_mismatch"] == 0 and gen["transcripts"] >= N_PROMPTS - 2
    job = next((store / "jobs" / "generate").glob("*/report.json")).parent
    data, targets = read_split(job / "data", "train", numpy=True), read_split(job / "targets", "train", numpy=True)
    answers: dict[str, list[int]] = {}
    for line in (job / "logprobs" / "answers.jsonl").read_text().splitlines():
        a = json.loads(line)
        answers.setdefault(a["id"], []).extend(a["token_ids"])
    meta = [json.loads(line) for line in (job / "data" / "train.jsonl").read_text().splitlines()]
    assert int(targets["kd_mask"].sum()) == gen["kd_positions"] == sum(len(answers[m["id"]]) for m in meta)
    for m in meta:
        r = m["row"]
        at = np.flatnonzero(targets["kd_mask"][r])
        assert data["input_ids"][r, at + 1].tolist() == answers[m["id"]]  # the teacher's ids, one after each target
        assert (data["loss_mask"][r, at + 1] == 1).all() and (targets["topk_ids"][r, at] >= 0).all()
    steps = [json.loads(line) for line in next((store / "jobs" / "train").glob("*/metrics.jsonl")).read_text().splitlines()]
    kl = [s["loss"]["kl"] for s in steps if "loss" in s]
    assert kl and all(np.isfinite(kl)) and max(kl) > 0


def test_logit_kd_from_a_teacher_with_another_vocabulary_fails_before_any_request(server, teacher_dir, tmp_path, prebuilt):
    """A corpus-trained student tokenizer exists only after its job, so the compiler cannot compare it: the generate
    job compares the vocabularies first and fails, naming the first differing ids, before paying for anything."""
    spec = _spec(tmp_path, server, teacher_dir)
    text = spec.read_text(encoding="utf-8")
    spec.write_text(text.replace("    ce_ground_truth: {weight: 0.2}\n",
                                 "    kl: {weight: 1.0, temperature: 1.0}\n    ce_ground_truth: {weight: 0.2}\n"), encoding="utf-8")
    server.stats.reset()
    proc = _run(spec, _store(prebuilt, tmp_path), "--until", "generate")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "needs its tokenizer to equal the student's" in out and "id 0: teacher" in out, out[-2000:]
    assert server.stats.snapshot()["requests"] == 0


def test_a_refused_key_stops_the_job_with_the_status_and_no_key_in_any_output(server, teacher_dir, tmp_path, prebuilt):
    wrong = "sk-wrong-key-9876543210zyxwvutsrqponmlk"
    spec = _spec(tmp_path, server, teacher_dir)
    server.stats.reset()
    proc = _run(spec, _store(prebuilt, tmp_path), "--until", "generate", key=wrong)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "401" in out and f"${ENV_NAME}" in out, out[-2000:]
    assert server.stats.snapshot()["requests"] == 1, "the preflight request, refused, and nothing after it"
    leaked = [p for p in (tmp_path / "store").rglob("*") if p.is_file() and wrong[8:20] in p.read_text(errors="ignore")]
    assert wrong[8:20] not in out and not leaked, leaked


@pytest.mark.slow
def test_the_job_killed_mid_generation_resumes_and_pays_each_request_once(server, teacher_dir, tmp_path, prebuilt):
    """SIGKILL the whole `modelspec run` process group while the generate job is working (after a seeded number of
    paid answers), twice; the third run finishes. No answer stored before a run is requested again (only requests in
    flight at a kill, answered but not yet stored, can be paid twice: at most `in_flight` per kill), and the job's
    completion record verifies."""
    from runtime.generation.cache import request_key
    from runtime.hashing import tree_sha256
    import random
    import signal
    import time

    spec = _spec(tmp_path, server, teacher_dir)
    store = _store(prebuilt, tmp_path)
    rng = random.Random(20261203)
    env = {k: v for k, v in os.environ.items() if k != ENV_NAME} | {ENV_NAME: KEY}
    paid_total = []
    responses = store / "cache" / "generate" / "responses"
    tok_sha = tree_sha256(Path(teacher_dir) / "tokenizer.json")
    for attempt in range(3):
        stored_before = {p.stem for p in responses.glob("??/*.json")}
        server.stats.reset()
        proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", str(spec), "--workdir", str(store), "--allow-stale",
                                 "--until", "generate"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        if attempt < 2:
            target = rng.randint(2, 6)
            deadline = time.monotonic() + 120
            while server.stats.paid < target and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
        bodies = server.stats.snapshot()["paid_bodies"]
        keys = {request_key(server.base_url, "tiny-teacher", b, tok_sha)[0] for b in bodies}
        assert not keys & stored_before, f"attempt {attempt}: a stored answer was requested again"
        paid_total += [json.dumps(b, sort_keys=True) for b in bodies]
        if attempt == 2:
            assert proc.returncode == 0, err.decode()[-2000:]
    requests = 1 + 2 * (N_PROMPTS - 2) + 2
    assert len(set(paid_total)) == requests and len(paid_total) <= requests + 2 * 4
    status = subprocess.run([sys.executable, "-m", "runtime.cli", "status", str(spec), "--workdir", str(store)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    line = next(x for x in status.stdout.splitlines() if x.startswith("generate"))
    assert "up_to_date" in line and f"{N_PROMPTS} transcripts" in line, status.stdout
