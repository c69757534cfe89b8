"""The README's main job: `modelspec run specs/toy.yaml` end to end on CPU, then the gate.

One real run of the real toy spec (tokenizer, dataset, teacher, KD, QAT, exports, conversion,
verify, parity, eval, gates, publish) into a temporary store; then what it printed and logged,
the run report rendered in headless Chromium (the screenshot is kept in test-artifacts/), a
no-op rerun, `modelspec verify` of the package outside the run, `modelspec publish`, and a gate
threshold the model does not meet. Slow (about two minutes on 2 cores), still run in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.hashing import file_sha256, tree_sha256
from tests.shared_run import shared_run

# one worker runs the whole module: its module fixture (a full pipeline run) is built once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("toy-e2e")]
ROOT = Path(__file__).resolve().parents[1]
SPEC = "specs/toy.yaml"


def modelspec(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "runtime.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"modelspec {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The one full run, shared by every xdist worker of the session (tests/shared_run.py)."""
    return shared_run(tmp_path_factory, "toy-e2e",
                      lambda store: modelspec("run", SPEC, "--workdir", str(store), "--json", check=True))


def _report(store: dict, job: str) -> dict:
    return json.loads(Path(store["jobs"][job]["outputs"]["report"]).read_text())


def test_every_job_runs_and_every_hard_gate_passes(store: dict) -> None:
    plan = json.loads((ROOT / "generated" / "toy-worker" / "plan.json").read_text())
    assert {j["id"] for j in plan["jobs"]} == set(store["jobs"])
    assert all(j["action"] == "ran" for j in store["jobs"].values()), {k: j["action"] for k, j in store["jobs"].items()}
    gates = _report(store, "gates")
    assert gates["passed"] is True
    outcomes = {g["metric"]: g["outcome"] for g in gates["gates"]}
    assert all(o == "pass" for m, o in outcomes.items() if not m.startswith("speed.")), outcomes
    assert outcomes["speed.ttft_p50_regression"] == "not_run"  # needs a Mac; policy warn
    assert _report(store, "verify")["passed"] is True
    convert = _report(store, "convert")
    assert gates["package_hash"] == convert["canonical_hash"]
    for job in [j for j in store["jobs"] if j.startswith("parity-")]:
        parity = _report(store, job)
        assert parity["passed"], parity["checks"]
        assert parity["metrics"]["snr_db"]["value"] >= 55.0


def test_library_noise_goes_to_the_job_logs(store: dict) -> None:
    """torch's FutureWarnings and coremltools' chatter are in each job's log, not on the console."""
    for noise in ("Warning:", "FutureWarning", "RuntimeWarning", "Saving value type", "lose precision", "copyreg.py"):
        assert noise not in store["stderr"], store["stderr"][-3000:]
    logs = store["store"] / "logs" / "toy-worker"
    for job in store["jobs"].values():
        assert job["log"] == str(logs / f"{job['id']}.log") and Path(job["log"]).is_file(), job
        assert isinstance(job["warnings"], int)
    convert = store["jobs"]["convert"]
    text = Path(convert["log"]).read_text()
    assert convert["warnings"] >= 1 and text.count("Warning") + text.count("WARNING") >= convert["warnings"], text[-2000:]
    assert "note: converting prefill_64" in text


def test_the_run_ends_with_a_summary_a_person_acts_on(store: dict) -> None:
    """A cached run without --json: the gates with value and threshold, where the outputs are, the next command."""
    proc = modelspec("run", SPEC, "--workdir", str(store["store"]), check=True)
    lines = proc.stderr.splitlines()
    gates = _report(store, "gates")["gates"]
    for g in gates:  # one whole line per gate (nothing wrapped at 80 columns)
        line = next((x for x in lines if f" {g['metric']} " in x), None)
        assert line is not None and f"{g['op']} {g['threshold']:.4g}" in line and g["policy"] in line, (g, proc.stderr)
        if g["value"] is not None:
            assert f"{g['value']:.4g}" in line, (g, line)
    assert any(x.startswith("gates (every hard gate passed") for x in lines), proc.stderr
    assert f"package:   {store['jobs']['convert']['outputs']['package']}  (" in proc.stderr
    assert f"release:   {store['jobs']['publish']['outputs']['manifest']}" in proc.stderr
    assert (f"next:      modelspec publish {SPEC} --to releases/toy-worker --workdir {store['store']}") in lines, proc.stderr
    assert lines[-1] == f"ok: 0 ran, {len(store['jobs'])} cached, 0 other"


def _chromium() -> str:
    """Debian's chromium; installed here when missing and apt can (CI installs it in .ci/run)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        for cmd in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "chromium"]):
            subprocess.run(cmd, capture_output=True, timeout=900, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            found = shutil.which("chromium")
            if found:
                return found
    pytest.skip("chromium is not installed and cannot be installed here (apt-get install chromium as root); "
                "CI installs it in .ci/run")


def _browser(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless, offline: no network fetches of its own (the page has none to make either)."""
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=180)


