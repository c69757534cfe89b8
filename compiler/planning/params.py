"""Typed job parameters: exactly the values each job reads, flattened out of the spec.

These are the second level of data (the spec as written is the first). Jobs receive these,
never the spec tree; their canonical JSON is what the job fingerprint hashes.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, model_serializer


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    # Fields added after plans existed: left out of the JSON (plan.json, fingerprints) while they
    # hold their default, so a spec that does not use a new feature keeps its job keys.
    OMIT_WHEN_DEFAULT: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler):
        data = handler(self)
        for name in self.OMIT_WHEN_DEFAULT:
            if getattr(self, name) == type(self).model_fields[name].default:
                data.pop(name, None)
        return data


class ResourcesP(Params):
    """Where a job runs, not what it computes: not part of the job fingerprint (compiler/planning/graph.py).

    Executors read it to place the job (`--executor ray` asks for `cpus`/`gpus`; training jobs
    with more than one process launch torchrun with `nodes` x `nproc`)."""

    device: Literal["cpu", "cuda", "mps"]
    nodes: int
    nproc: int  # processes per node
    strategy: Literal["none", "ddp", "fsdp2"]  # none: a single-process job
    cpus: int  # CPU cores per node the job wants
    gpus: int  # GPUs per node the job wants


CPU_JOB = ResourcesP(device="cpu", nodes=1, nproc=1, strategy="none", cpus=1, gpus=0)


class SpecialTokenP(Params):
    text: str
    id: int


class TokenizerParams(Params):
    source_kind: Literal["bpe", "pretrained"]
    source_path: str  # corpus (bpe) or folder (pretrained), as written in the spec
    trained_vocab_size: int | None  # bpe only
    model_vocab_size: int
    special_tokens: dict[str, SpecialTokenP]
    chat_template: str | None = None  # a Jinja file as written in the spec (an external input), installed in the tokenizer

    OMIT_WHEN_DEFAULT = frozenset({"chat_template"})


class JudgeP(Params):
    """A judge's clauses and pairwise objective (docs/roles.md#judge)."""

    clauses: list[str]
    objective: Literal["bradley_terry", "margin"]
    margin: float


class DatasetParams(Params):
    train: str
    eval: str
    tool_registry: str | None  # None: a judge's (no tools)
    role: str
    max_seq_len: int
    special_tokens: dict[str, SpecialTokenP]
    # role judge: rows are preference pairs and clause labels over these clauses (runtime/data/judge.py)
    judge_clauses: list[str] | None = None

    OMIT_WHEN_DEFAULT = frozenset({"judge_clauses"})


class RopeScalingP(Params):
    """A static RoPE scaling (absent: none); the field names are transformers' rope_parameters keys."""

    rope_type: Literal["linear", "llama3"]
    factor: float
    low_freq_factor: float | None  # llama3
    high_freq_factor: float | None  # llama3
    original_max_position_embeddings: int | None  # llama3


class ArchitectureP(Params):
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    mlp_hidden: int
    norm_eps: float
    rope_theta: float
    max_context: int
    tie_embeddings: bool
    attention_bias: bool = False
    qk_norm: bool = False
    rope_scaling: RopeScalingP | None = None
    # role judge: the verdict head `judge_head` = Linear(d_model, judge_outputs) on the final normed hidden
    # states: output 0 the verdict score (log-odds that response A beats B), then one logit per clause
    judge_outputs: int = 0
    # the halt head `halt_head` = Linear(d_model, 1): the logit that the next token ends the turn
    halt_head: bool = False

    OMIT_WHEN_DEFAULT = frozenset({"attention_bias", "qk_norm", "rope_scaling", "judge_outputs", "halt_head"})


class TeacherParams(Params):
    kind: Literal["train", "hf_local"]
    path: str | None  # hf_local
    architecture: ArchitectureP | None  # train
    steps: int | None
    micro_batch: int | None
    seq_len: int | None
    lr: float | None
    seed: int
    top_k: int


