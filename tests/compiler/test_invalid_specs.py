"""A catalogue of invalid specs: small textual mutations of ``specs/toy.yaml``.

Every case writes the mutated spec into a temporary folder next to a link to ``specs/data/``
(so the spec's relative data paths resolve), validates it in-process and checks that a
``SpecError`` names the expected key path, on the line of the mutated file where the offending
key or value is, with the expected message (and hint, where the case says so). The formatted
problems are snapshotted (``pytest --snapshot-update`` regenerates them).

A handful of cases also run through the real ``modelspec validate`` console script, because
exit status and printing live in ``compiler.cli.main``: exit 2, ``file:line:col: path: message``
on stderr, a trailing "nothing written" line, and no new files.

Cases marked ``xfail(strict=True)`` are compiler bugs; each reason says what goes wrong.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from compiler.core.errors import Problem, SpecError
from compiler.reading.validate import validate_file

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "specs" / "toy.yaml"
DATA = ROOT / "specs" / "data"


@dataclass(frozen=True)
class Case:
    id: str
    old: str  # must occur exactly once in specs/toy.yaml
    new: str
    path: str  # exact dotted key path of the expected problem
    at: str | None  # text whose unique occurrence in the mutated file is on the expected line; None: no line check
    message: str  # substring of the expected problem's message
    hint: str | None = None  # substring of the expected problem's hint
    bug: str | None = None  # a compiler bug: the case is a strict xfail with this reason

    def mutate(self, text: str) -> str:
        assert text.count(self.old) == 1, f"{self.id}: {self.old!r} occurs {text.count(self.old)} times in specs/toy.yaml"
        return text.replace(self.old, self.new, 1)


HTTP_TEACHER = (
    "  kind: openai_compatible\n  base_url: http://localhost:8000/v1\n  model: kimi-k2-0905\n  api_key_env: KIMI_KEY\n"
    "  token_ids: vllm\n  generation: {max_tokens: 256}\n"
    "  budget: {max_usd: 20, usd_per_million_input: 0.6, usd_per_million_output: 2.5}\n  top_k: 16\n"
)
TEACHER_TRAIN_BODY = (
    "  kind: train\n"
    "  architecture: {d_model: 192, n_layers: 3, n_heads: 6, n_kv_heads: 2, d_head: 32, mlp: {kind: swiglu, hidden: 512}}\n"
    "  steps: 300\n"
    "  micro_batch: 16\n"
    "  seq_len: 128\n"
    "  lr: 2.0e-3\n"
    "  top_k: 16\n"
    "  generation: {max_tokens: 96, tool_rounds: 2, batch: 32, max_failure_rate: 0.1}   # answers data.prompts\n"
)

TOY_PROMPTS = "  prompts: data/toy/prompts.jsonl   # the teacher's transcripts of these join the train split\n"
TOY_DATA = ("\ndata:\n  train: data/toy/train.jsonl\n  eval: data/toy/eval.jsonl\n  tool_registry: data/toy/tools.json\n"
            + TOY_PROMPTS)

CASES: list[Case] = [
    # --- unknown keys at several depths, with did-you-mean -------------------------------------
    Case("unknown_key_top_level", "description: Tiny", "descripton: Tiny", "descripton", "descripton:",
         "unknown key 'descripton'", "did you mean 'description'?"),
    Case("unknown_key_architecture_n_head", "  n_heads: 4\n", "  n_head: 4\n", "architecture.n_head", "  n_head: 4",
         "unknown key 'n_head'", "did you mean 'n_heads'?"),
    Case("unknown_key_mlp_hiden", "hidden: 352", "hiden: 352", "architecture.mlp.hiden", "hiden: 352",
         "unknown key 'hiden'", "did you mean 'hidden'?"),
    Case("unknown_key_teacher_n_head", "n_heads: 6,", "n_head: 6,", "teacher.architecture.n_head", "n_head: 6,",
         "unknown key 'n_head'", "did you mean 'n_heads'?"),
    Case("unknown_key_loss_kll", "    kl: {", "    kll: {", "training.losses.kll", "kll:",
         "unknown key 'kll'", "did you mean 'kl'?"),
    Case("unknown_key_lr_shedule", "lr_schedule:", "lr_shedule:", "training.lr_shedule", "lr_shedule:",
         "unknown key 'lr_shedule'", "did you mean 'lr_schedule'?"),
    Case("unknown_key_quant_rule", "dtype: int4, granularity: per_block", "dtype: int4, granularty: per_block",
         "quantization.weights.rules[1].granularty", "granularty:", "unknown key 'granularty'", "did you mean 'granularity'?"),
    Case("unknown_key_ramp_body", "end: 0.05, steps: 100}", "end: 0.05, stepz: 100}",
         "training.losses.early_tool.weight.ramp.stepz", "stepz:", "unknown key 'stepz'", "did you mean 'steps'?"),
    Case("unknown_key_module_island", 'reason: "final norm"', 'reasn: "final norm"', "precision.islands[1].reasn", "reasn:",
         "unknown key 'reasn'", "did you mean 'reason'?"),
    Case("unknown_key_for_qat_off", "qat: {enabled: true, start_fraction: 0.8, lr_scale: 0.1}",
         "qat: {enabled: false, start_fraction: 0.8}", "training.qat.start_fraction", "qat: {enabled: false",
         "unknown key 'start_fraction'", "allowed keys here: enabled"),
    # --- missing required keys -----------------------------------------------------------------
    Case("missing_max_context", "  max_context: 256\n", "", "architecture.max_context", "  vocab_size: 512\n",
         "missing required key 'max_context'", "no code defaults"),
    Case("missing_training_seed", "  seed: 1234\n", "", "training.seed", "  steps: 400\n",
         "missing required key 'seed'"),
    Case("missing_modelspec", "modelspec: 1\n", "", "<root>", "name: toy-worker",
         "missing key 'modelspec'", "modelspec: 1"),
    # --- strict types --------------------------------------------------------------------------
    Case("strict_quoted_int", "  steps: 400\n", '  steps: "400"\n', "training.steps", 'steps: "400"',
         "expected an integer, got string '400'", "remove the quotes"),
    Case("strict_yes_is_not_bool", "tie_embeddings: false", "tie_embeddings: yes", "architecture.tie_embeddings",
         "tie_embeddings: yes", "expected true or false, got string 'yes'", "yes/no/on/off are strings"),
    Case("strict_float_for_int", "  n_layers: 2\n", "  n_layers: 1.5\n", "architecture.n_layers", "n_layers: 1.5",
         "expected an integer, got float 1.5", "whole number"),
    Case("strict_quoted_float", "lr: 3.0e-3", 'lr: "3.0e-3"', "training.optimizer.lr", 'lr: "3.0e-3"',
         "expected a number, got string '3.0e-3'", "remove the quotes"),
    Case("strict_version_float", "version: 1.0.0", "version: 1.0", "version", "version: 1.0",
         "expected a string, got float 1.0", "semver"),
    # --- identity ------------------------------------------------------------------------------
    Case("version_not_semver", "version: 1.0.0", "version: v1", "version", "version: v1", "string 'v1' does not match"),
    Case("name_uppercase", "name: toy-worker", "name: Toy_Worker", "name", "name: Toy_Worker",
         "string 'Toy_Worker' does not match"),
    Case("name_path_traversal", "name: toy-worker", "name: ../x", "name", "name: ../x", "string '../x' does not match"),
    Case("modelspec_2", "modelspec: 1", "modelspec: 2", "modelspec", "modelspec: 2",
         "unsupported format version 2", "reads modelspec 1"),
    Case("role_unknown", "role: worker", "role: planner", "role", "role: planner",
         "string 'planner' is not allowed; expected 'worker', 'judge' or 'drafter'"),
    # --- teacher -------------------------------------------------------------------------------
    Case("teacher_kind_typo", "  kind: train\n", "  kind: trian\n", "teacher.kind", "kind: trian",
         "unknown kind 'trian'", "did you mean 'train'?"),
    Case("teacher_http_without_prompts", TEACHER_TRAIN_BODY + TOY_DATA, HTTP_TEACHER + TOY_DATA.replace(TOY_PROMPTS, ""),
         "teacher.kind", "kind: openai_compatible", "writes its transcripts for data.prompts, and data.prompts is not set",
         "set data.prompts"),
    Case("teacher_http_ce_teacher", TEACHER_TRAIN_BODY, HTTP_TEACHER, "training.losses.ce_teacher", "ce_teacher: {weight",
         "needs the teacher's distribution at every position of every training row", "kl distils the teacher's logprobs"),
    Case("teacher_http_kl_without_tokenizer", TEACHER_TRAIN_BODY, HTTP_TEACHER, "training.losses.kl", "kl: {weight: 1.0",
         "logit KD (kl) compares teacher and student id by id", "sequence-level KD"),
    Case("teacher_http_kl_temperature", TEACHER_TRAIN_BODY, HTTP_TEACHER, "training.losses.kl.temperature", "temperature: 2.0",
         "cannot apply to an HTTP teacher's logprobs", "temperature: 1.0"),
    Case("teacher_http_bytes_without_tokenizer", TEACHER_TRAIN_BODY, HTTP_TEACHER.replace("token_ids: vllm", "token_ids: bytes"),
         "teacher.tokenizer", None, "through the served model's tokenizer, and none is given", "set teacher.tokenizer"),
    Case("teacher_http_key_env_name", TEACHER_TRAIN_BODY, HTTP_TEACHER.replace("api_key_env: KIMI_KEY", "api_key_env: sk-abc"),
         "teacher.api_key_env", "api_key_env: sk-abc", "not an environment variable name", "never write the key itself"),
    Case("teacher_hf_local_empty_path", TEACHER_TRAIN_BODY, '  kind: hf_local\n  path: ""\n  top_k: 16\n  generation: {max_tokens: 96}\n', "teacher.path",
         'path: ""', "empty path"),
    Case("teacher_seq_len_exceeds_max_context", "  seq_len: 128\n  lr: 2.0e-3", "  seq_len: 512\n  lr: 2.0e-3",
         "teacher.seq_len", "seq_len: 512", "exceeds architecture.max_context"),
    # --- architecture --------------------------------------------------------------------------
    Case("d_model_not_heads_times_d_head", "d_model: 128", "d_model: 96", "architecture.d_model", "d_model: 96",
         "d_model 96 != n_heads * d_head = 4 * 32 = 128"),
    Case("n_kv_heads_not_divisor", "  n_kv_heads: 2\n", "  n_kv_heads: 3\n", "architecture.n_kv_heads", "n_kv_heads: 3",
         "n_heads 4 is not a multiple of n_kv_heads 3", "valid values: [1, 2, 4]"),
    Case("teacher_n_kv_heads_not_divisor", "n_kv_heads: 2, d_head", "n_kv_heads: 4, d_head",
         "teacher.architecture.n_kv_heads", "n_kv_heads: 4", "n_heads 6 is not a multiple of n_kv_heads 4"),
    Case("rope_dynamic_scaling", "scaling: none", "scaling: dynamic", "architecture.rope.scaling", "scaling: dynamic",
         "length-dependent scalings (dynamic, yarn, longrope) are refused", "padded length"),
    # --- tokenizer -----------------------------------------------------------------------------
    Case("special_token_duplicate_id", 'bos: {text: "<s>", id: 1}', 'bos: {text: "<s>", id: 0}',
         "tokenizer.special_tokens.bos.id", 'bos: {text: "<s>", id: 0}', "id 0 is already used by 'pad'"),
    Case("special_token_id_not_below_vocab", 'think_end: {text: "</think>", id: 4}', 'think_end: {text: "</think>", id: 512}',
         "tokenizer.special_tokens.think_end.id", "id: 512", "id 512 is not below architecture.vocab_size 512"),
    Case("special_token_duplicate_text", 'think_end: {text: "</think>"', 'think_end: {text: "<think>"',
         "tokenizer.special_tokens.think_end.text", 'think_end: {text: "<think>"', "text '<think>' is already used by 'think_start'"),
    Case("special_token_whitespace", 'think_end: {text: "</think>"', 'think_end: {text: "</ think>"',
         "tokenizer.special_tokens.think_end.text", "</ think>", "contains whitespace"),
    Case("special_token_bad_name", "    think_end:", "    ThinkEnd:", "tokenizer.special_tokens.ThinkEnd", "ThinkEnd:",
         "special-token name 'ThinkEnd' is not"),
    Case("special_token_missing_pad", '    pad: {text: "<pad>", id: 0}\n', "", "tokenizer.special_tokens", "    bos: {",
         "missing special token 'pad'"),
    Case("special_token_missing_eos", '    eos: {text: "</s>", id: 2}\n', "", "tokenizer.special_tokens", "    pad: {",
         "missing special token 'eos'"),
    Case("special_token_missing_tool_call_start_for_worker", '    tool_call_start: {text: "<tool_call>", id: 5}\n', "",
         "tokenizer.special_tokens", "    pad: {", "missing special token 'tool_call_start'"),
    Case("special_token_missing_think_end_the_eval_reads", '    think_end: {text: "</think>", id: 4}\n', "",
         "tokenizer.special_tokens", "    pad: {", "missing special token 'think_end': the eval job reads it for every role",
         "a judge or drafter shares the worker's tool and think tokens"),
    Case("bpe_vocab_exceeds_architecture", "corpus.txt, vocab_size: 512", "corpus.txt, vocab_size: 1024",
         "tokenizer.source.vocab_size", "vocab_size: 1024", "tokenizer vocab_size 1024 exceeds architecture.vocab_size 512"),
    # --- shapes --------------------------------------------------------------------------------
    Case("prefill_exceeds_max_context", "prefill: [64, 128, 256]", "prefill: [64, 128, 512]", "shapes.prefill[2]",
         "prefill: [64, 128, 512]", "prefill shape 512 exceeds architecture.max_context 256"),
    Case("prefill_unsorted", "prefill: [64, 128, 256]", "prefill: [128, 64, 256]", "shapes.prefill[1]",
         "prefill: [128, 64, 256]", "not ascending (128 then 64)", "[64, 128, 256]"),
    Case("prefill_duplicate", "prefill: [64, 128, 256]", "prefill: [64, 128, 128, 256]", "shapes.prefill[2]",
         "prefill: [64, 128, 128, 256]", "prefill shape 128 is listed twice"),
    Case("decode_cache_len_exceeds_max_context", "cache_len: 256", "cache_len: 512", "shapes.decode.cache_len",
         "cache_len: 512", "cache_len 512 exceeds architecture.max_context 256"),
    Case("decode_cache_len_shorter_than_prefill", "cache_len: 256", "cache_len: 128", "shapes.decode.cache_len",
         "cache_len: 128", "shorter than the longest prefill shape 256"),
    Case("parity_length_not_a_prefill_shape", "parity: {lengths: all, positions: all, decode_steps: 16}", "parity: {lengths: [64, 96]}",
         "export.parity.lengths[1]", "parity: {lengths: [64, 96]}", "parity length 96 is not a prefill shape",
         "choose among shapes.prefill [64, 128, 256]"),
    Case("parity_decode_steps_exceed_cache", "parity: {lengths: all, positions: all, decode_steps: 16}", "parity: {decode_steps: 300}",
         "export.parity.decode_steps", "decode_steps: 300", "decode_steps 300 exceeds shapes.decode.cache_len 256"),
    Case("parity_positions_not_a_count", "parity: {lengths: all, positions: all, decode_steps: 16}", "parity: {positions: some}",
         "export.parity.positions", "positions: some", "expected 'all'"),
    # --- training ------------------------------------------------------------------------------
    Case("curriculum_until_step_not_increasing", "{until_step: 200, seq_len: 64}", "{until_step: 400, seq_len: 64}",
         "training.curriculum[1].until_step", "{until_step: 400, seq_len: 128}", "until_step 400 is not after the previous stage's 400"),
    Case("curriculum_last_until_step_not_steps", "{until_step: 400, seq_len: 128}", "{until_step: 300, seq_len: 128}",
         "training.curriculum[1].until_step", "{until_step: 300", "the last until_step 300 != training.steps 400"),
    Case("curriculum_seq_len_not_prefill_shape", "{until_step: 400, seq_len: 128}", "{until_step: 400, seq_len: 96}",
         "training.curriculum[1].seq_len", "seq_len: 96", "seq_len 96 is not an exported prefill shape"),
    Case("loss_negative_weight", "ce_teacher: {weight: 0.5}", "ce_teacher: {weight: -0.5}",
         "training.losses.ce_teacher.weight", "weight: -0.5", "greater than or equal to 0"),
    Case("loss_weight_quoted", "ce_teacher: {weight: 0.5}", 'ce_teacher: {weight: "0.5"}',
         "training.losses.ce_teacher.weight", 'weight: "0.5"', "a weight is a number >= 0"),
    Case("ramp_longer_than_training", "end: 0.05, steps: 100}", "end: 0.05, steps: 500}",
         "training.losses.early_tool.weight.ramp.steps", "steps: 500}", "ramp of 500 steps is longer than training.steps 400"),
    Case("warmup_not_shorter_than_steps", "warmup_steps: 20", "warmup_steps: 400", "training.lr_schedule.warmup_steps",
         "warmup_steps: 400", "warmup_steps 400 is not shorter than training.steps 400"),
    Case("min_lr_exceeds_lr", "min_lr: 3.0e-4", "min_lr: 3.0e-2", "training.lr_schedule.min_lr", "min_lr: 3.0e-2",
         "min_lr 0.03 exceeds optimizer.lr 0.003"),
    Case("checkpoint_every_exceeds_steps", "checkpoint_every: 100", "checkpoint_every: 1000", "training.checkpoint_every",
         "checkpoint_every: 1000", "checkpoint_every 1000 exceeds training.steps 400"),
    Case("qat_start_fraction_zero", "start_fraction: 0.8", "start_fraction: 0", "training.qat.start_fraction",
         "start_fraction: 0", "must be greater than 0"),
    Case("qat_start_fraction_one", "start_fraction: 0.8", "start_fraction: 1.0", "training.qat.start_fraction",
         "start_fraction: 1.0", "must be less than 1"),
    Case("qat_start_fraction_no_kd_steps", "start_fraction: 0.8", "start_fraction: 0.001", "training.qat.start_fraction",
         "start_fraction: 0.001", "leaves 0 KD steps of 400"),
    # --- quantization --------------------------------------------------------------------------
    Case("quant_rule_matches_nothing", 'match: "lm_head"', 'match: "lm_hed"', "quantization.weights.rules[2].match",
         'match: "lm_hed"', "rule 'lm_hed' matches no module of the architecture", "did you mean 'lm_head'?"),
    Case("quant_rule_lm_head_with_tied_embeddings", "tie_embeddings: false", "tie_embeddings: true",
         "quantization.weights.rules[2].match", 'match: "lm_head"', "rule 'lm_head' matches no module", "tie_embeddings is true"),
    Case("quant_rule_shadowed", '      - {match: "lm_head", dtype: int8, granularity: per_channel}\n',
         '      - {match: "lm_head", dtype: int8, granularity: per_channel}\n'
         '      - {match: "layers.0.mlp.up_proj", dtype: int8, granularity: per_channel}\n',
         "quantization.weights.rules[3].match", "layers.0.mlp.up_proj", "is shadowed: earlier rules win every module it matches"),
    Case("quant_rule_matches_only_norms", 'match: "embed_tokens", dtype: none', 'match: "norm", dtype: none',
         "quantization.weights.rules[0].match", 'match: "norm"', "matches only norms"),
    Case("quant_per_block_without_block_size", "granularity: per_block, block_size: 32}", "granularity: per_block}",
         "quantization.weights.rules[1].granularity", "granularity: per_block}", "per_block needs block_size"),
    Case("quant_block_size_on_per_channel", 'match: "lm_head", dtype: int8, granularity: per_channel}',
         'match: "lm_head", dtype: int8, granularity: per_channel, block_size: 32}', "quantization.weights.rules[2].block_size",
         "per_channel, block_size: 32}", "block_size only applies to per_block, not per_channel"),
    Case("quant_block_size_not_dividing_in_features", "block_size: 32", "block_size: 48",
         "quantization.weights.rules[1].block_size", "block_size: 48", "block_size 48 does not divide the 128 in-features"),
    Case("quant_unknown_dtype", "dtype: int4", "dtype: int3", "quantization.weights.rules[1].dtype", "dtype: int3",
         "string 'int3' is not allowed", "did you mean"),
    # --- precision -----------------------------------------------------------------------------
    Case("island_module_matches_nothing", "layers.*.*_layernorm", "layers.*.*_norm", "precision.islands[0].module",
         "layers.*.*_norm", "island 'layers.*.*_norm' matches no module of the architecture"),
    Case("island_unknown_op", "op: softmax", "op: softmx", "precision.islands[2].op", "op: softmx",
         "string 'softmx' is not allowed", "did you mean 'softmax'?"),
    Case("island_listed_twice", '    - {op: softmax, reason: "long-context softmax"}\n',
         '    - {op: softmax, reason: "long-context softmax"}\n    - {op: softmax, reason: "again"}\n',
         "precision.islands[3]", 'reason: "again"', "island op:softmax is listed twice"),
    # --- gates ---------------------------------------------------------------------------------
    Case("gate_unknown_metric", "metric: eval.tool_selection", "metric: eval.tool_selecton", "gates[6].metric",
         "eval.tool_selecton", "unknown metric 'eval.tool_selecton'", "did you mean 'eval.tool_selection'?"),
    Case("gate_rate_out_of_range", 'op: ">=", value: 0.90, min_n: 50', 'op: ">=", value: 90, min_n: 50', "gates[5].value",
         "value: 90,", "90.0 is outside [0.0, 1.0], the range of rate metric eval.json_validity", "write 0.9, not 90"),
    Case("gate_wrong_operator_for_count", 'eval.control_tool_calls, op: "=="', 'eval.control_tool_calls, op: ">="',
         "gates[9].op", "eval.control_tool_calls", "operator '>=' is not valid for count metric eval.control_tool_calls"),
    Case("gate_count_not_whole", 'eval.control_tool_calls, op: "==", value: 0', 'eval.control_tool_calls, op: "==", value: 0.5',
         "gates[9].value", "eval.control_tool_calls", "0.5 is not a whole number"),
    Case("gate_min_n_on_non_sample_metric", 'parity.top1_agreement, op: ">=", value: 0.99}',
         'parity.top1_agreement, op: ">=", value: 0.99, min_n: 10}', "gates[1].min_n", "min_n: 10",
         "min_n does not apply to parity.top1_agreement"),
    Case("gate_value_nan", "value: 55}", "value: .nan}", "gates[0].value", "value: .nan", "finite number"),
    Case("gate_duplicate", '  - {metric: package.size_mb, op: "<=", value: 2.0}\n',
         '  - {metric: package.size_mb, op: "<=", value: 2.0}\n  - {metric: package.size_mb, op: "<=", value: 3.0}\n',
         "gates[12]", "value: 3.0", "gate package.size_mb <= appears twice"),
    # --- deployment ----------------------------------------------------------------------------
    Case("profile_does_not_fit", "memory_gb: 64", "memory_gb: 0.0001", "deployment.profiles[0].memory_gb",
         "memory_gb: 0.0001", "but memory_gb is 0.0001"),
    Case("profile_context_exceeds_max_context", "sessions: 2, context: 256", "sessions: 2, context: 512",
         "deployment.profiles[0].context", "context: 512", "context 512 exceeds architecture.max_context 256"),
    Case("profile_duplicate_name", "    - {name: m1-max-64g, memory_gb: 64, sessions: 2, context: 256, chip: apple-m1-max}\n",
         "    - {name: m1-max-64g, memory_gb: 64, sessions: 2, context: 256, chip: apple-m1-max}\n"
         "    - {name: m1-max-64g, memory_gb: 32, sessions: 1, context: 128}\n",
         "deployment.profiles[1].name", "memory_gb: 32", "profile 'm1-max-64g' is listed twice"),
    # --- paths ---------------------------------------------------------------------------------
    Case("data_path_missing", "tool_registry: data/toy/tools.json", "tool_registry: data/toy/tool.json",
         "data.tool_registry", "data/toy/tool.json", "'data/toy/tool.json' does not exist (relative to the spec file's folder)"),
    Case("corpus_path_missing", "corpus: data/toy/corpus.txt", "corpus: data/toy/korpus.txt", "tokenizer.source.corpus",
         "korpus.txt", "'data/toy/korpus.txt' does not exist"),
    # --- YAML level ----------------------------------------------------------------------------
    Case("yaml_python_tag", "description: Tiny", "description: !!python/object/apply:os.system Tiny", "<root>",
         "!!python", "python/object/apply:os.system' is not allowed", "never constructs objects"),
    Case("yaml_control_character_escape", "description: Tiny tool-calling worker that runs end to end on a laptop CPU.",
         'description: "\\x1b[31mTiny"', "<root>", "description:", "control characters"),
    Case("yaml_duplicate_key", "role: worker\n", "role: worker\nrole: judge\n", "role", "role: judge",
         "duplicate key 'role' (first at line 6)"),
    Case("yaml_two_documents", "\ngates:\n", "\n---\ngates:\n", "<root>", "---", "more than one YAML document"),
    Case("yaml_non_string_key", "role: worker\n", "role: worker\n1: x\n", "<root>", "1: x", "mapping key 1 is not a string"),
    Case("yaml_merge_key", "  n_layers: 2\n", "  n_layers: 2\n  <<: {d_head: 32}\n", "architecture.<<", "<<:",
         "merge keys ('<<') are not allowed"),
    Case("yaml_bad_indentation", "  n_layers: 2\n", "   n_layers: 2\n", "<root>", "   n_layers: 2", "YAML syntax error"),
]

CASE_BY_ID = {c.id: c for c in CASES}
assert len(CASE_BY_ID) == len(CASES), "duplicate case ids"


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else []
    return pytest.param(case, id=case.id, marks=marks)


def write_spec(folder: Path, text: str, *, copy_data: bool = False) -> Path:
    """`folder/toy.yaml` with `text`, next to `folder/data` (a link, or a copy for CLI runs)."""
    if copy_data:
        shutil.copytree(DATA, folder / "data")
    else:
        (folder / "data").symlink_to(DATA, target_is_directory=True)
    spec = folder / "toy.yaml"
    spec.write_text(text, encoding="utf-8")
    return spec


def expected_line(text: str, anchor: str) -> int:
    assert text.count(anchor) == 1, f"line anchor {anchor!r} occurs {text.count(anchor)} times in the mutated spec"
    return text[: text.index(anchor)].count("\n") + 1


def normalise(text: str, folder: Path) -> str:
    return text.replace(str(folder), "<tmp>")


def problems_of(spec: Path) -> list[Problem]:
    with pytest.raises(SpecError) as info:
        validate_file(str(spec))
    assert info.value.problems, "SpecError without problems"
    return info.value.problems


def test_catalogue_is_large_enough():
    assert len(CASES) >= 45


def test_unmutated_toy_spec_is_valid(tmp_path):
    """The harness itself is sound: the copied spec with its data link validates."""
    spec = write_spec(tmp_path, TOY.read_text(encoding="utf-8"))
    validated = validate_file(str(spec))
    assert validated.spec.name == "toy-worker"


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_invalid_spec(case: Case, tmp_path, snapshot):
    text = case.mutate(TOY.read_text(encoding="utf-8"))
    spec = write_spec(tmp_path, text)
    problems = problems_of(spec)
    n_lines = text.count("\n") + 1

    for p in problems:
        assert p.file == str(spec)
        assert 1 <= p.line <= n_lines and p.col >= 1, p
        unknown = re.fullmatch(r"unknown key '(.*)'", p.message)
        if unknown:  # a did-you-mean never suggests the very key that is unknown
            assert p.hint != f"did you mean '{unknown.group(1)}'?", p.format()

    formatted = [p.format() for p in problems]
    hits = [p for p in problems if p.path == case.path and case.message in p.message]
    assert hits, f"no problem at {case.path!r} with {case.message!r}; got:\n" + "\n".join(formatted)
    if case.at is not None:
        line = expected_line(text, case.at)
        assert any(p.line == line for p in hits), f"expected line {line}; got:\n" + "\n".join(formatted)
    if case.hint is not None:
        assert any(p.hint and case.hint in p.hint for p in hits), f"expected hint {case.hint!r}; got:\n" + "\n".join(formatted)

    assert normalise("\n".join(formatted), tmp_path) == snapshot


def test_several_schema_problems_reported_at_once(tmp_path, snapshot):
    text = TOY.read_text(encoding="utf-8")
    for cid in ("unknown_key_mlp_hiden", "strict_quoted_int", "strict_yes_is_not_bool", "role_unknown", "version_not_semver"):
        text = CASE_BY_ID[cid].mutate(text)
    problems = problems_of(write_spec(tmp_path, text))
    paths = {p.path for p in problems}
    assert {"architecture.mlp.hiden", "training.steps", "architecture.tie_embeddings", "role", "version"} <= paths
    assert normalise("\n".join(p.format() for p in problems), tmp_path) == snapshot


def test_several_cross_field_problems_reported_at_once(tmp_path, snapshot):
    text = TOY.read_text(encoding="utf-8")
    ids = ("d_model_not_heads_times_d_head", "special_token_duplicate_id", "prefill_unsorted", "warmup_not_shorter_than_steps",
           "quant_rule_matches_nothing", "island_module_matches_nothing", "gate_rate_out_of_range", "data_path_missing")
    for cid in ids:
        text = CASE_BY_ID[cid].mutate(text)
    problems = problems_of(write_spec(tmp_path, text))
    for cid in ids:
        case = CASE_BY_ID[cid]
        assert any(p.path == case.path and case.message in p.message and p.line == expected_line(text, case.at)
                   for p in problems), cid
    assert len({p.path for p in problems}) >= len(ids)
    assert normalise("\n".join(p.format() for p in problems), tmp_path) == snapshot


# --- the real command line ---------------------------------------------------------------------

def modelspec_exe() -> str:
    local = Path(sys.executable).parent / "modelspec"
    found = str(local) if local.exists() else shutil.which("modelspec")
    if not found:
        pytest.skip("the modelspec console script is not installed")
    return found


def run_cli(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env["NO_COLOR"] = "1"
    return subprocess.run([modelspec_exe(), *args], cwd=folder, capture_output=True, text=True, timeout=60, env=env)


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


LINE = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): (?P<path>\S+): (?P<message>.+)$")
CLI_CASES = ["unknown_key_mlp_hiden", "strict_quoted_int", "d_model_not_heads_times_d_head", "gate_rate_out_of_range",
             "yaml_duplicate_key", "yaml_python_tag"]


def check_cli_stderr(stderr: str, file: str) -> list[re.Match]:
    """Every line is a problem, a hint, or the final count; returns the problem lines."""
    lines = stderr.rstrip("\n").split("\n")
    tail = re.fullmatch(r"(\d+) problems?; nothing written\.", lines[-1])
    assert tail, f"last stderr line is not the count: {lines[-1]!r}"
    heads = []
    for line in lines[:-1]:
        if line.startswith("    hint: "):
            assert heads, "a hint before any problem"
            continue
        m = LINE.match(line)
        assert m, f"stderr line not in file:line:col: path: message form: {line!r}"
        assert m["file"] == file
        heads.append(m)
    assert len(heads) == int(tail.group(1))
    assert "Traceback" not in stderr
    return heads


@pytest.mark.parametrize("case_id", CLI_CASES)
def test_cli_validate_reports_and_writes_nothing(case_id, tmp_path, snapshot):
    case = CASE_BY_ID[case_id]
    text = case.mutate(TOY.read_text(encoding="utf-8"))
    write_spec(tmp_path, text, copy_data=True)
    before = tree(tmp_path)
    result = run_cli(tmp_path, "validate", "toy.yaml")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    heads = check_cli_stderr(result.stderr, "toy.yaml")
    line = expected_line(text, case.at)
    assert any(m["path"] == case.path and case.message in m["message"] and int(m["line"]) == line for m in heads), result.stderr
    assert tree(tmp_path) == before, "validate wrote or changed files"
    assert result.stderr == snapshot


def test_cli_per_block_without_block_size_is_a_spec_problem(tmp_path):
    write_spec(tmp_path, CASE_BY_ID["quant_per_block_without_block_size"].mutate(TOY.read_text(encoding="utf-8")))
    result = run_cli(tmp_path, "validate", "toy.yaml")
    assert result.returncode == 2, result.stderr
    check_cli_stderr(result.stderr, "toy.yaml")


def test_cli_reports_every_file(tmp_path):
    """Problems of several spec files come out together, with one count line."""
    toy = TOY.read_text(encoding="utf-8")
    write_spec(tmp_path, CASE_BY_ID["d_model_not_heads_times_d_head"].mutate(toy), copy_data=True)
    (tmp_path / "other.yaml").write_text(CASE_BY_ID["strict_quoted_int"].mutate(toy), encoding="utf-8")
    before = tree(tmp_path)
    result = run_cli(tmp_path, "validate", "toy.yaml", "other.yaml")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.rstrip("\n").split("\n")
    assert lines[-1] == "2 problems; nothing written."
    heads = [LINE.match(line) for line in lines[:-1] if not line.startswith("    hint: ")]
    assert all(heads), result.stderr
    assert {(m["file"], m["path"]) for m in heads} == {("toy.yaml", "architecture.d_model"), ("other.yaml", "training.steps")}
    assert tree(tmp_path) == before


def test_cli_json_problems(tmp_path):
    case = CASE_BY_ID["unknown_key_lr_shedule"]
    text = case.mutate(TOY.read_text(encoding="utf-8"))
    write_spec(tmp_path, text, copy_data=True)
    before = tree(tmp_path)
    result = run_cli(tmp_path, "validate", "--json", "toy.yaml")
    assert result.returncode == 2, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["valid"] == []
    hit = [p for p in report["problems"] if p["path"] == case.path]
    assert hit and hit[0]["line"] == expected_line(text, case.at) and hit[0]["hint"] == "did you mean 'lr_schedule'?"
    assert tree(tmp_path) == before


def test_cli_valid_copy_exits_0(tmp_path):
    write_spec(tmp_path, TOY.read_text(encoding="utf-8"), copy_data=True)
    result = run_cli(tmp_path, "validate", "toy.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: toy.yaml (toy-worker ")
