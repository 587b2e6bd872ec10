"""Service defaults, importable without loading the server (uvicorn, starlette) or sandboxes."""

DEFAULT_HEADER_TIMEOUT = 5.0  # seconds; a real client sends its request head at once
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_POOL_SIZE = 1  # ready sandboxes kept warm; 0 turns the pool off


def check_server_settings(header_timeout: float, max_connections: int) -> None:
    """Raise ValueError, naming the option, for settings the server cannot work with."""
    if header_timeout <= 0 or max_connections < 1:
        raise ValueError("--header-timeout and --max-connections must be positive")
