"""docs/spec.md's field reference is generated from the models and must be current."""

from pathlib import Path

from compiler.output.docgen import BEGIN, END, splice

DOC = Path(__file__).resolve().parents[2] / "docs" / "spec.md"


def test_spec_reference_is_current():
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    assert splice(text) == text, "docs/spec.md is stale: run `modelspec schema --format markdown` and paste it, or splice with compiler.output.docgen.splice"


def test_every_field_is_documented():
    text = DOC.read_text(encoding="utf-8")
    for key in ("`architecture.n_heads`", "`tokenizer.special_tokens.<name>.id`", "`training.losses.kl.weight`",
                "`training.curriculum[].seq_len`", "`quantization.weights.rules[].match`", "`shapes.decode.cache_len`",
                "`gates[].min_n`", "`export.coreml.packaging`", "`eval.integration_f1_strict`"):
        assert key in text, key
