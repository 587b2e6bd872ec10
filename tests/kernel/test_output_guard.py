"""Sandbox outputs that would run code in the user's browser are held back (issue 9's claim
that code in a sandbox stays there): a front end trusts what a running cell displays, and
runs its JavaScript in the page of the user's Jupyter Server, which can open a host terminal.

Attacks from a cell of the E2B Python kernel, read back as the front end receives them, on
both transports; the browser test shows the same in JupyterLab itself.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from e2b_kernel.core.active_content import HELD_BACK_NOTE

from .harness import Kernel

pytestmark = pytest.mark.timeout(300)

ATTACKS = """
from IPython.display import HTML, SVG, Javascript, Markdown, display
display(Javascript("window.pwned = 'javascript'"))
display(HTML('<img src=x onerror="window.pwned = 1">'))
display(HTML('<svg><style><img src=x onerror="window.pwned = 2"></style></svg>'))
display(SVG('<svg xmlns="http://www.w3.org/2000/svg" onload="window.pwned = 3"><rect/></svg>'))
display(Markdown('[click](java&#x09;script:window.pwned=4)'))
display(HTML('<a href="jav&#x61;script:window.pwned=5">x</a>'))
display(HTML('<b>kept</b> <span style=\\'color:red\\'>as sent</span>'))
"""


def _displays(kernel: Kernel, code: str) -> list[dict]:
    reply, outputs = kernel.run(code, timeout=120)
    assert reply["status"] == "ok", (reply, outputs)
    return [o.content["data"] for o in outputs if o.msg_type == "display_data"]


@pytest.mark.parametrize("transport", ["execute", "jupyter"], indirect=True)
def test_outputs_that_would_run_code_in_the_browser_are_held_back(
    start_kernel: Callable[..., Kernel], backend_env: Callable[..., dict], transport: str
) -> None:
    kernel = start_kernel(backend_env())
    shown = _displays(kernel, ATTACKS)
    assert len(shown) == 7, shown
    *attacks, benign = shown
    for data in attacks:
        assert not {"application/javascript", "text/html", "image/svg+xml", "text/markdown"} & set(
            data
        ), data
        assert HELD_BACK_NOTE in data["text/plain"], data
    # What holds no code passes byte for byte, as python3 shows it.
    assert benign["text/html"] == "<b>kept</b> <span style='color:red'>as sent</span>"


@pytest.mark.parametrize("transport", ["execute", "jupyter"], indirect=True)
def test_a_user_who_trusts_the_sandbox_gets_every_output(
    start_kernel: Callable[..., Kernel], backend_env: Callable[..., dict], transport: str
) -> None:
    kernel = start_kernel(backend_env(E2B_KERNEL_TRUST_OUTPUTS="1"))
    shown = _displays(kernel, ATTACKS)
    assert shown[0]["application/javascript"] == "window.pwned = 'javascript'"
    assert shown[1]["text/html"] == '<img src=x onerror="window.pwned = 1">'


@pytest.mark.parametrize("transport", ["jupyter"], indirect=True)
def test_widget_html_and_widget_javascript_are_held_back(
    start_kernel: Callable[..., Kernel], backend_env: Callable[..., dict], transport: str
) -> None:
    """ipywidgets' HTML widget sets its value as the page's HTML, an anywidget runs its
    ``_esm`` module: both come as comm state, opened and then updated."""
    kernel = start_kernel(backend_env())
    code = (
        "import ipywidgets as w\n"
        "h = w.HTML('<img src=x onerror=\"window.pwned = 6\">')\n"
        "display(h)\n"
        "h.value = '<b>safe</b>'\n"
        "h.value = '<script>window.pwned = 7</script>'\n"
        "o = w.Output()\n"
        "display(o)\n"
        "o.append_display_data(HTML('<img src=x onerror=\"window.pwned = 8\">'))\n"
    )
    reply, outputs = kernel.run("from IPython.display import HTML\n" + code, timeout=120)
    assert reply["status"] == "ok", (reply, outputs)
    states = [
        o.content["data"].get("state", {})
        for o in outputs
        if o.msg_type in ("comm_open", "comm_msg")
    ]
    values = [s["value"] for s in states if "value" in s]
    assert values == [
        "&lt;img src=x onerror=&quot;window.pwned = 6&quot;&gt;",
        "<b>safe</b>",
        "&lt;script&gt;window.pwned = 7&lt;/script&gt;",
    ], states
    appended = [s["outputs"] for s in states if s.get("outputs")]
    assert appended and "text/html" not in appended[-1][0]["data"], appended
    assert HELD_BACK_NOTE in appended[-1][0]["data"]["text/plain"]


# The sandbox's kernel answers inspection (Shift+Tab, the contextual help), whose bundle the
# front end renders too: code in the sandbox can make that answer anything.
POISON_INSPECTOR = """
bundle = {'text/plain': 'x', 'text/html': '<img src=x onerror="window.pwned = 9">'}
ip = get_ipython()
ip.enable_html_pager = True
ip.object_inspect_mime = lambda *args, **kwargs: dict(bundle)
ip.kernel.do_inspect = lambda *args, **kwargs: {
    'status': 'ok', 'found': True, 'data': dict(bundle), 'metadata': {}}
"""


@pytest.mark.parametrize("transport", ["execute", "jupyter"], indirect=True)
def test_the_inspectors_bundle_is_held_back_too(
    start_kernel: Callable[..., Kernel], backend_env: Callable[..., dict], transport: str
) -> None:
    kernel = start_kernel(backend_env())
    reply, outputs = kernel.run(POISON_INSPECTOR)
    assert reply["status"] == "ok", (reply, outputs)
    inspected = kernel.kc.inspect("print", 5, reply=True, timeout=60)["content"]
    assert inspected["found"], inspected
    assert "text/html" not in inspected["data"], inspected
    assert inspected["data"]["text/plain"] == f"x\n{HELD_BACK_NOTE}"
