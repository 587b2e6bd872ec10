"""The in-sandbox agent (our envd): one per sandbox, the parent of every sandbox process.

Standard library only, relative imports only: inside a sandbox this directory is bound
read-only at ``/opt/e2b/e2b_agent`` and run as the package ``e2b_agent`` by the service's own
interpreter, without the project around it. On the host, tests import it as
``e2b_kernel.local.agent``.
"""
