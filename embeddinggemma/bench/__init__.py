"""Measurements: encode, serve and train benchmarks against the references, AOT compile reports for TPU,
and the workloads they share. Each runs both sides in one run and prints ratios."""
