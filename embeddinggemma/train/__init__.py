"""Fine-tuning: `train(TrainConfig.from_file("train_tiny"))`.

config (TrainConfig, JSON), sources (JSONL, Parquet, datasets, the Hub, gs:// rows), data (rows -> padded
batches, resumable), losses (InfoNCE, Matryoshka, spread-out), step (the jitted sharded step, GradCache,
the steps a caller reuses), loop (`train`), metrics (metrics.jsonl, TensorBoard, device idle time),
preemption (SIGTERM), checkpointing (orbax), outputs (a local or gs:// output_dir), code_search_data (a
retrieval set built from Python sources).
"""
