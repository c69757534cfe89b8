"""The student model (a Llama-compatible GQA transformer) and weight fake quantization for QAT."""
