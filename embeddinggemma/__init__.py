"""EmbeddingGemma-300m in JAX / Flax NNX.

Modules, by concern:
  encoder          EmbeddingGemma, the user API (from_pretrained, encode*, similarity, save_pretrained), and
                   build_encode_step, the one compiled encode program
  model            the NNX modules: RMSNorm, RoPE, Attention, MLP, Block, EmbeddingGemmaModule
  attention        attention backends behind one function: dense, blocked, dot_product, splash
  config           ModelConfig: read from a checkpoint directory, the 300m preset; refuses what we don't implement
  tokenizer        SentencePiece with <bos> ... <eos> framing and truncation
  batching         length buckets, padded row counts, padding (encoding and training)
  vectors          host-side embedding math: L2 normalization, Matryoshka truncation, cosine, top-k
  quantization     int8 / uint8 / binary / ubinary embeddings as sentence-transformers' quantize_embeddings,
                   and binary search (Hamming candidates rescored with the float query)
  weight_quantization  int8 / int4 / mixed-precision weights stored quantized (qwix): QuantizedWeight, quantize,
                   the per-mode rules, parameter bytes
  sharding         device meshes, logical-axis rules, parameter / batch / activation shardings, multi-host input
  checkpoint/      load / save / convert; hf (sentence-transformers directory, the key table), native (orbax),
                   hub (local directory, URL or Hub id)
  files            atomic files and directories; output paths checked against inputs before work starts
  corpus           text / JSONL input, resumable sharded encoding to .npy (any precision), top-k search
  retrieval        exact top-k on the device over the mesh, BEIR directories, trec_eval metrics, evaluation
  mining           hard-negative mining with sentence-transformers' semantics, resumable
  mteb             MtebEncoder and the `mteb` command: MTEB tasks with the official entry's prompts
  serve            the `serve` command: an OpenAI- and text-embeddings-inference-compatible HTTP server (FastAPI)
  batcher          the server's dynamic batching: requests' texts packed by a token budget into the encoder's buckets
  benchmark_serve  the `benchmark-serve` command: load on any OpenAI-compatible embedding server
  compile_options  XLA compiler options per platform and dtype (and a CPU timing check)
  flops            analytic forward FLOPs (AOT ratio, benchmark MFU)
  aot              compile encode / train steps for TPU topologies without a TPU: memory and FLOPs per chip
  benchmark        this encoder vs sentence-transformers, both in one run
  verify           the `verify` command: this machine's vectors vs golden ones (shipped) or a live sentence-transformers
  parity           the fixed texts of the parity checks
  cli              the `embeddinggemma` command
  train/           fine-tuning: config, sources, data, losses, step (GradCache), loop, checkpointing, outputs,
                   benchmark, code_search_data (a retrieval set built from Python sources)
  data/            the bundled demo corpus (and demo-beir/, the same documents as a BEIR directory)
  configs          the bundled training configs (the repository's configs/)
"""

from embeddinggemma.config import CheckpointError, ModelConfig
from embeddinggemma.encoder import EmbeddingGemma
from embeddinggemma.model import EmbeddingGemmaModule

__all__ = ["CheckpointError", "EmbeddingGemma", "EmbeddingGemmaModule", "ModelConfig"]
__version__ = "0.1.0"