def test_the_report_renders_in_a_browser_with_its_plots(store: dict) -> None:
    """`modelspec report` of the real run, opened in headless Chromium: the DOM it renders has curves with
    data and a row per gate, parity function, eval sample kind and module; the screenshot is kept."""
    page = store["root"] / "report.html"
    proc = modelspec("report", SPEC, "--workdir", str(store["store"]), "--out", str(page), "--json", check=True)
    assert json.loads(proc.stdout)["jobs_with_results"] == len(store["jobs"])
    chromium = _chromium()
    dom = _browser(chromium, store["root"] / "chromium", "--dump-dom", page.as_uri())
    assert dom.returncode == 0 and "</html>" in dom.stdout, dom.stderr[-2000:]
    html = dom.stdout
    curves = re.findall(r'<path d="([^"]+)"[^>]*class="series" data-series="([^"]+)" data-points="(\d+)"', html)
    by_name = {}
    for d, name, n in curves:
        assert d.count("L") == int(n) - 1, name  # the path has every point it claims
        by_name.setdefault(name, []).append(int(n))
    steps = json.loads(Path(store["jobs"]["train"]["outputs"]["report"]).read_text())["steps"]
    assert max(by_name["total"]) >= steps[1] - steps[0] - 1 >= 50, by_name  # a loss point per step
    assert max(by_name["lr"]) >= 50 and any(k for k in by_name if k not in ("total", "lr")), by_name
    assert len(re.findall(r'<tr class="gate">', html)) == len(_report(store, "gates")["gates"])
    assert len(re.findall(r'<tr class="parity-fn">', html)) == len([j for j in store["jobs"] if j.startswith("parity-")])
    eval_kinds = json.loads(Path(store["jobs"]["eval"]["outputs"]["report"]).read_text())["by_kind"]
    assert len(re.findall(r'<tr class="eval-kind">', html)) == len(eval_kinds) + 1
    assert len(re.findall(r'<tr class="size-module">', html)) >= 8
    assert len(re.findall(r'class="bar" data-value="[0-9.e+-]+"', html)) >= 8
    assert "not run" not in re.sub(r"<tr class=\"gate\">.*?</tr>", "", html, flags=re.S)  # every job of the run has data

    shot = store["root"] / "report.png"
    proc = _browser(chromium, store["root"] / "chromium", f"--screenshot={shot}", "--window-size=1280,2000",
                    "--hide-scrollbars", page.as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1280, 2000)
        colors = img.convert("RGB").getcolors(maxcolors=1 << 20) or []
    assert len(colors) > 50, "the screenshot is blank"
    kept = ROOT / "test-artifacts" / "report-toy.png"
    kept.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, kept)
    shutil.copyfile(page, kept.with_suffix(".html"))
    print(f"report screenshot: {kept} (and {shot})")


def test_a_second_run_does_nothing(store: dict) -> None:
    proc = modelspec("run", SPEC, "--workdir", str(store["store"]), "--json", check=True)
    assert {j["action"] for j in json.loads(proc.stdout)["jobs"]} == {"cached"}


