"""The model: its configuration, the NNX modules, attention backends, the tokenizer, quantized weights, FLOPs.

Everything here is a pure function of a `ModelConfig` and parameters; nothing reads files beyond a
checkpoint's config and tokenizer, and nothing knows about encoding jobs, training or serving.
"""
