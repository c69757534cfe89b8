"""CoreML conversion of exported programs: precision islands, quantization, packaging, hashing.

Only the convert job imports this package (coremltools is heavy: import it in the worker once),
and every module here may import coremltools at the top.
"""
