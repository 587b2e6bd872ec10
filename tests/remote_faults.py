"""Code run in a sandbox's remote kernel to make it fail as it can in the field."""

# IOPub drops every message of the next cell (only), as when a kernel process that the
# Jupyter Server has just restarted runs a cell queued for it before the server's IOPub
# subscription to it is live: the cell's reply comes, its 'busy', output and 'idle' never do.
LOSE_THE_NEXT_CELLS_IOPUB = """
import json as _json, ipykernel.iostream as _iostream
_send = _iostream.IOPubThread.send_multipart
_this = get_ipython().kernel.get_parent()["header"]["msg_id"]
_lost = {}
def _losing(self, parts, *args, **kwargs):
    at = [bytes(p) for p in parts].index(b"<IDS|MSG>")
    parent = _json.loads(bytes(parts[at + 3]))
    if parent.get("msg_type") == "execute_request" and parent.get("msg_id") != _this:
        if _lost.setdefault("id", parent["msg_id"]) == parent["msg_id"]:
            return None
    return _send(self, parts, *args, **kwargs)
_iostream.IOPubThread.send_multipart = _losing
"""
UNDO_LOSING_IOPUB = "_iostream.IOPubThread.send_multipart = _send"
