"""Start-up file of the local service's python kernels: stream output in bounded pieces.

ipykernel sends whatever was written during each 0.2 s flush interval as one message, so a tight
loop printing 50 MB makes one 50 MB message that the kernel and the service must each hold whole.
Flushing after every MiB keeps each message (and each NDJSON line) bounded.
"""


def _e2b_bound_output_messages():
    import sys

    limit = 1 << 20

    def bounded(stream):
        write = stream.write
        pending = 0

        def write_and_maybe_flush(text):
            nonlocal pending
            written = write(text)
            pending += len(text) if isinstance(text, str) else 0
            if pending >= limit:
                pending = 0
                stream.flush()
            return written

        stream.write = write_and_maybe_flush

    for stream in (sys.stdout, sys.stderr):
        if type(stream).__module__.startswith("ipykernel"):
            bounded(stream)


_e2b_bound_output_messages()
del _e2b_bound_output_messages
