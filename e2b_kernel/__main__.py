"""Launch the E2B Python kernel: ``python -m e2b_kernel -f CONNECTION_FILE``.

The private local service (when the environment says the kernel needs one) is started first,
so that it and its sandbox start while the kernel imports ipykernel and the E2B SDK; against a
running service, the sandbox is asked for first instead.
"""

import sys


def _connection_file(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "-f" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(("-f=", "--f=")):
            return arg.split("=", 1)[1]
    return None


if __name__ == "__main__":
    # httpx imports its command-line client on import (click, and rich's console: about 50 ms
    # of every kernel start) whenever those are installed; this process never runs it, and
    # httpx falls back to a stub when the import fails.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    # --SessionConfig options on the command line may choose another backend: no guess then.
    if not any("SessionConfig" in arg for arg in sys.argv[1:]):
        from e2b_kernel.backends import create_early, launch_early

        connection_file = _connection_file(sys.argv[1:])
        launch_early(connection_file)
        create_early(connection_file)

    from e2b_kernel.kernel import main

    main()
