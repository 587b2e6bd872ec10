"""envd, the sandbox daemon's API on port 49983, as E2B's SDK speaks it.

- :mod:`.http`: ``/files`` (multipart, octet-stream, gzip; signed URLs), ``/health``, ``/envs``;
- :mod:`.rpc`: the SDK's generated Connect-RPC apps, bound to one sandbox;
- :mod:`.filesystem`, :mod:`.process`, :mod:`.pty`: the Filesystem and Process services.

Every file and process operation is carried out by the sandbox's agent, inside the sandbox.
"""
