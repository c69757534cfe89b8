"""torch.export of the student's package functions (prefill per shape, decode with a KV cache).

`wrappers` turns a `Student` into one nn.Module per contract function, `program` exports it and
describes the result, `contract` checks that description against `contracts/io.json`, and
`checks` holds the torch-side properties (cache reproduces full logits, causality, shape
independence, decode uses its cache) that must hold before conversion.
"""
