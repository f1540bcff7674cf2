"""The app under hostile clients, in-process over test_server's gated fake device (instant batches): error
bodies that echo whatever was sent, clients that vanish or stall mid-body, a request large enough to stall the
event loop, messages that name the offending item. What needs a real server (stalled headers, the connection
limit, SIGTERM with stalled clients, schemathesis, the load-and-fault test) is in test_server.py, on its
module's server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx
import pytest

from embeddinggemma import EmbeddingGemma
from embeddinggemma.serve.api import ApiError, Limits, prepare
from embeddinggemma.serve.app import ServeOptions, create_app
from embeddinggemma.serve.batcher import Batcher
from tests.serve.test_server import NAME, GatedDevice, _metric

S = "\\ud800"  # a lone surrogate, as a JSON escape


def _app(tiny_model: EmbeddingGemma, **options) -> tuple[Batcher, object]:
    device = GatedDevice(tiny_model)
    batcher = Batcher(device, max_batch_tokens=512, max_length=64)
    limits = options.pop("limits", Limits(max_inputs=64, max_input_tokens=64))
    return batcher, create_app(device, batcher, ServeOptions(NAME, limits, **options))


def _serve(tiny_model: EmbeddingGemma, scenario, **options) -> None:
    """asyncio.run(scenario(http, app)) against a started in-process app."""
    batcher, app = _app(tiny_model, **options)

    async def run() -> None:
        batcher.start()
        while batcher.state != "ready":
            await asyncio.sleep(0.01)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as http:
            await scenario(http, app)

    try:
        asyncio.run(run())
    finally:
        batcher.close()


# ------------------------------------------------------------------------ class 1: every error body renders

SURROGATES = [
    # (path, raw body, status, param, code), @ standing for a lone surrogate: wherever a message or `param` echoes it
    ("/v1/embeddings", '{"@": 1}', 400, "@", "invalid_value"),  # a field name
    ("/v1/embeddings", '{"input": "a", "x@y": 1}', 400, "x@y", "invalid_value"),
    ("/v1/embeddings", '{"input": "a", "model": "@"}', 404, "model", "model_not_found"),
    ("/v1/embeddings", '{"input": "a", "encoding_format": "@"}', 400, "encoding_format", "invalid_value"),
    ("/v1/embeddings", '{"input": [["@"]]}', 400, "input", "invalid_type"),  # a nested value
    ("/v1/embeddings", '{"input": ["a", {"@": ["@"]}]}', 400, "input", "invalid_type"),
    ("/v1/embeddings", '{"input": ["a", "b@"]}', 400, "input", "invalid_value"),
    ("/v1/embeddings", '"@"', 400, None, "invalid_json"),  # a whole-body string
    ("/v1/embeddings", '["@"]', 400, None, "invalid_json"),
    ("/v1/embeddings", '{"input": "a", "prompt": "@"}', 400, "prompt", "invalid_value"),
    ("/v1/embeddings", '{"input": "a", "prompt_name": "@"}', 400, "prompt_name", "invalid_value"),
    ("/v1/embeddings", '{"input": "a", "dimensions": "@"}', 400, "dimensions", "invalid_value"),
    ("/v1/embeddings", '{"input": "a", "truncate": "@"}', 400, "truncate", "invalid_type"),
    ("/v1/embeddings", '{"input": "a", "user": ["@"]}', 400, "user", "invalid_type"),
    ("/embed", '{"inputs": "a", "truncation_direction": "@"}', 400, "truncation_direction", "invalid_value"),
    ("/embed", '{"inputs": "a", "normalize": "@"}', 400, "normalize", "invalid_type"),
    ("/embed", '{"inputs": "a", "@": 1}', 400, "@", "invalid_value"),
]


def test_every_error_body_renders_what_the_client_sent(tiny_model: EmbeddingGemma) -> None:
    """A lone surrogate echoed in a message or `param` was a plain-text 500 (UnicodeEncodeError rendering the
    400). Now each is its 4xx with a JSON body, the surrogate shown as the escape the client sent."""

    async def scenario(http: httpx.AsyncClient, app) -> None:
        for path, template, status, param, code in SURROGATES:
            raw, param = template.replace("@", S), param and param.replace("@", S)
            r = await http.post(path, content=raw.encode(), headers={"Content-Type": "application/json"})
            assert r.status_code == status, f"{raw}: {r.status_code} {r.text[:200]}"
            error = json.loads(r.content)["error"]  # the body is JSON
            assert (error["param"], error["code"]) == (json.loads(f'"{param}"') if param else None, code), raw
            assert S in error["message"], (raw, error)  # the value echoed as the escape the client sent
        metrics = (await http.get("/metrics")).text
        assert 'code="500"' not in metrics

    _serve(tiny_model, scenario)


# ------------------------------------------------------------------------ class 11: messages name the offender

MESSAGES = [
    # (body, the message's start): the item at fault by its index, and its value
    ({"input": [1, 2.5]}, "'input[1]' must be a token id (an int), got 2.5"),
    ({"input": [1, 2, "x"]}, "'input[2]' must be a token id (an int), got \"x\""),
    ({"input": [1, True]}, "'input[1]' must be a token id (an int), got true"),
    ({"input": [1, None]}, "'input[1]' must be a token id (an int), got null"),
    ({"input": [5, 10**6]}, "'input[1]' is token id 1000000, outside 0..1535"),
    ({"input": [5, -1]}, "'input[1]' is token id -1, outside 0..1535"),
    ({"input": [[1], [2, 2.5]]}, "'input[1][1]' must be a token id (an int), got 2.5"),
    ({"input": [[1], [2, 99999]]}, "'input[1][1]' is token id 99999, outside 0..1535"),
    ({"input": [[1], "a"]}, "'input[1]' must be a list of token ids, as 'input[0]', got \"a\""),
    ({"input": [[1], []]}, "'input[1]' is an empty list of token ids"),
    ({"input": ["a", 3]}, "'input[1]' must be a string, as 'input[0]', got 3"),
    ({"input": ["a", "b", [1]]}, "'input[2]' must be a string, as 'input[0]', got [1]"),
    ({"input": [{"a": 1}]}, "'input[0]' must be a string, a token id or a list of token ids, got {\"a\": 1}"),
    ({"input": [2.5, 1]}, "'input[0]' must be a string, a token id or a list of token ids, got 2.5"),
    ({"input": ["a", ""]}, "'input[1]' is an empty string"),
    ({"input": "a", "dimensions": "16"}, "'dimensions' must be an int in 1..48, got \"16\""),
    ({"input": "a", "dimensions": 49}, "'dimensions' must be an int in 1..48, got 49"),
    ({"input": "a", "dimensions": True}, "'dimensions' must be an int in 1..48, got true"),
    ({"input": "a", "prompt": 5}, "'prompt' must be a string, got 5"),
    ({"input": "a", "prompt_name": ["query"]}, "'prompt_name' must be a string, got [\"query\"]"),
    ({"input": "a", "encoding_format": "int8"}, '\'encoding_format\' must be "float" or "base64", got "int8"'),
]


@pytest.mark.parametrize(("body", "message"), MESSAGES, ids=[json.dumps(b)[:40] for b, _ in MESSAGES])
def test_each_message_names_the_offending_item_and_value(tiny_model: EmbeddingGemma, body, message) -> None:
    with pytest.raises(ApiError) as e:
        prepare(tiny_model, body, Limits(max_input_tokens=64), api="openai")
    assert (e.value.status, e.value.message[: len(message)]) == (400, message)


def test_a_long_text_is_tokenized_by_its_head_with_the_whole_texts_pieces(tiny_model: EmbeddingGemma) -> None:
    """Texts far over the token limit are tokenized by their head (the event loop's bound, class 4): the ids
    are those of the whole text cut to the limit, for prose, CJK, digits, runs of spaces and emoji; a text whose
    head is too short for that (2000 spaces then words) is tokenized whole."""
    tok = tiny_model.tokenizer
    texts = [
        "Mars is often referred to as the Red Planet. " * 200,
        "東京は日本の首都です。" * 400,
        "3.14159265358979 " * 500,
        "a" + " " * 5000 + "b",
        "🙂🚀 emoji " * 1000,
        " " * 2000 + "word " * 300,
    ]
    for truncate in (True, False):
        for text in texts:
            whole = tok.frame(tok.pieces([text]), 64)[0]
            if truncate:
                job = prepare(tiny_model, {"input": text}, Limits(max_input_tokens=64), api="openai")
                assert job.ids == whole, text[:20]
            else:
                with pytest.raises(ApiError, match="over this server's limit of 64") as e:
                    prepare(tiny_model, {"inputs": [text]}, Limits(max_input_tokens=64), api="tei")
                assert e.value.status == 413


# ------------------------------------------------------------------------ class 2: disconnects are not 500s


def _scope(path: str) -> dict:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
        "client": ("c", 1), "server": ("test", 80),
    }  # fmt: skip


@pytest.mark.parametrize("path", ["/v1/embeddings", "/embed"])
@pytest.mark.parametrize("sent", [b"", b'{"input": ["a", "b'])
def test_a_client_gone_mid_body_is_a_499_without_a_traceback(
    tiny_model: EmbeddingGemma, caplog: pytest.LogCaptureFixture, path: str, sent: bytes
) -> None:
    """A client that drops mid-body (or before any of it) raised ClientDisconnect: a logged traceback and a
    500 in /metrics. It is the client's doing: 499 (nginx's "client closed request") and no error log."""

    async def scenario(http: httpx.AsyncClient, app) -> None:
        messages = [{"type": "http.request", "body": sent, "more_body": True}, {"type": "http.disconnect"}]
        sent_back: list[dict] = []

        async def receive() -> dict:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent_back.append(message)

        await app(_scope(path), receive, send)
        assert sent_back[0]["status"] == 499
        metrics = (await http.get("/metrics")).text
        assert _metric(metrics, "embeddinggemma_request_errors_total") == 1
        assert f'embeddinggemma_request_errors_total{{code="499",endpoint="{path}"}} 1.0' in metrics

    with caplog.at_level(logging.INFO):
        _serve(tiny_model, scenario)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "embeddinggemma.access"]
    assert [(a["path"], a["status"]) for a in access] == [(path, 499)]


# ------------------------------------------------------------------------ class 3: a stalled body is a 408


def test_a_body_that_stalls_is_a_408_that_closes_the_connection(tiny_model: EmbeddingGemma) -> None:
    async def scenario(http: httpx.AsyncClient, app) -> None:
        first = [{"type": "http.request", "body": b'{"input": "a', "more_body": True}]
        sent_back: list[dict] = []

        async def receive() -> dict:
            if first:
                return first.pop()
            await asyncio.sleep(3600)  # the client stalls
            raise AssertionError

        async def send(message: dict) -> None:
            sent_back.append(message)

        start = time.perf_counter()
        await asyncio.wait_for(app(_scope("/v1/embeddings"), receive, send), 10)
        assert 0.2 <= time.perf_counter() - start < 5
        assert sent_back[0]["status"] == 408 and (b"connection", b"close") in sent_back[0]["headers"]
        error = json.loads(sent_back[1]["body"])["error"]
        assert error["code"] == "request_timeout" and "read timeout of 0.2 s" in error["message"]

    _serve(tiny_model, scenario, read_timeout=0.2)


# ------------------------------------------------------------------------ class 4: the event loop stays free


def test_a_15_mib_text_leaves_the_event_loop_free(tiny_model: EmbeddingGemma) -> None:
    """One 15 MiB string (tokenized on the event loop, as requests of up to 32 inputs were, it delayed /health by
    5.5 s): now it is parsed and tokenized in the worker thread, by its head, and /health and /metrics answer
    while it runs. The loop's longest stall is a JSON parse of the body in that thread (the GIL): measured
    50-100 ms on the loaded 2-core CI machine; the bound leaves it room."""
    big = "the quick brown fox jumps over the lazy dog " * (15 * 2**20 // 44)
    raw = json.dumps({"input": [big, "short"]}).encode()
    limits = Limits(max_inputs=64, max_request_bytes=2**25, max_input_tokens=64)

    async def scenario(http: httpx.AsyncClient, app) -> None:
        stalls: list[float] = []
        polls: list[float] = []

        async def watch() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                stalls.append(now - last)
                t = time.perf_counter()
                assert (await http.get("/health" if len(polls) % 2 else "/metrics")).status_code == 200
                polls.append(time.perf_counter() - t)
                last = time.perf_counter()

        watcher = asyncio.ensure_future(watch())
        await asyncio.sleep(0.05)
        start = time.perf_counter()
        r = await http.post("/v1/embeddings", content=raw, headers={"Content-Type": "application/json"})
        took = time.perf_counter() - start
        watcher.cancel()
        assert r.status_code == 200, r.text[:300]
        assert r.json()["usage"]["prompt_tokens"] == 64 + len(tiny_model.tokenizer.encode(["short"])[0])
        print(f"15 MiB request {took:.2f} s; longest loop stall {max(stalls) * 1000:.0f} ms; {len(polls)} polls")
        assert max(stalls) < 0.3 and max(polls) < 0.3

    _serve(tiny_model, scenario, limits=limits)
