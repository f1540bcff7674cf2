"""The request, response and error models the server publishes in its OpenAPI schema (`/openapi.json`, `/docs`).

They describe the API for clients and for schemathesis; they do not check requests (`serve.api` does, so that
every refusal has OpenAI's error shape rather than FastAPI's 422), and the limits that depend on the server's
options (`--max-inputs`, `--max-input-tokens`) are stated in the descriptions, not the schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Text = Annotated[str, Field(min_length=1)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
Inputs = Text | Annotated[list[Text], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
PROMPT = "a prompt of the model by name (query, document, STS, ...), added before each text"
DIMENSIONS = "the first d coordinates of each vector, re-normalized (Matryoshka); default: the model's width"


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request, with this server's extensions (prompt_name, prompt, truncate)."""

    model_config = ConfigDict(extra="forbid")
    input: Inputs = Field(description="a text, texts, token ids or lists of token ids (at most --max-inputs items)")
    model: str | None = Field(None, description="the served model's name (GET /v1/models)")
    dimensions: int | None = Field(None, ge=1, description=DIMENSIONS)
    encoding_format: Literal["float", "base64"] | None = Field(None, description="base64: little-endian float32")
    user: str | None = None
    prompt_name: str | None = Field(None, description=PROMPT)
    prompt: str | None = Field(None, description="a literal prompt, added before each text")
    truncate: bool | None = Field(None, description="cut over-long inputs (default true); false: 413 instead")


class EmbedRequest(BaseModel):
    """text-embeddings-inference's /embed request."""

    model_config = ConfigDict(extra="forbid")
    inputs: Inputs = Field(description="a text, texts, token ids or lists of token ids (at most --max-inputs items)")
    normalize: bool | None = Field(None, description="re-normalize vectors cut to `dimensions` (default true)")
    truncate: bool | None = Field(None, description="cut over-long inputs (default false: 413)")
    truncation_direction: Literal["right", "Right"] | None = None
    prompt_name: str | None = Field(None, description=PROMPT)
    prompt: str | None = Field(None, description="a literal prompt, added before each text")
    dimensions: int | None = Field(None, ge=1, description=DIMENSIONS)


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="tokens embedded, with <bos>, <eos> and the prompt")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


class ErrorDetail(BaseModel):
    message: str = Field(description="what was wrong, naming the field, item and value")
    type: str = Field(description="invalid_request_error, authentication_error, rate_limit_error, ...")
    param: str | None = Field(description="the request field at fault")
    code: str | None = Field(description="e.g. invalid_value, invalid_type, context_length_exceeded, queue_full")


class ErrorResponse(BaseModel):
    """OpenAI's error shape, on both APIs and for every 4xx and 5xx the application answers."""

    error: ErrorDetail


class Health(BaseModel):
    status: str = Field(description="ok; else starting, warming up, failed or shutting down (with 503)")


ERRORS: dict[int, str] = {
    400: "a malformed body or field",
    401: "no or the wrong API key (with --api-key)",
    404: "another model",
    408: "the body did not arrive within --read-timeout",
    413: "a body over --max-request-bytes, or an over-long input without truncation",
    429: "--max-queue texts are waiting (Retry-After)",
    499: "the client closed the connection before the answer",
    500: "a server fault (logged)",
    503: "warming up or shutting down (Retry-After)",
}


def documented(ok: Any, *codes: int, body: type[BaseModel] | None = None, summary: str | None = None) -> dict[str, Any]:
    """FastAPI route arguments that document a route: its 200 model, the error codes it can answer, and the JSON
    body it reads itself."""
    responses: dict[int | str, dict[str, Any]] = {200: {"model": ok, "description": "OK"}}
    responses.update({code: {"model": ErrorResponse, "description": ERRORS[code]} for code in codes})
    out: dict[str, Any] = {"responses": responses, "summary": summary}
    if body is not None:
        content = {"application/json": {"schema": body.model_json_schema()}}
        out["openapi_extra"] = {"requestBody": {"required": True, "content": content}}
    return out


HEALTH: dict[int | str, dict[str, Any]] = {
    200: {"model": Health, "description": "every batch shape is compiled"},
    503: {"model": Health, "description": "starting, warming up, failed or shutting down"},
}
METRICS: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
}
