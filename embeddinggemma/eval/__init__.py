"""Evaluation: exact top-k retrieval with trec_eval metrics, hard-negative mining, MTEB, and `verify`
(this machine's vectors against the reference) with its fixed texts."""
