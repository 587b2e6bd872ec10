"""Service defaults, importable without loading the server (uvicorn, starlette) or sandboxes."""

DEFAULT_HEADER_TIMEOUT = 5.0  # seconds; a real client sends its request head at once
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_POOL_SIZE = 1  # ready sandboxes kept warm; 0 turns the pool off
