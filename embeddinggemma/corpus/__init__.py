"""Corpora on disk: text / JSONL readers, the resumable sharded encode job, and search over saved embeddings."""