class HttpTeacherP(Params):
    """An openai_compatible teacher: where it is and how to talk to it (the key stays in the environment)."""

    base_url: str
    model: str
    api_key_env: str  # the variable's name; its value is read by the job and never written anywhere
    token_ids: Literal["vllm", "sglang", "bytes"]
    tokenizer: str | None  # the served model's tokenizer folder (an external input)
    top_p: float
    sampling_seed: int | None
    in_flight: int
    requests_per_minute: float | None
    tokens_per_minute: float | None
    retries: int
    timeout_s: float
    max_usd: float | None
    usd_per_million_input: float
    usd_per_million_output: float
    max_tokens_budget: int | None


class GenerateParams(Params):
    """The teacher's answers to data.prompts (runtime/jobs/generate.py)."""

    teacher_kind: Literal["train", "hf_local", "openai_compatible"]
    prompts: str  # data.prompts as written in the spec (an external input)
    max_tokens: int  # per teacher turn
    temperature: float
    tool_rounds: int
    batch: int
    max_failure_rate: float
    seed: int
    top_k: int  # local: logits kept per position of the rows (the KL targets); openai_compatible: top logprobs asked per generated token
    max_seq_len: int  # rows longer than this are dropped (too_long), as in the dataset job
    special_tokens: dict[str, SpecialTokenP]
    http: HttpTeacherP | None = None  # openai_compatible only
    logit_kd: bool = False  # openai_compatible with losses.kl: rows on the teacher's ids, sparse targets with the tail

    OMIT_WHEN_DEFAULT = frozenset({"http", "logit_kd"})


class ModuleQuantP(Params):
    module: str
    kind: str
    shape: list[int]
    dtype: str
    granularity: str | None
    block_size: int | None


class ComputeP(Params):
    """`training.compute`: how the train and qat jobs compute (runtime/train/loop.py)."""

    precision: Literal["fp32", "bf16"]
    attention: Literal["sdpa", "eager"]
    activation_checkpointing: bool
    loss_chunk: int  # positions per chunk of the loss (0: all at once)
    bucket_by_length: bool = True  # micro-batches of similar length within each step (runtime/train/data.py)


class TrainingP(Params):
    architecture: ArchitectureP
    seed: int
    total_steps: int
    micro_batch: int  # sequences per process per forward pass (the unit each loss term averages over)
    global_batch: int  # sequences per optimizer step: micro_batch x grad_accum x nproc x nodes of the spec
    optimizer: dict[str, Any]
    lr_schedule: dict[str, Any]
    curriculum: list[dict[str, int]]
    checkpoint_every: int
    losses: dict[str, Any]
    grad_balance: dict[str, Any]
    special_token_ids: dict[str, int]
    compute: ComputeP
    judge: JudgeP | None = None  # role judge: the verdict terms read it

    OMIT_WHEN_DEFAULT = frozenset({"judge"})


class TrainParams(Params):
    training: TrainingP
    start_step: int
    end_step: int
    init_checkpoint: str | None = None  # a transformers folder as written in the spec (an external input: its files are hashed into the key)

    OMIT_WHEN_DEFAULT = frozenset({"init_checkpoint"})


class QatParams(Params):
    training: TrainingP
    start_step: int
    end_step: int
    lr_scale: float
    quantization: list[ModuleQuantP]


class TensorP(Params):
    name: str
    dtype: str
    shape: list[int | str]
    enumerated_shapes: list[list[int]] | None = None


class FunctionP(Params):
    name: str
    role: Literal["prefill", "decode", "verify"]  # verify: decode of k + 1 tokens at once (speculative decoding)
    seq_lens: list[int]  # the lengths this function accepts (one unless enumerated; verify: k + 1)
    inputs: list[TensorP]
    outputs: list[TensorP]
    states: list[TensorP]


class ExportParams(Params):
    architecture: ArchitectureP
    function: FunctionP
    cache_len: int | None
    decode_cache: Literal["state", "explicit"] | None
    compute: str


class PrecisionP(Params):
    compute: str
    island_modules: list[str]
    island_ops: list[str]


class PackageMetadataP(Params):
    """The package's standard CoreML metadata (what Xcode's model viewer shows)."""

    author: str  # export.coreml.metadata.author or its default
    license: str  # export.coreml.metadata.license or its default
    version: str  # the spec's version
    description: str  # the spec's description (the package's short description)


