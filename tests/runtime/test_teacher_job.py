"""The teacher job: a tiny trained teacher and a saved local one, their top-k targets, the per-sample cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from compiler.planning.params import ArchitectureP, DatasetParams, TeacherParams, TokenizerParams
from runtime.data.shards import read_split
from runtime.jobs import dataset as dsjob
from runtime.jobs import teacher as tjob
from runtime.jobs import tokenizer as tokjob
from runtime.jobs.teacher_targets import CACHE_FORMAT, cache_key, sample_sha256
from tests.runtime.helpers import Ctx

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "specs" / "data" / "toy"
PLAN = json.loads((ROOT / "generated" / "toy-worker" / "plan.json").read_text())
TRAIN_SAMPLES, EVAL_SAMPLES = 240, 12
TOP_K = 8
ARCH = ArchitectureP(vocab_size=512, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_head=8, mlp_hidden=64,
                     norm_eps=1e-6, rope_theta=10000.0, max_context=256, tie_embeddings=False)
PROVENANCE = {"job": {"id": "teacher"}}


def plan_params(job_id: str) -> dict:
    return next(j for j in PLAN["jobs"] if j["id"] == job_id)["params"]


def train_params(**kw) -> TeacherParams:
    return TeacherParams(**{"kind": "train", "path": None, "architecture": ARCH, "steps": 20, "micro_batch": 8,
                            "seq_len": 128, "lr": 1e-2, "seed": 7, "top_k": TOP_K, **kw})


def local_params(path: Path) -> TeacherParams:
    return TeacherParams(kind="hf_local", path=str(path), architecture=None, steps=None, micro_batch=None, seq_len=None,
                         lr=None, seed=7, top_k=TOP_K)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SimpleNamespace:
    """Tokenizer and dataset jobs run on the head of the toy data (the full set is slow to target)."""
    root = tmp_path_factory.mktemp("teacher-data")
    tok_out = root / "tok"
    tok_out.mkdir()
    tokjob.run(TokenizerParams.model_validate(plan_params("tokenizer"), strict=False), {}, tok_out, Ctx())
    d = root / "spec" / "d"
    d.mkdir(parents=True)
    shutil.copy(TOY / "tools.json", d / "tools.json")
    for name, n in (("train", TRAIN_SAMPLES), ("eval", EVAL_SAMPLES)):
        lines = (TOY / f"{name}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        (d / f"{name}.jsonl").write_text("".join(lines[:n]), encoding="utf-8")
    ds_out = root / "ds"
    ds_out.mkdir()
    params = DatasetParams.model_validate({**plan_params("dataset"), "train": "d/train.jsonl", "eval": "d/eval.jsonl",
                                           "tool_registry": "d/tools.json"}, strict=False)
    tok_inputs = {"tokenizer": tok_out / "tokenizer", "report": tok_out / "report.json"}
    dsjob.run(params, {"tokenizer": tok_inputs}, ds_out, Ctx(spec_dir=root / "spec"))
    arrays = {s: read_split(ds_out / "data", s, numpy=True) for s in ("train", "val")}
    assert all(a["input_ids"].shape[0] > 0 for a in arrays.values())
    return SimpleNamespace(root=root, inputs={"tokenizer": tok_inputs, "dataset": {"data": ds_out / "data"}}, arrays=arrays,
                           lengths={s: a["attention_mask"].sum(1) for s, a in arrays.items()})


def run_teacher(data, out: Path, params: TeacherParams | None = None, cache_dir: Path | None = None, spec_dir: Path | None = None):
    out.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(spec_dir=spec_dir or data.root, work_dir=out.parent / f"{out.name}-work", cache_dir=cache_dir,
              provenance=PROVENANCE)
    return tjob.run(params or train_params(), data.inputs, out, ctx), ctx


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("teacher") / "out"
    metrics, ctx = run_teacher(data, out)
    return SimpleNamespace(out=out, metrics=metrics, ctx=ctx,
                           targets={s: read_split(out / "targets", s, numpy=True) for s in ("train", "val")})


def own_topk(model, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        top = model(input_ids=torch.as_tensor(ids, dtype=torch.long)[None]).logits[0].topk(TOP_K)
    return top.indices.numpy(), top.values.numpy()


def tiny_llama(vocab_size: int = 512, seed: int = 3):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, intermediate_size=48, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


def test_outputs_and_shapes(data, trained):
    out = trained.out
    assert sorted(p.name for p in out.iterdir()) == ["model", "report.json", "targets"]
    assert (out / "model" / "config.json").is_file() and (out / "model" / "model.safetensors").is_file()
    assert sorted(p.name for p in (out / "targets").iterdir()) == ["index.json", "train-00000.safetensors", "train.index.json",
                                                                   "val-00000.safetensors", "val.index.json"]
    index = json.loads((out / "targets" / "index.json").read_text())
    assert index["top_k"] == TOP_K and index["teacher_sha256"] == trained.metrics["teacher_sha256"]
    for split, t in trained.targets.items():
        lengths, ids = data.lengths[split], data.arrays[split]["input_ids"]
        rows, T = len(lengths), int(lengths.max())
        assert T < ids.shape[1]  # the longest real row, not the padded length
        assert t["topk_ids"].shape == t["topk_logits"].shape == (rows, T, TOP_K)
        assert t["topk_ids"].dtype == np.int32 and t["topk_logits"].dtype == np.float32
        assert index["splits"][split]["rows"] == rows and index["splits"][split]["T"] == T
        assert index["splits"][split]["sample_sha256"] == [sample_sha256(ids[r, :lengths[r]]) for r in range(rows)]
        for r, n in enumerate(lengths):
            assert not t["topk_ids"][r, n:].any() and not t["topk_logits"][r, n:].any()
            assert (np.diff(t["topk_logits"][r, :n], axis=-1) <= 0).all()
        assert ((t["topk_ids"] >= 0) & (t["topk_ids"] < ARCH.vocab_size)).all()
    m = trained.metrics
    assert (m["rows_train"], m["rows_val"]) == (len(data.lengths["train"]), len(data.lengths["val"]))
    assert m["cache_hits"] + m["cache_misses"] == m["rows_train"] + m["rows_val"]  # identical rows are hits
    assert (m["cache_rejected"], m["steps"], m["top_k"]) == (0, 20, TOP_K)
    report = json.loads((out / "report.json").read_text())
    assert {k: report[k] for k in m} == json.loads(json.dumps(m)) and report["provenance"] == PROVENANCE
    starts = [e[1:] for e in trained.ctx.events if e[0] == "start"]
    assert starts == [("teacher: training", 20), ("teacher: top-k targets", m["rows_train"] + m["rows_val"])]


def test_training_lowers_the_loss(trained):
    m = trained.metrics
    assert m["train_loss_final"] < m["train_loss_first"] - 1.0
    assert 0.0 < m["val_accuracy"] <= 1.0 and m["val_ce"] < m["train_loss_first"] and m["val_target_tokens"] > 0


def test_targets_match_a_direct_forward(data, trained):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(trained.out / "model")).eval()
    for split, r in (("train", 0), ("val", len(data.lengths["val"]) - 1)):
        n = int(data.lengths[split][r])
        ids, logits = own_topk(model, data.arrays[split]["input_ids"][r, :n])
        np.testing.assert_allclose(trained.targets[split]["topk_logits"][r, :n], logits, rtol=0, atol=1e-5)
        assert (trained.targets[split]["topk_ids"][r, :n] == ids).all()


def test_same_seed_same_teacher_and_bytes_with_cache(data, trained, tmp_path):
    cache = tmp_path / "cache"
    first, _ = run_teacher(data, tmp_path / "a", cache_dir=cache)
    assert first["teacher_sha256"] == trained.metrics["teacher_sha256"]
    index = json.loads((trained.out / "targets" / "index.json").read_text())
    shas = index["splits"]["train"]["sample_sha256"] + index["splits"]["val"]["sample_sha256"]
    assert first["cache_misses"] == len(set(shas)) and first["cache_hits"] == len(shas) - len(set(shas))
    for name in ("targets/train-00000.safetensors", "targets/val-00000.safetensors", "targets/train.index.json",
                 "targets/val.index.json", "targets/index.json", "model/model.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (trained.out / name).read_bytes(), name

    second, _ = run_teacher(data, tmp_path / "b", cache_dir=cache)
    assert second["cache_misses"] == 0 and second["cache_hits"] == len(shas)
    for split in ("train", "val"):
        name = f"targets/{split}-00000.safetensors"
        assert (tmp_path / "b" / name).read_bytes() == (trained.out / name).read_bytes()

    entries = sorted((cache / CACHE_FORMAT).rglob("*.safetensors"))
    assert len(entries) == len(set(shas))
    entries[0].write_bytes(b"not a safetensors file")
    entries[1].write_bytes(entries[1].read_bytes()[:-40])  # truncated
    # The same weights loaded as a local teacher share the cache: it is keyed by weights, not by job kind.
    local = local_params(tmp_path / "a" / "model")
    third, _ = run_teacher(data, tmp_path / "c", local, cache_dir=cache)
    assert third["teacher_sha256"] == first["teacher_sha256"]
    # every sample whose entry was damaged rejects it (duplicate samples share one entry); each entry is recomputed once
    damaged = {entries[0].stem, entries[1].stem}
    top_k = index["top_k"]
    expected = sum(cache_key(first["teacher_sha256"], top_k, sha) in damaged for sha in shas)
    assert expected >= 2 and (third["cache_misses"], third["cache_rejected"]) == (2, expected)
    for split in ("train", "val"):
        got = read_split(tmp_path / "c" / "targets", split, numpy=True)
        assert (got["topk_ids"] == trained.targets[split]["topk_ids"]).all()
        np.testing.assert_allclose(got["topk_logits"], trained.targets[split]["topk_logits"], rtol=0, atol=1e-5)
    fourth, _ = run_teacher(data, tmp_path / "d", local, cache_dir=cache)
    assert fourth["cache_misses"] == fourth["cache_rejected"] == 0  # the bad entries were rewritten


def _save_teacher(model, folder: Path, data) -> Path:
    """A teacher folder as users keep one: the model and its tokenizer (here the student's)."""
    model.save_pretrained(str(folder))
    for f in Path(data.inputs["tokenizer"]["tokenizer"]).iterdir():
        shutil.copyfile(f, folder / f.name)
    return folder


def test_hf_local_teacher(data, tmp_path):
    model = tiny_llama()
    _save_teacher(model, tmp_path / "spec" / "teacher", data)
    metrics, ctx = run_teacher(data, tmp_path / "out", local_params(Path("teacher")), spec_dir=tmp_path / "spec")
    assert metrics["steps"] == 0 and "train_loss_final" not in metrics and 0.0 <= metrics["val_accuracy"] <= 1.0
    assert [e[1] for e in ctx.events if e[0] == "start"] == ["teacher: top-k targets"]
    saved = load_file(str(tmp_path / "out" / "model" / "model.safetensors"))
    assert all((saved[k] == v.numpy()).all() for k, v in model.state_dict().items() if k in saved)
    targets = read_split(tmp_path / "out" / "targets", "train", numpy=True)
    n = int(data.lengths["train"][5])
    ids, logits = own_topk(model, data.arrays["train"]["input_ids"][5, :n])
    assert (targets["topk_ids"][5, :n] == ids).all()
    np.testing.assert_allclose(targets["topk_logits"][5, :n], logits, rtol=0, atol=1e-5)


def test_hf_local_refuses_auto_map(data, tmp_path):
    folder = tmp_path / "teacher"
    tiny_llama().save_pretrained(str(folder))
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModelForCausalLM": "evil.Model"}}))
    with pytest.raises(tjob.TeacherJobError, match="auto_map.*remote code"):
        run_teacher(data, tmp_path / "out", local_params(folder))


def test_hf_local_refuses_a_vocabulary_that_does_not_fit(data, tmp_path):
    folder = _save_teacher(tiny_llama(vocab_size=256), tmp_path / "teacher", data)
    with pytest.raises(tjob.TeacherJobError, match=f"teacher {folder}: vocab_size 256 does not cover the tokenizer and the data"):
        run_teacher(data, tmp_path / "out", local_params(folder))


def test_padded_teacher_rows_are_never_ranked(data, tmp_path):
    """1024 embedding rows for a 512-token tokenizer (as 152,064 rows for 151,643 tokens): top-k over the first 512."""
    model = tiny_llama(vocab_size=1024)
    with torch.no_grad():
        model.lm_head.weight[512:] = model.lm_head.weight[:512].abs().max() * 10  # padded rows would win every top-k
    folder = _save_teacher(model, tmp_path / "teacher", data)
    metrics, _ = run_teacher(data, tmp_path / "out", local_params(folder))
    assert (metrics["vocab_rows_ranked"], metrics["vocab_rows_dropped"]) == (512, 512)
    targets = read_split(tmp_path / "out" / "targets", "train", numpy=True)
    assert int(targets["topk_ids"].max()) < 512


def test_hf_local_refuses_a_teacher_whose_tokenizer_differs(data, tmp_path):
    from transformers import AutoTokenizer

    folder = _save_teacher(tiny_llama(), tmp_path / "teacher", data)
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.add_tokens(["<teacher-only>"])
    tok.save_pretrained(str(folder))
    with pytest.raises(tjob.TeacherJobError, match=r"its tokenizer differs from the student's.*id 512: teacher '<teacher-only>', student None"):
        run_teacher(data, tmp_path / "out", local_params(folder))
    (folder / "tokenizer.json").unlink()
    with pytest.raises(tjob.TeacherJobError, match="no tokenizer.json beside the model"):
        run_teacher(data, tmp_path / "out", local_params(folder))


def test_hf_local_loads_other_families_and_refuses_unknown_ones(data, tmp_path):
    import transformers as tf

    cfg = tf.Qwen2Config(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, max_position_embeddings=256)
    torch.manual_seed(0)
    folder = _save_teacher(tf.Qwen2ForCausalLM(cfg), tmp_path / "qwen2", data)
    metrics, _ = run_teacher(data, tmp_path / "out-qwen2", local_params(folder))
    assert metrics["parameters"] > 0 and 0.0 <= metrics["val_accuracy"] <= 1.0
    bad = _save_teacher(tiny_llama(), tmp_path / "teacher", data)
    cfg_json = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg_json, "model_type": "not-a-model"}))
    with pytest.raises(tjob.TeacherJobError, match="model_type 'not-a-model' is not a transformers-native causal LM"):
        run_teacher(data, tmp_path / "out", local_params(bad))
    with pytest.raises(tjob.TeacherJobError, match="does not exist .*publish the worker first"):
        run_teacher(data, tmp_path / "out", local_params(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(tjob.TeacherJobError, match="not a readable config.json"):
        run_teacher(data, tmp_path / "out", local_params(tmp_path / "empty"))


def test_two_processes_train_the_teacher_one_process_does(data, trained, tmp_path):
    """torchrun with 2 gloo ranks, 4 of the 8 rows of each step each: the same weights up to float order."""
    out = tmp_path / "out"
    out.mkdir()
    ctx = Ctx(spec_dir=data.root, work_dir=tmp_path / "work", provenance=PROVENANCE)
    ctx.resources = {"device": "cpu", "nodes": 1, "nproc": 2, "strategy": "ddp", "cpus": 2, "gpus": 0}
    metrics = tjob.run(train_params(), data.inputs, out, ctx)
    report = json.loads((out / "report.json").read_text())
    assert (report["world_size"], report["strategy"]) == (2, "ddp")
    for key in ("train_loss_first", "train_loss_final", "val_ce"):
        assert metrics[key] == pytest.approx(trained.metrics[key], abs=1e-5), key
    one, two = (load_file(str(o / "model" / "model.safetensors")) for o in (trained.out, out))
    wdiff = max(float(np.abs(one[k] - two[k]).max()) for k in one)
    print(f"teacher on 2 processes vs 1: max weight difference {wdiff:.3g}")
    assert wdiff < 1e-5
    ids = read_split(out / "targets", "val", numpy=True)["topk_ids"]
    assert (ids[..., 0] == trained.targets["val"]["topk_ids"][..., 0]).mean() > 0.99
