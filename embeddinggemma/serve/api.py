"""The server's API surface without a server: OpenAI / TEI request bodies checked and tokenized, errors
shaped as OpenAI's {"error": {"message", "type", "param", "code"}}, and responses rendered.

Nothing here needs FastAPI: `prepare` takes the parsed JSON body and returns an `EmbedJob` (framed token ids
and what to do with the vectors), or raises `ApiError` with the HTTP status and fields of the refusal.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from embeddinggemma.encode import vectors
from embeddinggemma.encode.encoder import EmbeddingGemma
from embeddinggemma.model.tokenizer import text_error

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
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


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


def parse_inputs(value: Any, param: str, limits: Limits, vocab_size: int) -> tuple[str, list, bool]:
    """("text", [str, ...]) or ("tokens", [[int, ...], ...]) from a string, a list of strings, a list of token
    ids or a list of lists of token ids, and whether errors name items by index; a 400 naming the first bad
    item otherwise."""
    if value is None:
        raise _invalid(f"'{param}' is required", param, "missing_field")
    if isinstance(value, str):
        kind, items = "text", [value]
    elif isinstance(value, list):
        if not value:
            raise _invalid(f"'{param}' must not be empty", param)
        if all(_is_token(x) for x in value):
            kind, items = "tokens", [value]
        elif isinstance(value[0], list):
            kind, items = "tokens", value
        else:
            kind, items = "text", value
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
    for i, item in enumerate(items):
        where = f"{param}[{i}]" if indexed else param
        if item is None:
            raise _invalid(f"'{where}' is null", param)
        if kind == "text":
            if not isinstance(item, str):
                raise _invalid(
                    f"'{where}' must be a string (or every item a token id), got {show(item)}", param, "invalid_type"
                )
            if not item:
                raise _invalid(f"'{where}' is an empty string", param)
            if problem := text_error(item):
                raise _invalid(f"'{where}': {problem}", param)
        else:
            if not isinstance(item, list) or not all(_is_token(x) for x in item):
                raise _invalid(f"'{where}' must be a list of token ids, got {show(item)}", param, "invalid_type")
            if not item:
                raise _invalid(f"'{where}' is an empty list of token ids", param)
            bad = next((x for x in item if not 0 <= x < vocab_size), None)
            if bad is not None:
                raise _invalid(f"'{where}' holds token id {bad}, outside 0..{vocab_size - 1}", param)
    return kind, items, indexed


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
        raise _invalid(f"unrecognized field '{unknown[0]}'; accepted: {', '.join(sorted(fields))}", unknown[0])
    kind, items, indexed = parse_inputs(body.get(param), param, limits, model.config.vocab_size)
    # OpenAI's API truncates over-long input; TEI's refuses it unless asked to truncate.
    truncate = _optional(body, "truncate", bool, api == "openai", "true or false")
    normalize = _optional(body, "normalize", bool, True, "true or false")
    encoding = _optional(body, "encoding_format", str, "float", '"float" or "base64"')
    if encoding not in ("float", "base64"):
        raise _invalid(f'\'encoding_format\' must be "float" or "base64", got {show(encoding)}', "encoding_format")
    direction = _optional(body, "truncation_direction", str, "right", '"right"')
    if direction.lower() != "right":
        raise _invalid("only 'truncation_direction' \"right\" is supported", "truncation_direction")
    _optional(body, "user", str, None, "a string")
    dimensions = body.get("dimensions")
    try:
        dim = model.check_dim(dimensions)
    except (TypeError, ValueError) as e:
        raise _invalid(str(e).replace("truncate_dim", "'dimensions'"), "dimensions") from None
    prompt_name, prompt = body.get("prompt_name"), body.get("prompt")
    max_length = min(limits.max_input_tokens or model.config.max_seq_length, model.config.max_seq_length)
    try:
        prefix = model.prompt_prefix(prompt_name, prompt, max_length=max_length)
    except (TypeError, ValueError) as e:
        raise _invalid(str(e), "prompt" if prompt is not None else "prompt_name") from None
    tok = model.tokenizer
    if kind == "text":
        pieces = tok.pieces([prefix + t for t in items])
    else:
        head = tok.pieces([prefix])[0] if prefix else []
        pieces = [head + list(x) for x in items]
    ids, cut = tok.frame(pieces, max_length)
    if not truncate and any(cut):
        i = cut.index(True)
        where = f"{param}[{i}]" if indexed else param
        raise ApiError(
            413,
            f"'{where}' is {len(pieces[i]) + 2} tokens (with <bos>, <eos> and the prompt), over this server's "
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
    if job.encoding == "base64":
        encoded = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in emb]
    else:
        encoded = emb.tolist()
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)]
    usage = {"prompt_tokens": job.tokens, "total_tokens": job.tokens}
    return json.dumps({"object": "list", "data": data, "model": model_name, "usage": usage}).encode()


async def read_json(request: Any, limit: int) -> dict:
    """The request body as a JSON object; 413 over `limit` bytes (before reading it when Content-Length says so)."""
    too_large = ApiError(
        413, f"the request body is over this server's limit of {limit} bytes", code="request_too_large"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
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
