"""Encoding: the user API (`EmbeddingGemma`), the one compiled encode program, prompts, length buckets,
output precision, host-side vector math, and XLA options with the persistent compilation cache."""
