"""The server's API surface without a server: OpenAI / TEI request bodies checked and tokenized, errors
shaped as OpenAI's {"error": {"message", "type", "param", "code"}}, and responses rendered.

Nothing here needs FastAPI: `prepare` takes the parsed JSON body and returns an `EmbedJob` (framed token ids
and what to do with the vectors), or raises `ApiError` with the HTTP status and fields of the refusal.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from embeddinggemma.encode import vectors
from embeddinggemma.encode.encoder import EmbeddingGemma
from embeddinggemma.model.tokenizer import Tokenizer, text_error

OPENAI_FIELDS = {"input", "model", "dimensions", "encoding_format", "user", "prompt_name", "prompt", "truncate"}
TEI_FIELDS = {"inputs", "normalize", "truncate", "truncation_direction", "prompt_name", "prompt", "dimensions"}
ERROR_TYPES = {401: "authentication_error", 429: "rate_limit_error", 503: "service_unavailable"}


class ApiError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI-style error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = ERROR_TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def show(value: Any) -> str:
    """A client's value as JSON for a message, at most 40 characters; a lone surrogate (a JSON "\\ud800"
    escape) stays the escape it was sent as, so that the message can be encoded."""
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, float) or math.isfinite(value) else str(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= 40 else text[:37] + "..."


def render(body: Any) -> bytes:
    """JSON bytes of a response body, whatever strings the client sent (non-ASCII escaped: a lone surrogate
    in an echoed name cannot be UTF-8 encoded)."""
    return json.dumps(body).encode()


def _invalid(message: str, param: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


# ---------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_inputs: int = 2048  # texts (or token sequences) per request, as OpenAI's API
    max_request_bytes: int = 16 * 2**20
    max_input_tokens: int | None = None  # default: the model's max_seq_length


@dataclass(frozen=True)
class EmbedJob:
    """A validated request: framed token ids, and what to do with the vectors."""

    ids: list[list[int]]
    dim: int
    normalize: bool
    encoding: str  # "float" | "base64"

    @property
    def tokens(self) -> int:
        return sum(map(len, self.ids))


def _optional(body: dict, name: str, kind: type | tuple[type, ...], default: Any, what: str) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _invalid(f"'{name}' must be {what}, got {show(value)}", name, "invalid_type")
    return value


def _is_token(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_tokens(seq: list, where: str, param: str, vocab_size: int) -> None:
    """A 400 naming the first item of `seq` that is not a token id of the vocabulary, by its index."""
    if not seq:
        raise _invalid(f"'{where}' is an empty list of token ids", param)
    for j, x in enumerate(seq):
        if not _is_token(x):
            raise _invalid(f"'{where}[{j}]' must be a token id (an int), got {show(x)}", param, "invalid_type")
        if not 0 <= x < vocab_size:
            raise _invalid(f"'{where}[{j}]' is token id {x}, outside 0..{vocab_size - 1}", param)


def parse_inputs(value: Any, param: str, limits: Limits, vocab_size: int) -> tuple[str, list, bool]:
    """("text", [str, ...]) or ("tokens", [[int, ...], ...]) from a string, a list of strings, a list of token
    ids or a list of lists of token ids (the first item says which), and whether errors name items by index;
    otherwise a 400 naming the first item that does not fit, by its index and value."""
    if value is None:
        raise _invalid(f"'{param}' is required", param, "missing_field")
    if isinstance(value, list) and not value:
        raise _invalid(f"'{param}' must not be empty", param)
    if isinstance(value, str):
        kind, items = "text", [value]
    elif isinstance(value, list) and _is_token(value[0]):
        _check_tokens(value, param, param, vocab_size)
        kind, items = "tokens", [value]
    elif isinstance(value, list):
        kind, items = ("tokens" if isinstance(value[0], list) else "text"), value
    else:
        raise _invalid(
            f"'{param}' must be a string, a list of strings, or token ids, got {show(value)}", param, "invalid_type"
        )
    if len(items) > limits.max_inputs:
        raise _invalid(
            f"'{param}' has {len(items)} items; at most {limits.max_inputs} are allowed per request",
            param,
            "too_many_inputs",
        )
    indexed = items is value
    if kind == "tokens" and not indexed:
        return kind, items, indexed
    first = f"'{param}[0]'"
    for i, item in enumerate(items):
        where = f"{param}[{i}]" if indexed else param
        if item is None:
            raise _invalid(f"'{where}' is null", param)
        if kind == "tokens":
            if not isinstance(item, list):
                raise _invalid(
                    f"'{where}' must be a list of token ids, as {first}, got {show(item)}", param, "invalid_type"
                )
            _check_tokens(item, where, param, vocab_size)
        elif not isinstance(item, str):
            what = "a string, as " + first if i else "a string, a token id or a list of token ids"
            raise _invalid(f"'{where}' must be {what}, got {show(item)}", param, "invalid_type")
        elif not item:
            raise _invalid(f"'{where}' is an empty string", param)
        elif problem := text_error(item):
            raise _invalid(f"'{where}': {problem}", param)
    return kind, items, indexed


HEAD_CHARS_PER_TOKEN = 16


def _pieces(tok: Tokenizer, texts: list[str], room: int) -> tuple[list[list[int]], list[bool]]:
    """Each text's pieces, enough of them to fill `room`, and whether they are only its head's. A text over
    16 x room characters is tokenized by its head of that many first (a 15 MiB text would take seconds and
    hold the GIL building millions of ids, for a vector of its first `room` pieces): when the head gives twice
    `room` pieces, the first `room` are the whole text's too (a cut changes only the pieces near it); when it
    gives fewer, the whole text is tokenized. 32 texts at a time: the GIL is held while each call's ids are
    built, and the event loop runs between calls."""
    chars = HEAD_CHARS_PER_TOKEN * room
    pieces = [p for i in range(0, len(texts), 32) for p in tok.pieces([t[:chars] for t in texts[i : i + 32]])]
    headed = [len(t) > chars for t in texts]
    short = [i for i, p in enumerate(pieces) if headed[i] and len(p) < 2 * room]
    for i, whole in zip(short, tok.pieces([texts[i] for i in short]), strict=True):
        pieces[i], headed[i] = whole, False
    return pieces, headed


def prepare(
    model: EmbeddingGemma,
    body: dict,
    limits: Limits,
    *,
    api: str,
) -> EmbedJob:
    """Validate an OpenAI ("openai") or TEI ("tei") request body and tokenize it."""
    fields, param = (OPENAI_FIELDS, "input") if api == "openai" else (TEI_FIELDS, "inputs")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise _invalid(f"unrecognized field {show(unknown[0])}; accepted: {', '.join(sorted(fields))}", unknown[0])
    kind, items, indexed = parse_inputs(body.get(param), param, limits, model.config.vocab_size)
    # OpenAI's API truncates over-long input; TEI's refuses it unless asked to truncate.
    truncate = _optional(body, "truncate", bool, api == "openai", "true or false")
    normalize = _optional(body, "normalize", bool, True, "true or false")
    encoding = _optional(body, "encoding_format", str, "float", '"float" or "base64"')
    if encoding not in ("float", "base64"):
        raise _invalid(f'\'encoding_format\' must be "float" or "base64", got {show(encoding)}', "encoding_format")
    direction = _optional(body, "truncation_direction", str, "right", '"right"')
    if direction.lower() != "right":
        message = f"only 'truncation_direction' \"right\" is supported, got {show(direction)}"
        raise _invalid(message, "truncation_direction")
    _optional(body, "user", str, None, "a string")
    dimensions = body.get("dimensions")
    try:
        dim = model.check_dim(dimensions)
    except (TypeError, ValueError):
        full = model.config.embedding_dim
        raise _invalid(f"'dimensions' must be an int in 1..{full}, got {show(dimensions)}", "dimensions") from None
    prompt_name = _optional(body, "prompt_name", str, None, "a string")
    prompt = _optional(body, "prompt", str, None, "a string")
    if prompt is not None and (problem := text_error(prompt)):
        raise _invalid(f"'prompt': {problem}", "prompt")
    max_length = min(limits.max_input_tokens or model.config.max_seq_length, model.config.max_seq_length)
    try:
        prefix = model.prompt_prefix(prompt_name, prompt, max_length=max_length)
    except (TypeError, ValueError) as e:
        raise _invalid(str(e), "prompt" if prompt is not None else "prompt_name") from None
    tok = model.tokenizer
    if kind == "text":
        pieces, headed = _pieces(tok, [prefix + t for t in items], max_length - 2)
    else:
        head = tok.pieces([prefix])[0] if prefix else []
        pieces, headed = [head + list(x) for x in items], [False] * len(items)
    ids, cut = tok.frame(pieces, max_length)
    if not truncate and any(cut):
        i = cut.index(True)
        where = f"{param}[{i}]" if indexed else param
        tokens = f"over {max_length}" if headed[i] else str(len(pieces[i]) + 2)
        raise ApiError(
            413,
            f"'{where}' is {tokens} tokens (with <bos>, <eos> and the prompt), over this server's "
            f'limit of {max_length}; shorten it or send "truncate": true',
            param=param,
            code="context_length_exceeded",
        )
    return EmbedJob(ids, dim, normalize, encoding)


def finish(emb: np.ndarray, job: EmbedJob) -> np.ndarray:
    """The requested width (Matryoshka truncation, re-normalized unless normalize is false)."""
    if job.dim < emb.shape[1]:
        emb = vectors.l2_normalize(emb[:, : job.dim]) if job.normalize else emb[:, : job.dim]
    return emb


def openai_response(emb: np.ndarray, job: EmbedJob, model_name: str) -> bytes:
    """OpenAI's response body, rendered a vector at a time (see `tei_response`)."""

    def encoded(v: np.ndarray) -> list[float] | str:
        return base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") if job.encoding == "base64" else v.tolist()

    rows = (json.dumps({"object": "embedding", "index": i, "embedding": encoded(v)}) for i, v in enumerate(emb))
    data = ", ".join(rows)
    usage = json.dumps({"prompt_tokens": job.tokens, "total_tokens": job.tokens})
    return f'{{"object": "list", "data": [{data}], "model": {json.dumps(model_name)}, "usage": {usage}}}'.encode()


