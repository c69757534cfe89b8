"""runtime/model/hf_export.py: the student as a Hugging Face folder that loads with no code of ours.

For each family the student can be (llama; qwen2 with biases; qwen3 with q/k norms and a llama3
RoPE scaling; tied embeddings), a checkpoint is written and exported, then loaded with
`AutoModelForCausalLM` / `AutoTokenizer` only: logits equal the student's within 1e-5 and greedy
generation is identical. Sharding above the size limit writes an index transformers follows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compiler.planning.params import ArchitectureP, RopeScalingP
from runtime.model.checkpoint import save_student
from runtime.model.hf_export import write_hf_folder
from runtime.model.student import Student

SPECIAL = {"pad": 0, "bos": 1, "eos": 2}
LLAMA3 = RopeScalingP(rope_type="llama3", factor=2.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=64)
CASES = {
    "llama": {},
    "llama-tied": {"tie_embeddings": True},
    "qwen2": {"attention_bias": True},
    "qwen3-llama3-rope": {"qk_norm": True, "rope_scaling": LLAMA3},
}


def _arch(**kw) -> ArchitectureP:
    base = dict(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_head=16, mlp_hidden=96, norm_eps=1e-6,
                rope_theta=10000.0, max_context=256, tie_embeddings=False)
    return ArchitectureP(**(base | kw))


def _checkpoint(folder: Path, arch: ArchitectureP) -> Student:
    student = Student(arch, seed=3).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a dropped or misnamed tensor shows
        for name, p in student.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    save_student(folder, student.state_dict(), arch, step=0, quantized=False, provenance={})
    return student


def _greedy(forward, ids: torch.Tensor, steps: int) -> list[int]:
    out = ids
    for _ in range(steps):
        nxt = forward(out)[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], dim=1)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("case", list(CASES))
def test_loads_with_transformers_alone_and_matches_the_student(toy_data, tmp_path, case):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch = _arch(**CASES[case])
    student = _checkpoint(tmp_path / "ckpt", arch)
    facts = write_hf_folder(tmp_path / "ckpt", toy_data.tokenizer, tmp_path / "hf", SPECIAL)
    assert facts["model_type"] == case.split("-")[0]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True, trust_remote_code=False).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    ids = torch.tensor([tok("the weather in Paris")["input_ids"]])
    assert ids[0, 0].item() == SPECIAL["bos"] and tok.model_max_length == 256
    with torch.no_grad():
        diff = (model(ids).logits - student(ids)).abs().max().item()
        assert diff < 1e-5, f"{case}: {diff:.2e}"
        ours = _greedy(lambda x: student(x), ids, 12)
        theirs = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=SPECIAL["pad"],
                                attention_mask=torch.ones_like(ids))[0, ids.shape[1]:].tolist()
    assert theirs == ours
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"], cfg["max_position_embeddings"]) == (1, 2, 0, 256)
    assert json.loads((tmp_path / "hf" / "generation_config.json").read_text())["eos_token_id"] == 2


def test_large_weights_are_sharded_with_an_index(toy_data, tmp_path):
    from transformers import AutoModelForCausalLM

    arch = _arch(attention_bias=True)
    student = _checkpoint(tmp_path / "ckpt", arch)
    facts = write_hf_folder(tmp_path / "ckpt", toy_data.tokenizer, tmp_path / "hf", SPECIAL, max_shard_bytes=200_000)
    assert len(facts["weights"]) > 1 and (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    ids = torch.arange(1, 40)[None]
    with torch.no_grad():
        assert (model(ids).logits - student(ids)).abs().max().item() < 1e-5


TASK = """task: modelspec_local_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
"""


def test_lm_evaluation_harness_runs_a_local_task(toy_data, tmp_path, monkeypatch):
    """lm-evaluation-harness's own `hf` model on the exported folder, a task from local files (offline)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    _checkpoint(tmp_path / "ckpt", _arch(attention_bias=True))
    write_hf_folder(tmp_path / "ckpt", toy_data.tokenizer, tmp_path / "hf", SPECIAL)
    docs = [{"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1)], "label": 0}
            for a, b in ((1, 2), (3, 4), (5, 6), (2, 2))]
    data = tmp_path / "task" / "data.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "task" / "task.yaml").write_text(TASK.format(data=data))
    results = simple_evaluate(model="hf", model_args=f"pretrained={tmp_path / 'hf'},dtype=float32,trust_remote_code=False",
                              tasks=["modelspec_local_choice"], task_manager=TaskManager(include_path=str(tmp_path / "task")),
                              device="cpu", batch_size=2)
    task = results["results"]["modelspec_local_choice"]
    assert 0.0 <= task["acc,none"] <= 1.0
    assert results["n-samples"]["modelspec_local_choice"]["effective"] == len(docs)