def test_verify_outside_the_run_finds_its_checkpoint_and_passes(store: dict) -> None:
    package = store["jobs"]["convert"]["outputs"]["package"]
    out = store["root"] / "verify.json"
    proc = modelspec("verify", SPEC, package, "--workdir", str(store["store"]), "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["passed"] and not report["mismatches"]
    assert set(report["parity"]) == {"prefill_64", "prefill_128", "prefill_256", "decode", "verify"}
    assert all(p["passed"] for p in report["parity"].values())


def test_publish_copies_the_release_atomically_with_its_manifest(store: dict) -> None:
    dest = store["root"] / "releases"
    modelspec("publish", SPEC, "--to", str(dest), "--workdir", str(store["store"]), check=True)
    current = dest / "current"
    assert current.is_symlink()
    manifest = json.loads((current / "manifest.json").read_text())
    assert manifest["package_hash"] == _report(store, "convert")["canonical_hash"]
    assert manifest["files"], "the manifest lists the release files"
    for rel, digest in manifest["files"].items():
        assert file_sha256(current / rel) == digest, rel
    assert {p.name for p in (current / "golden").iterdir()} == {f"{j}.npz" for j in store["jobs"] if j.startswith("parity-")}
    # app-ready (docs/release.md): the tokenizer the package was built with, the runtime config, and
    # `modelspec verify` of the released package checks that tokenizer against the package's stamp
    convert = _report(store, "convert")
    assert tree_sha256(current / "tokenizer") == manifest["tokenizer_sha256"] == convert["metadata"]["modelspec.tokenizer_sha256"]
    config = json.loads((current / "runtime_config.json").read_text())
    assert (config["default_function"], config["decode_function"], config["cache"]["length"]) == ("prefill_64", "decode", 256)
    assert config["stop_token_ids"] == [2, 6] and config["bos_token_id"] == 1 and config["prompt"]["prepend_bos"]
    proc = modelspec("verify", SPEC, str(current / manifest["package"]), "--no-parity", "--workdir", str(store["store"]))
    assert proc.returncode == 0 and "[release] tokenizer: ok" in proc.stderr, proc.stderr[-3000:]
    # the release is loadable as a teacher (a worker teaching its drafter): hf/ is a transformers folder
    # of the QAT checkpoint the package came from, its tokenizer beside it
    import torch

    from runtime.jobs import teacher as tjob

    assert manifest["hf"] == "hf" and "hf/config.json" in manifest["files"]
    model = tjob.load_hf_folder(current / "hf", torch.device("cpu"))
    tjob._check_tokenizers(current / "hf", current / "tokenizer")
    assert model.config.model_type == "llama" and model.config.vocab_size == 512


def test_a_gate_the_model_does_not_meet_fails_the_run_and_blocks_publish(store: dict) -> None:
    spec = json.loads(subprocess.run([sys.executable, "-c", "import json,sys; from compiler.reading.loader import load_file; "
                                      f"print(json.dumps(load_file('{SPEC}').data['gates']))"],
                                     cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    index = next(i for i, g in enumerate(spec) if g["metric"] == "eval.integration_f1_lax")
    edit = f"gates[{index}].value=0.99"
    proc = modelspec("run", SPEC, "--workdir", str(store["store"]), "--set", edit, "--json")
    assert proc.returncode == 1
    jobs = {j["id"]: j["action"] for j in json.loads(proc.stdout)["jobs"]}
    assert jobs["gates"] == "failed" and jobs["publish"] != "ran"
    assert {j for j, a in jobs.items() if a == "ran"} == set(), jobs  # gates failed; nothing else was stale
    assert "eval.integration_f1_lax" in proc.stderr


def test_the_toy_drafter_distils_from_the_published_worker_and_drafts_for_it(store: dict, tmp_path: Path) -> None:
    """specs/toy-drafter.yaml end to end: the toy worker's release is its teacher (published here where the
    drafter's teacher.path points), its speculate job measures acceptance against it, every gate passes."""
    specs = tmp_path / "specs"
    specs.mkdir()
    for name in ("toy.yaml", "toy-drafter.yaml"):
        shutil.copy(ROOT / "specs" / name, specs / name)
    shutil.copytree(ROOT / "specs" / "data", specs / "data")
    modelspec("publish", SPEC, "--to", str(tmp_path / "releases" / "toy-worker"), "--workdir", str(store["store"]), check=True)
    proc = modelspec("run", str(specs / "toy-drafter.yaml"), "--allow-stale", "--workdir", str(store["store"]), "--json",
                     check=True)
    jobs = {j["id"]: j for j in json.loads(proc.stdout)["jobs"]}
    assert jobs["tokenizer"]["action"] == "cached", "the worker's tokenizer, shared"
    assert {j["action"] for i, j in jobs.items() if i != "tokenizer"} == {"ran"}
    spec = json.loads(Path(jobs["speculate"]["outputs"]["report"]).read_text())
    m = spec["metrics"]
    assert m["worker_mismatches"]["value"] == 0 and m["acceptance_rate"]["n"] > 200, spec
    gates = json.loads(Path(jobs["gates"]["outputs"]["report"]).read_text())
    outcomes = {g["metric"]: g["outcome"] for g in gates["gates"]}
    assert gates["passed"] and outcomes["speculate.acceptance_rate"] == "pass"
    # the halt head: trained (both its gradient norm and length_kd's in the balance probe), exported, measured
    assert {outcomes[m] for m in ("eval.halt_auroc", "eval.early_halt_rate", "parity.halt_sign_agreement")} == {"pass"}
    rows = [json.loads(line) for line in Path(jobs["train"]["outputs"]["metrics"]).read_text().splitlines()]
    probed = [r["grad_norm_by_loss"] for r in rows if "grad_norm_by_loss" in r]
    assert probed and all({"halt", "length_kd"} <= set(p) for p in probed) and probed[-1]["halt"] > 0
    ev = json.loads(Path(jobs["eval"]["outputs"]["report"]).read_text())["metrics"]
    assert ev["halt_auroc"]["value"] >= 0.9 and ev["halt_auroc"]["n"] > 1000
    assert spec["halt"]["threshold"] == 0.5 and spec["halt"]["drafts_cut"] >= 0
    io = json.loads(Path(jobs["convert"]["outputs"]["report"]).read_text())["functions"]["decode"]["package"]["outputs"]
    assert [o["name"] for o in io] == ["logits", "halt"]