def tei_response(emb: np.ndarray) -> bytes:
    """TEI's response body, a list of vectors, rendered a vector at a time: a worker thread rendering 2048
    vectors then lets the event loop run between them (one json.dumps of them all holds the GIL for ~0.5 s)."""
    return ("[" + ", ".join(json.dumps(v.tolist()) for v in emb) + "]").encode()


async def read_body(request: Any, limit: int, timeout: float) -> bytes:
    """The request body; 413 over `limit` bytes (before reading it when Content-Length says so), 408 when it
    has not all arrived `timeout` seconds after the headers (a client that stalls would hold its connection)."""
    too_large = ApiError(
        413, f"the request body is over this server's limit of {limit} bytes", code="request_too_large"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408,
            f"the request body did not arrive within this server's read timeout of {timeout:g} s",
            code="request_timeout",
            headers={"Connection": "close"},
        ) from None
    return b"".join(chunks)


def parse_json(raw: bytes) -> dict:
    """The request body as a JSON object, or a 400 saying why not."""
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 text", code="invalid_json") from None
    except json.JSONDecodeError as e:
        message = "the request body is empty" if not raw.strip() else f"the request body is not valid JSON: {e}"
        raise ApiError(400, message, code="invalid_json") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of over 4300 digits, nesting too deep
        raise ApiError(400, f"the request body is not usable JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {show(body)}", code="invalid_json")
    return body
