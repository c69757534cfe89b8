"""Issue 14's end-to-end proof: distil from a pretrained Llama teacher into a pretrained Qwen2 student.

Both are built with transformers in the test and saved with `save_pretrained` (random weights:
nothing can be downloaded here), beside a tokenizer folder they share. The student is a Qwen2
with q/k/v biases and a llama3 RoPE scaling, so the family flags go through every stage: the
train job starts from the checkpoint (step-0 logits equal the checkpoint's), then QAT, export of
every function, CoreML conversion, the contract verify and numeric parity in the interpreter.
Slow (about two minutes), still run in CI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.runtime.test_pipeline_resume import tiny_spec

# one worker runs the whole module: its module fixture (a full pipeline run) is built once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pretrained-pipeline")]
ROOT = Path(__file__).resolve().parents[1]
V, D, L, H, KV, HD, FF = 512, 128, 2, 4, 2, 32, 352
LLAMA3 = {"rope_type": "llama3", "factor": 2.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def _tokenizer(spec: Path, store: Path) -> Path:
    """The toy's BPE tokenizer, built by the pipeline's own tokenizer job, as a folder users would have."""
    proc = _cli("run", str(spec), "--until", "tokenizer", "--allow-stale", "--json", "--workdir", str(store))
    assert proc.returncode == 0, proc.stderr
    (job,) = json.loads(proc.stdout)["jobs"]
    folder = spec.parent / "models" / "tokenizer"
    shutil.copytree(job["outputs"]["tokenizer"], folder)
    return folder


def _pretrained(folder: Path, tokenizer: Path) -> dict[str, Path]:
    import transformers as tf

    torch.manual_seed(0)
    teacher = tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
        intermediate_size=128, max_position_embeddings=256, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}))
    student = tf.Qwen2ForCausalLM(tf.Qwen2Config(
        vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=KV,
        intermediate_size=FF, rms_norm_eps=1e-6, max_position_embeddings=256, tie_word_embeddings=False,
        rope_parameters={"rope_theta": 10000.0, **LLAMA3}))
    with torch.no_grad():  # non-zero biases, so a dropped bias shows in the logits
        for name, p in student.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    out = {}
    for name, model in (("teacher", teacher), ("student", student)):
        out[name] = folder / name
        model.save_pretrained(out[name])
    for f in tokenizer.iterdir():  # the teacher's tokenizer is saved beside it
        shutil.copyfile(f, out["teacher"] / f.name)
    out["model"] = student
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    spec = tiny_spec(root)
    tokenizer = _tokenizer(spec, root / "tok-store")
    models = _pretrained(root / "models", tokenizer)
    text = spec.read_text()
    edits = [
        ("  rope: {theta: 10000.0, scaling: none}",
         "  rope:\n    theta: 10000.0\n    scaling: {kind: llama3, factor: 2.0, low_freq_factor: 1.0, high_freq_factor: 4.0, "
         "original_max_context: 64}\n  attention_bias: true"),
        ("  source: {kind: bpe, corpus: data/toy/corpus.txt, vocab_size: 512}", "  source: {kind: pretrained, path: models/tokenizer}"),
        ("  steps: 60\n  micro_batch: 4", "  init: {checkpoint: models/student}\n  steps: 12\n  micro_batch: 4"),
        ("    - {until_step: 60, seq_len: 64}", "    - {until_step: 12, seq_len: 64}"),
        ("checkpoint_every: 10", "checkpoint_every: 6"),
        ("steps: 20}}, within_tokens", "steps: 4}}, within_tokens"),
        ("  prefill: [64, 128, 256]", "  prefill: [64, 256]"),  # one inside and one beyond the llama3 original context
        ("  parity: {}", "  parity: {lengths: all}"),  # both: the llama3 scaling differs beyond the original context
    ]
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    teacher_start = text.index("teacher:\n  kind: train")
    teacher_end = text.index("\ndata:")
    text = text[:teacher_start] + "teacher: {kind: hf_local, path: models/teacher, top_k: 16}\n" + text[teacher_end:]
    spec.write_text(text)
    store = root / "store"
    jobs = ["verify", "parity-prefill-64", "parity-prefill-256", "parity-decode"]
    proc = _cli("run", str(spec), *[a for j in jobs for a in ("--until", j)], "--allow-stale", "--json", "--workdir", str(store))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"spec": spec, "store": store, "models": models, "jobs": {j["id"]: j for j in json.loads(proc.stdout)["jobs"]}}


def test_the_student_starts_from_the_checkpoint(run):
    """Step 0 of the train job: the student the job builds gives the checkpoint's logits."""
    from runtime.plan import load
    from runtime.train.job import _student
    from compiler.planning.params import TrainParams
    from tests.runtime.helpers import Ctx

    plan, _ = load(str(run["spec"]), [], None)
    params = TrainParams.model_validate(plan.job("train").params, strict=False)
    model, _, facts = _student(params, {}, torch.device("cpu"), Ctx(spec_dir=run["spec"].parent))
    ids = torch.randint(0, V, (1, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (model.eval()(ids) - run["models"]["model"].eval()(ids).logits).abs().max().item()
    assert diff < 1e-5
    assert facts["model_type"] == "qwen2"
    report = json.loads((Path(run["jobs"]["train"]["outputs"]["report"])).read_text())
    assert report["init"]["weights_sha256"] == facts["weights_sha256"]


def test_every_stage_ran_and_parity_holds(run):
    jobs = run["jobs"]
    assert {j["action"] for j in jobs.values()} == {"ran"}
    assert {"teacher", "train", "qat", "convert", "verify", "parity-decode"} <= set(jobs)
    verify = json.loads(Path(jobs["verify"]["outputs"]["report"]).read_text())
    assert verify["passed"], verify["mismatches"]
    for fn in ("prefill-64", "prefill-256", "decode"):
        parity = json.loads(Path(jobs[f"parity-{fn}"]["outputs"]["report"]).read_text())
        assert all(c["passed"] for c in parity["checks"]), parity["checks"]
        assert parity["metrics"]["snr_db"]["value"] > 40, (fn, parity["metrics"]["snr_db"])
    meta = json.loads(Path(jobs["convert"]["outputs"]["report"]).read_text())["metadata"]
    init = json.loads(meta["modelspec.init"])
    assert init["model_type"] == "qwen2" and len(init["weights_sha256"]) == 64


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    dest = tmp_path_factory.mktemp("hf") / "student"
    proc = _cli("export-hf", str(run["spec"]), "--to", str(dest), "--workdir", str(run["store"]), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model_type"] == "qwen2"
    return dest


def test_export_hf_loads_and_matches_the_qat_checkpoint(run, exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.model.checkpoint import load_student

    student = load_student(Path(run["jobs"]["qat"]["outputs"]["checkpoint"])).eval()
    model = AutoModelForCausalLM.from_pretrained(exported, local_files_only=True, trust_remote_code=False).eval()
    tok = AutoTokenizer.from_pretrained(exported, local_files_only=True)
    ids = torch.tensor([tok("what is the weather in Paris")["input_ids"]])
    with torch.no_grad():
        assert (model(ids).logits - student(ids)).abs().max().item() < 1e-5
    again = _cli("export-hf", str(run["spec"]), "--to", str(exported), "--workdir", str(run["store"]))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_export_hf_folder_is_a_valid_hf_local_teacher(run, exported):
    """What a drafter spec's teacher would be: the worker's exported folder (its tokenizer beside it)."""
    from runtime.jobs import teacher as tjob

    model = tjob.load_hf_folder(exported, torch.device("cpu"))
    tjob._check_tokenizers(exported, Path(run["jobs"]["tokenizer"]["outputs"]["tokenizer"]))
    assert model.config.model_type == "qwen2"


def test_export_hf_before_training_is_bad_input(tmp_path):
    spec = tiny_spec(tmp_path)
    proc = _cli("export-hf", str(spec), "--to", str(tmp_path / "hf"), "--workdir", str(tmp_path / "empty-store"))
    assert proc.returncode == 2 and "no store at" in proc.stderr and not (tmp_path / "hf").exists()


def test_a_teacher_with_another_vocabulary_is_a_compile_error(run):
    """Both folders are local, so the shared vocabulary is checked before any job runs (compiler/reading/rules.py)."""
    spec = run["spec"]
    other = spec.parent / "models" / "teacher-other-vocab"
    shutil.copytree(run["models"]["teacher"], other)
    data = json.loads((other / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    a, b = sorted(t for t, i in vocab.items() if i in (300, 301))
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two ids swapped: same strings, other ids
    (other / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    variant = spec.parent / "other-vocab.yaml"
    variant.write_text(spec.read_text().replace("path: models/teacher,", "path: models/teacher-other-vocab,"))
    proc = _cli("validate", str(variant))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "teacher.path" in proc.stderr and "the teacher's tokenizer differs from the student's" in proc.stderr
    assert "id 300: teacher" in proc.stderr and "id 301: teacher" in proc.stderr
    assert _cli("validate", str(spec)).returncode == 0  # the run's own spec (same tokenizer) is fine