class ConvertParams(Params):
    name: str
    target: str
    compute_units: str
    packaging: str
    default_function: str
    functions: list[FunctionP]
    quantization: list[ModuleQuantP]
    precision: PrecisionP
    special_tokens: dict[str, SpecialTokenP]
    metadata: PackageMetadataP


class VerifyParams(Params):
    name: str
    functions: list[FunctionP]
    default_function: str
    quantization: list[ModuleQuantP]
    quantization_sources: dict[str, str]  # module -> the rule it came from, for error messages only
    precision: PrecisionP
    special_tokens: dict[str, SpecialTokenP]
    size_budget_mb: float | None  # the tightest `package.size_mb <=` gate, checked by verify too


class ParityParams(Params):
    architecture: ArchitectureP
    function: FunctionP
    cache_len: int | None
    samples: int
    decode_steps: int
    seed: int
    lengths: list[int]  # the function's enumerated lengths run (prefill; export.parity.lengths); [] for decode
    positions: int | None  # logit positions compared per sample; None: every real position


class EvalParams(Params):
    architecture: ArchitectureP
    role: str
    max_total_tokens: int
    special_tokens: dict[str, SpecialTokenP]
    # the batches' KV caches and prefill activations fit this (MiB); None: EVAL_CPU_BUDGET_MB on cpu
    memory_budget_mb: int | None = None
    dtype: Literal["fp32", "bf16"] = "fp32"  # the student's weights and caches during eval (bf16 on cuda)
    judge_clauses: list[str] | None = None  # role judge: verdict metrics over these clauses instead of generation
    halt_threshold: float | None = None  # the halt head's stop probability: its metrics (halt_auroc, early_halt_rate)

    OMIT_WHEN_DEFAULT = frozenset({"memory_budget_mb", "dtype", "judge_clauses", "halt_threshold"})


class SpeculateParams(Params):
    """A drafter's acceptance rate against its worker (runtime/jobs/speculate.py)."""

    architecture: ArchitectureP  # the drafter's
    k: int  # drafted tokens per worker call
    max_new_tokens: int
    prompts: int  # the first eval prompts measured
    max_total_tokens: int  # prompt + generated, at most (the drafter's max_context)
    special_tokens: dict[str, SpecialTokenP]
    halt_threshold: float | None = None  # a drafter with a halt head stops drafting once it reaches this

    OMIT_WHEN_DEFAULT = frozenset({"halt_threshold"})


class GateP(Params):
    metric: str
    op: str
    value: float
    policy: str
    min_n: int | None
    kind: str
    producer: str


class ProfileP(Params):
    """What a speed report must match of a deployment profile: its name and chip (not its memory
    budget or context: they do not change how fast the package runs)."""

    name: str
    chip: str | None  # compiler/analysis/chips.py


class GatesParams(Params):
    OMIT_WHEN_DEFAULT: ClassVar[frozenset[str]] = frozenset({"speed_reports", "profiles", "compute_units"})
    gates: list[GateP]
    # speed gates: the folder of speed reports (relative to the spec; an external input), and what a
    # report must match besides the package: the deployment profiles and the compute units
    speed_reports: str = ""
    profiles: list[ProfileP] = []
    compute_units: str = ""


class PublishParams(Params):
    name: str
    version: str
    role: str  # the runtime config tells the app what the model is for
    special_tokens: dict[str, SpecialTokenP]  # ids and texts for the runtime config (bos rule, stop ids)
    vocab_size: int | None = None  # enumerated packaging: the package's outputs have flexible shapes that do not say it
    judge_clauses: list[str] | None = None  # role judge: the runtime config says how to render and read a verdict
    halt_threshold: float | None = None  # the halt head: the runtime config says which output and when to stop

    OMIT_WHEN_DEFAULT = frozenset({"vocab_size", "judge_clauses", "halt_threshold"})


# job kind -> its params class: what a worker validates a job's JSON params with (runtime/worker.py)
BY_KIND: dict[str, type[Params]] = {
    "tokenizer": TokenizerParams, "dataset": DatasetParams, "teacher": TeacherParams, "generate": GenerateParams,
    "train": TrainParams, "qat": QatParams, "export": ExportParams, "convert": ConvertParams, "verify": VerifyParams,
    "parity": ParityParams, "eval": EvalParams, "speculate": SpeculateParams, "gates": GatesParams, "publish": PublishParams,
}
