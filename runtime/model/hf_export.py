"""The trained student as a Hugging Face folder that loads with no code of ours.

`write_hf_folder(checkpoint, tokenizer, dest, ...)` writes:

    config.json              the family the student's flags name: qwen3 (q/k norms), qwen2 (q/k/v
                             biases) or llama; rope scaling, tie flag, bos/eos/pad ids,
                             max_position_embeddings = max_context; both rope layouts
                             (rope_theta/rope_scaling for transformers 4.x, rope_parameters for 5.x)
    generation_config.json   bos/eos/pad ids, greedy by default
    model.safetensors        fp32, transformers names; above `max_shard_bytes` (5 GB) sharded by
                             huggingface_hub into model-0000k-of-0000n.safetensors + an index
    tokenizer files          the pipeline's tokenizer folder (it prepends bos as training rows do),
                             model_max_length = max_context; the chat template when it has one

The folder is checked before it counts: config.json read back through the same reader that
starts a student from a checkpoint must name no architecture mismatch, and the tensors must map
back onto the student exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from compiler.planning.params import ArchitectureP

from .pretrained import architecture_mismatches, expected_scaling, load_pretrained

MAX_SHARD_BYTES = 5 * 10**9  # transformers' default max_shard_size ("5GB")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def family(arch: ArchitectureP) -> str:
    """The transformers family whose modules are exactly the student's."""
    if arch.qk_norm:
        return "qwen3"  # q/k norms; attention_bias is a field of its config
    return "qwen2" if arch.attention_bias else "llama"


def hf_config(arch: ArchitectureP, special_ids: dict[str, int]) -> dict[str, Any]:
    model_type = family(arch)
    scaling = expected_scaling(arch.rope_scaling)
    cfg: dict[str, Any] = {
        "architectures": [ARCHITECTURES[model_type]], "model_type": model_type,
        "vocab_size": arch.vocab_size, "hidden_size": arch.d_model, "num_hidden_layers": arch.n_layers,
        "num_attention_heads": arch.n_heads, "num_key_value_heads": arch.n_kv_heads, "head_dim": arch.d_head,
        "intermediate_size": arch.mlp_hidden, "hidden_act": "silu", "rms_norm_eps": arch.norm_eps,
        "max_position_embeddings": arch.max_context, "tie_word_embeddings": arch.tie_embeddings,
        "rope_theta": arch.rope_theta, "rope_scaling": scaling,
        "rope_parameters": {"rope_theta": arch.rope_theta, **(scaling or {"rope_type": "default"})},
        "bos_token_id": special_ids["bos"], "eos_token_id": special_ids["eos"], "pad_token_id": special_ids["pad"],
        "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True, "torch_dtype": "float32",
    }
    if model_type == "llama":
        cfg |= {"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1}
    elif model_type == "qwen3":
        cfg |= {"attention_bias": arch.attention_bias}
    if model_type in ("qwen2", "qwen3"):
        cfg |= {"use_sliding_window": False, "sliding_window": None, "max_window_layers": arch.n_layers,
                "layer_types": ["full_attention"] * arch.n_layers}
    return cfg


def _copy_tokenizer(tokenizer: Path, dest: Path, max_context: int) -> list[str]:
    names = []
    for f in sorted(Path(tokenizer).iterdir()):
        if f.is_file():
            shutil.copyfile(f, dest / f.name)
            names.append(f.name)
    cfg_path = dest / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["model_max_length"] = max_context
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return names


def _save_weights(state: dict[str, Any], dest: Path, max_shard_bytes: int) -> list[str]:
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_bytes)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n].contiguous() for n in names}, str(dest / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {**split.metadata}, "weight_map": dict(sorted(split.tensor_to_filename.items()))}
        (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return sorted(split.filename_to_tensors)


def write_hf_folder(checkpoint: Path, tokenizer: Path, dest: Path, special_ids: dict[str, int],
                    max_shard_bytes: int = MAX_SHARD_BYTES) -> dict[str, Any]:
    """Write the folder into `dest` (which must not exist; the caller renames it into place)."""
    import torch

    from .checkpoint import load_student

    student = load_student(Path(checkpoint))
    arch = student.arch
    dest.mkdir(parents=True)
    cfg = hf_config(arch, special_ids)
    (dest / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    generation = {"bos_token_id": special_ids["bos"], "eos_token_id": special_ids["eos"], "pad_token_id": special_ids["pad"],
                  "do_sample": False}
    (dest / "generation_config.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    state = {("lm_head.weight" if k == "lm_head.weight" else f"model.{k}"): v.detach().to("cpu", torch.float32).contiguous()
             for k, v in student.state_dict().items()}  # tied: no lm_head tensor, transformers ties on load
    weights = _save_weights(state, dest, max_shard_bytes)
    tokenizer_files = _copy_tokenizer(Path(tokenizer), dest, arch.max_context)

    problems = architecture_mismatches(json.loads((dest / "config.json").read_text(encoding="utf-8")), arch)
    if problems:  # pragma: no cover - hf_config and the reader are kept in agreement by the tests
        raise RuntimeError("the written config.json does not read back as the student: " + "; ".join(problems))
    expected = {k: tuple(v.shape) for k, v in student.state_dict().items()}
    load_pretrained(dest, arch, expected, what="export-hf")  # every tensor maps back, shapes included
    return {"model_type": cfg["model_type"], "weights": weights, "tokenizer": tokenizer_files,
            "parameters": sum(v.numel() for v in state.values())}
