"""The package's functions: names, inputs, outputs and states, derived from shapes and export.

This is the single source of `contracts/io.json` and of the function each export, convert,
verify and parity job is given.
"""

from __future__ import annotations

from compiler.planning.params import FunctionP, TensorP
from compiler.analysis.resolve import precision_plan
from compiler.schema.spec import Spec


def logits_dtype(spec: Spec) -> str:
    head = "embed_tokens" if spec.architecture.tie_embeddings else "lm_head"
    return precision_plan(spec).module_precision(head)


def _cache_shape(spec: Spec, length: int | str) -> list[int | str]:
    a = spec.architecture
    return [a.n_layers, spec.shapes.batch, a.n_kv_heads, length, a.d_head]


def functions(spec: Spec) -> list[FunctionP]:
    a, shapes, cm = spec.architecture, spec.shapes, spec.export.coreml
    b, v = shapes.batch, a.vocab_size
    logits = logits_dtype(spec)
    kv = spec.quantization.kv_cache
    decode = shapes.decode
    stateful = decode.enabled and cm.decode_cache == "state"
    explicit = decode.enabled and cm.decode_cache == "explicit"
    states = [TensorP(name=n, dtype=kv, shape=_cache_shape(spec, decode.cache_len)) for n in ("key_cache", "value_cache")] if stateful else []

    def prefill(name: str, length: int | str, lengths: list[int]) -> FunctionP:
        enumerated = [[b, t] for t in lengths] if isinstance(length, str) else None
        outputs = [TensorP(name="logits", dtype=logits, shape=[b, length, v])]
        if spec.judge is not None:  # the verdict head at every position: the app reads the last real one
            outputs.append(TensorP(name="judge", dtype=logits, shape=[b, length, 1 + len(spec.judge.clauses)]))
        if spec.halt is not None:  # the halt logit at every position
            outputs.append(TensorP(name="halt", dtype=logits, shape=[b, length, 1]))
        if explicit:
            outputs += [TensorP(name=n, dtype=kv, shape=_cache_shape(spec, length)) for n in ("present_keys", "present_values")]
        return FunctionP(
            name=name, role="prefill", seq_lens=lengths,
            inputs=[TensorP(name="input_ids", dtype="int32", shape=[b, length], enumerated_shapes=enumerated)],
            outputs=outputs, states=states,
        )

    if cm.packaging == "multifunction":
        out = [prefill(f"prefill_{t}", t, [t]) for t in shapes.prefill]
    else:
        # one length is a static shape: nothing to enumerate (and torch.export needs min < max)
        out = [prefill("prefill", "T" if len(shapes.prefill) > 1 else shapes.prefill[0], list(shapes.prefill))]
    if decode.enabled:
        inputs = [TensorP(name="input_ids", dtype="int32", shape=[b, 1]), TensorP(name="position", dtype="int32", shape=[1])]
        outputs = [TensorP(name="logits", dtype=logits, shape=[b, 1, v])]
        if spec.halt is not None:
            outputs.append(TensorP(name="halt", dtype=logits, shape=[b, 1, 1]))
        if explicit:  # CoreML forbids a name that is both an input and an output of one function
            inputs += [TensorP(name=n, dtype=kv, shape=_cache_shape(spec, decode.cache_len)) for n in ("key_cache", "value_cache")]
            outputs += [TensorP(name=n, dtype=kv, shape=_cache_shape(spec, decode.cache_len)) for n in ("present_keys", "present_values")]
        out.append(FunctionP(name="decode", role="decode", seq_lens=[1], inputs=inputs, outputs=outputs, states=states))
        if decode.verify_k:  # decode of the last accepted token plus k drafted ones (docs/roles.md)
            t = decode.verify_k + 1
            v_inputs = [TensorP(name="input_ids", dtype="int32", shape=[b, t]), inputs[1], *inputs[2:]]
            v_outputs = [TensorP(name="logits", dtype=logits, shape=[b, t, v])]
            v_outputs += [TensorP(name="halt", dtype=logits, shape=[b, t, 1])] if spec.halt is not None else []
            v_outputs += [o for o in outputs[1:] if o.name != "halt"]
            out.append(FunctionP(name="verify", role="verify", seq_lens=[t], inputs=v_inputs, outputs=v_outputs, states=states))
    return out


def default_function(spec: Spec) -> str:
    return functions(spec)[0].name
