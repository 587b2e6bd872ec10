"""Connection defaults, importable without loading the server (uvicorn, starlette)."""

DEFAULT_HEADER_TIMEOUT = 5.0  # seconds; a real client sends its request head at once
DEFAULT_MAX_CONNECTIONS = 1000
