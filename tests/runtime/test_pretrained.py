"""runtime/model/pretrained.py and the student's family flags against real transformers models.

Each family (Llama with llama3 and linear RoPE scaling, Mistral, Qwen2 with q/k/v biases, Qwen3
with per-head q/k norms) is built tiny with transformers, saved with `save_pretrained`, loaded into
the student, and must give the same logits; bad folders are refused with a message naming the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compiler.planning.params import ArchitectureP, RopeScalingP
from runtime.model.pretrained import PretrainedError, load_pretrained
from runtime.model.student import Student

V, D, L, H, KV, HD, FF, CTX = 96, 64, 2, 4, 2, 16, 96, 128

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}


def _arch(**kw) -> ArchitectureP:
    base = dict(vocab_size=V, d_model=D, n_layers=L, n_heads=H, n_kv_heads=KV, d_head=HD, mlp_hidden=FF, norm_eps=1e-6,
                rope_theta=10000.0, max_context=CTX, tie_embeddings=False)
    return ArchitectureP(**(base | kw))


def _hf_model(family: str, **extra):
    import transformers as tf

    common = dict(vocab_size=V, hidden_size=D, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=KV,
                  head_dim=HD, intermediate_size=FF, rms_norm_eps=1e-6, max_position_embeddings=CTX,
                  tie_word_embeddings=extra.pop("tie", False), attn_implementation="eager")
    rope = extra.pop("rope", {"rope_type": "default"})
    cfg_cls, model_cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
                          "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM), "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM)}[family]
    cfg = cfg_cls(**common, rope_parameters={"rope_theta": 10000.0, **rope}, **extra)
    torch.manual_seed(0)
    model = model_cls(cfg).eval()
    with torch.no_grad():  # make biases and norms non-trivial so a dropped tensor shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _save(model, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    return folder


CASES = {
    "llama": ({}, {}),
    "llama-tied": ({"tie": True}, {"tie_embeddings": True}),
    "llama3-rope": ({"rope": LLAMA3}, {"rope_scaling": RopeScalingP(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                                      high_freq_factor=4.0, original_max_position_embeddings=32)}),
    "linear-rope": ({"rope": {"rope_type": "linear", "factor": 4.0}},
                    {"rope_scaling": RopeScalingP(rope_type="linear", factor=4.0, low_freq_factor=None, high_freq_factor=None,
                                                  original_max_position_embeddings=None)}),
    "mistral": ({"sliding_window": None}, {}),
    "qwen2": ({}, {"attention_bias": True}),
    "qwen3": ({}, {"qk_norm": True}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_student_logits_equal_the_source_checkpoint(tmp_path, case):
    family = case.split("-")[0].replace("llama3", "llama").replace("linear", "llama")
    hf_extra, arch_extra = CASES[case]
    model = _hf_model(family, **dict(hf_extra))
    folder = _save(model, tmp_path / case)
    arch = _arch(**arch_extra)
    student = Student(arch).eval()
    state, facts = load_pretrained(folder, arch, {k: tuple(v.shape) for k, v in student.state_dict().items()})
    student.load_state_dict(state, strict=True)
    ids = torch.randint(0, V, (2, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids).logits
        got = student(ids)
    assert facts["model_type"] == family and len(facts["weights_sha256"]) == 64
    assert (got - want).abs().max().item() < 1e-5, f"{case}: max |diff| {(got - want).abs().max().item():.2e}"


def test_every_mismatching_field_is_named(tmp_path):
    folder = _save(_hf_model("qwen2"), tmp_path / "q")
    arch = _arch(n_kv_heads=4, mlp_hidden=128)  # and no attention_bias
    with pytest.raises(PretrainedError) as exc:
        load_pretrained(folder, arch, {})
    msg = str(exc.value)
    assert "config.json num_key_value_heads 2 != architecture.n_kv_heads 4" in msg
    assert "config.json intermediate_size 96 != architecture.mlp.hidden 128" in msg
    assert "architecture.attention_bias False" in msg


def test_padded_vocabulary_rows_must_be_declared(tmp_path):
    folder = _save(_hf_model("llama"), tmp_path / "m")
    with pytest.raises(PretrainedError, match=r"config.json vocab_size 96 != architecture.vocab_size 90"):
        load_pretrained(folder, _arch(vocab_size=90), {})


def test_pickles_remote_code_and_unknown_families_are_refused(tmp_path):
    model = _hf_model("llama")
    pickled = tmp_path / "pickled"  # how older transformers saved: config.json + a pickle
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    arch = _arch()
    with pytest.raises(PretrainedError, match=r"no \*.safetensors weights \(found pytorch_model.bin: pickled weights are never loaded\)"):
        load_pretrained(pickled, arch, {})
    remote = _save(model, tmp_path / "remote")
    cfg = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps(cfg | {"auto_map": {"AutoModelForCausalLM": "x.Y"}}))
    with pytest.raises(PretrainedError, match="auto_map"):
        load_pretrained(remote, arch, {})
    (remote / "config.json").write_text(json.dumps(cfg | {"model_type": "gpt2"}))
    with pytest.raises(PretrainedError, match=r"is a 'gpt2' model; the student maps onto llama, mistral, qwen2, qwen3"):
        load_pretrained(remote, arch, {})
    (remote / "config.json").write_text(json.dumps(cfg | {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0,
                                                                               "rope_theta": 10000.0}}))
    with pytest.raises(PretrainedError, match="'dynamic' is not supported: only static scalings"):
        load_pretrained(remote, arch, {})
