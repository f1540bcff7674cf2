"""Load on any OpenAI-compatible embedding server (ours, infinity-emb, TEI's
/v1/embeddings, vLLM): throughput (texts/s, tokens/s), latency percentiles and errors per concurrency level.

    embeddinggemma benchmark-serve --url http://127.0.0.1:8080 --concurrency 1,8,32 --workloads short,long

Each level runs --requests requests of --inputs-per-request texts from `concurrency` client threads, each with
its own keep-alive connection (standard library only, so it runs wherever the server does). Texts are
deterministic word salads: short (20-80 words) and long (--long-words, default 1000-1400 words; close to
the 2048-token limit of EmbeddingGemma). Tokens are what the server reports in `usage.prompt_tokens`, so
servers are compared on their own token counts (with <bos>/<eos> for ours). Vectors are requested as
base64 so that the client's JSON parsing stays out of the measurement. One request per workload warms up
first and is not counted.
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass

from embeddinggemma.bench.workloads import word_salads


@dataclass
class Level:
    workload: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    texts_per_s: float
    tokens_per_s: float
    p50_ms: float
    p99_ms: float
    first_error: str | None = None


@dataclass(frozen=True)
class LoadTest:
    """What `run` sends: `requests` requests of `inputs_per_request` texts per workload and concurrency level."""

    url: str = "http://127.0.0.1:8080"
    model_name: str | None = None  # default: the first of GET /v1/models
    api_key: str | None = None
    concurrency: tuple[int, ...] = (1, 8, 32)
    workloads: tuple[str, ...] = ("short", "long")
    requests: int = 64
    inputs_per_request: int = 1
    long_words: tuple[int, int] = (1000, 1400)
    timeout: float = 600.0
    seed: int = 0
    output: str | None = None  # also write the results as JSON

    def __post_init__(self) -> None:
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError(f"concurrency levels must be positive integers, got {list(self.concurrency)}")
        bad = [w for w in self.workloads if w not in ("short", "long")]
        if bad or not self.workloads:
            raise ValueError(f"workloads: unknown workload {bad[0] if bad else ''!r}; choose short and/or long")
        if self.requests < 1 or self.inputs_per_request < 1:
            raise ValueError("requests and inputs_per_request must be positive")


class Client:
    """POST /v1/embeddings over one keep-alive connection."""

    def __init__(self, url: str, api_key: str | None, timeout: float):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--url {url!r}: expected http://HOST:PORT or https://HOST:PORT")
        self.parts, self.timeout = parts, timeout
        self.base = parts.path.rstrip("/").removesuffix("/v1")
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            cls = http.client.HTTPSConnection if self.parts.scheme == "https" else http.client.HTTPConnection
            self.conn = cls(self.parts.hostname, self.parts.port, timeout=self.timeout)
        return self.conn

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (0, 1):
            reused = self.conn is not None
            conn = self._connection()
            try:
                conn.request(method, self.base + path, body=data, headers=self.headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                self.conn = None
                if not reused or attempt:  # a kept-alive connection the server closed meanwhile: once more
                    raise
        try:
            return response.status, json.loads(raw)
        except json.JSONDecodeError:
            return response.status, {"error": raw[:200].decode(errors="replace")}

    def embed(self, model: str, texts: list[str]) -> tuple[int, dict]:
        return self.call("POST", "/v1/embeddings", {"model": model, "input": texts, "encoding_format": "base64"})


def run_level(args: LoadTest, model: str, workload: str, texts: list[str], concurrency: int) -> Level:
    n, per = args.requests, args.inputs_per_request
    latencies: list[float] = []
    tokens, errors, first_error = [0], [0], [None]
    lock, counter = threading.Lock(), iter(range(n))

    def worker() -> None:
        client = Client(args.url, args.api_key, args.timeout)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            batch = [texts[(i * per + j) % len(texts)] for j in range(per)]
            start = time.perf_counter()
            try:
                status, body = client.embed(model, batch)
                problem = None if status == 200 else f"HTTP {status}: {json.dumps(body)[:200]}"
            except (OSError, http.client.HTTPException) as e:
                status, body, problem = None, {}, f"{type(e).__name__}: {e}"
            elapsed = time.perf_counter() - start
            with lock:
                if problem is None:
                    latencies.append(elapsed)
                    tokens[0] += int(body.get("usage", {}).get("prompt_tokens", 0))
                else:
                    errors[0] += 1
                    first_error[0] = first_error[0] or problem

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    ok = len(latencies)
    ms = sorted(x * 1000 for x in latencies) or [float("nan")]
    return Level(
        workload,
        concurrency,
        n,
        errors[0],
        seconds,
        ok * per / seconds,
        tokens[0] / seconds,
        statistics.median(ms),
        ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))],
        first_error[0],
    )


def run(args: LoadTest, report: Callable[[str], None] = print) -> int:
    """Every workload at every concurrency level; `report`s the table line by line."""
    client = Client(args.url, args.api_key, args.timeout)
    model = args.model_name
    try:
        if model is None:
            status, body = client.call("GET", "/v1/models")
            if status != 200 or not body.get("data"):
                raise ValueError(f"GET {args.url}/v1/models: HTTP {status} {json.dumps(body)[:200]}")
            model = body["data"][0]["id"]
        results = []
        report(f"{args.url}  model {model}")
        header = f"{'workload':<8} {'clients':>7} {'requests':>8} {'errors':>6} {'texts/s':>9} {'tokens/s':>10} "
        report(header + f"{'p50 ms':>9} {'p99 ms':>9}")
        for workload in args.workloads:
            texts = word_salads(workload, 256, args.seed, args.long_words)
            status, body = client.embed(model, texts[: args.inputs_per_request])  # warm-up, not counted
            if status != 200:
                raise ValueError(f"warm-up request failed: HTTP {status} {json.dumps(body)[:300]}")
            for concurrency in args.concurrency:
                r = run_level(args, model, workload, texts, concurrency)
                results.append(r)
                report(
                    f"{r.workload:<8} {r.concurrency:>7} {r.requests:>8} {r.errors:>6} {r.texts_per_s:>9.1f} "
                    f"{r.tokens_per_s:>10.0f} {r.p50_ms:>9.1f} {r.p99_ms:>9.1f}"
                )
                if r.first_error:
                    report(f"  first error: {r.first_error}")
    except (OSError, http.client.HTTPException) as e:
        raise OSError(f"{args.url}: {e}") from None
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"url": args.url, "model": model, "levels": [asdict(r) for r in results]}, f, indent=2)
    return 0
