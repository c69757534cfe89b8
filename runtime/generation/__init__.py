"""Teacher generation: prompts in, the teacher's transcripts (and top-k logprobs) out.

Modules (one concern each; the generate job in runtime/jobs/ composes them):
- ``wire``: what OpenAI-compatible servers return (hosted APIs, vLLM, SGLang) parsed into typed
  results, token ids recovered exactly, never keyed by token string.
- ``sparse``: top-k logprobs stored sparse and memory-mapped (id + logprob per entry, plus the
  probability mass outside the top k).
- ``cache``: responses content-addressed by the canonical request, written once and atomically.
- ``budget``: spend reserved at the worst case before a request and reconciled with its usage.
- ``client``: AsyncOpenAI with aiolimiter rate limits, fatal/transient classification, preflight.
"""
