"""Training configs (JSON), installed with the package as `embeddinggemma.configs`; see TrainConfig.from_file."""
