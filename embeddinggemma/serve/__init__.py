"""The embedding server: OpenAI / TEI request parsing and errors, dynamic batching, metrics and the
access log, the FastAPI app, and the process around it (socket, uvicorn, signals)."""
