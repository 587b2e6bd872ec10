"""What counts as code for the browser in a sandbox's output (core.active_content).

Markup that a naive reading finds harmless but a browser runs is the attack: each case
below is one the HTML parsing rules make live. What holds no code passes byte for byte.
"""

from __future__ import annotations

import io
import json

import pytest

from e2b_kernel.core.active_content import (
    HELD_BACK_NOTE,
    guard_bundle,
    guard_comm,
    guard_parts,
    markup_is_active,
)

ACTIVE_MARKUP = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<IMG SRC=x ONERROR=alert(1)>",
    "<img/src/onerror=alert(1)>",
    "<svg onload=alert(1)>",
    # foreign content: <style> inside <svg> is markup, not CSS text
    "<svg><style><img src=x onerror=alert(1)></style></svg>",
    # a browser that runs scripts ends <noscript> at its first </noscript>
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
    '<a href="javascript:alert(1)">x</a>',
    '<a href="jav&#x61;script:alert(1)">x</a>',
    '<a href="java\tscript:alert(1)">x</a>',
    '<a href=" &#x0A;javascript:alert(1)">x</a>',
    '<math><mi xlink:href="javascript:alert(1)">x</mi></math>',
    '<iframe srcdoc="&lt;script&gt;alert(1)&lt;/script&gt;"></iframe>',
    '<object data="data:text/html,<script>alert(1)</script>"></object>',
    '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    '<base href="javascript:alert(1)//">',
    '<svg><animate attributeName="href" values="javascript:alert(1)"/></svg>',
    '<form><button formaction="javascript:alert(1)">x</button></form>',
    "<details open ontoggle=alert(1)>",
    '<body onload="alert(1)">',
    '<svg><use href="data:image/svg+xml,&lt;svg id=x&gt;&lt;/svg&gt;#x"/></svg>',
    '<svg><use xlink:href="/files/other.svg#x"/></svg>',
]

BENIGN_MARKUP = [
    "<b>bold</b> and <i>italic</i>",
    "<span style='color:red'>21 °C</span>",
    '<a href="https://example.org/x?a=1&amp;b=2">link</a>',
    '<img src="data:image/png;base64,iVBORw0KGgo=" width="40">',
    "<table><tr><td>a &lt; b</td></tr></table>",
    "<p>on the button = click here</p>",  # words like 'on...=' in text are not attributes
]


@pytest.mark.parametrize("markup", ACTIVE_MARKUP)
def test_markup_that_runs_code_is_active(markup: str) -> None:
    assert markup_is_active(markup)


@pytest.mark.parametrize("markup", BENIGN_MARKUP)
def test_markup_without_code_is_not(markup: str) -> None:
    assert not markup_is_active(markup)


def test_a_pandas_table_and_a_matplotlib_svg_pass_unchanged() -> None:
    pandas = pytest.importorskip("pandas")
    pyplot = pytest.importorskip("matplotlib.pyplot")
    frame = pandas.DataFrame({"a": [1, 2], "b": ["<x>", "y & z"]})
    styled = frame.style.highlight_max(color="red")
    figure, axes = pyplot.subplots()
    axes.plot([1, 3, 2])
    svg = io.StringIO()
    figure.savefig(svg, format="svg")
    pyplot.close(figure)
    bundle = {
        "text/html": frame._repr_html_(),
        "text/plain": repr(frame),
        "image/svg+xml": svg.getvalue(),
    }
    assert guard_bundle(bundle) is None
    assert guard_bundle({"text/html": styled.to_html()}) is None


@pytest.mark.parametrize(
    "mime",
    [
        "application/javascript",
        "text/javascript",
        "application/x-javascript",
        "application/vnd.bokehjs_exec.v0+json",
        "application/vnd.holoviews_load.v0+json",
    ],
)
def test_script_mime_types_are_dropped_and_the_output_says_why(mime: str) -> None:
    guarded = guard_bundle({"text/plain": "<Javascript object>", mime: "alert(1)"})
    assert guarded == {"text/plain": f"<Javascript object>\n{HELD_BACK_NOTE}"}


def test_a_richer_representation_left_is_shown_without_a_note() -> None:
    bundle = {
        "text/html": "<div id=plot></div><script>draw()</script>",
        "application/vnd.plotly.v1+json": {"data": []},
        "text/plain": "Figure",
    }
    assert guard_bundle(bundle) == {
        "application/vnd.plotly.v1+json": {"data": []},
        "text/plain": "Figure",
    }


@pytest.mark.parametrize(
    ("mime", "value"),
    [
        ("text/markdown", "[click](javascript:alert(1))"),
        ("text/markdown", "[click](java&#x09;script:alert(1))"),
        ("text/markdown", "# title\n<img src=x onerror=alert(1)>"),
        # A code span the Markdown renderer shows as text hides, from a parse of the source
        # as HTML, the live tag after it (the guard hunt ran each of these in JupyterLab).
        ("text/markdown", '`<!--` <img src=x onerror="alert(1)">'),
        ("text/markdown", "`<textarea>` <img src=x onerror=alert(1)>"),
        ("text/markdown", "`<title>` <img src=x onerror=alert(1)>"),
        ("text/markdown", "`<style>` <img src=x onerror=alert(1)>"),
        ("text/markdown", "    <plaintext>\n\n<img src=x onerror=alert(1)>"),
        ("text/markdown", "`<!--` <svg><animate attributeName=href values=x /></svg>"),
        ("text/latex", r"$\href{javascript:alert(1)}{x}$"),
        ("application/vnd.vegalite.v5+json", {"mark": "point", "href": "javascript:alert(1)"}),
        ("application/vnd.vega.v5+json", {"marks": [{"href": "java\tscript:alert(1)"}]}),
        # Markdown's backslash escape, which the renderer removes
        ("text/markdown", "[click](javascript\\:alert(1))"),
        ("text/markdown", "[click][1]\n\n[1]: java\\script\\:alert(1)"),
        ("image/svg+xml", '<svg xmlns="http://www.w3.org/2000/svg"><script>1</script></svg>'),
        ("text/html", ["<img src=x ", "onerror=alert(1)>"]),  # nbformat's list of lines
    ],
)
def test_markdown_latex_and_svg_with_code_are_dropped(mime: str, value: object) -> None:
    guarded = guard_bundle({mime: value})
    assert guarded == {"text/plain": HELD_BACK_NOTE}


def test_benign_markdown_and_latex_pass() -> None:
    bundle = {
        "text/markdown": "**bold** [site](https://example.org) `a < b` <b>html</b>",
        "text/latex": r"$x^2$",
        "application/vnd.vegalite.v5+json": {"mark": "bar", "href": "https://example.org"},
    }
    assert guard_bundle(bundle) is None


@pytest.mark.parametrize(
    "markdown",
    [
        "<b>bold</b> and one = 1",
        "<br> `ones = np.ones(3)`",
        "<sup>1</sup> only=True, once = 2, online = True, onset=5",
    ],
)
def test_markdown_with_a_tag_and_words_that_only_look_like_handlers_passes(markdown: str) -> None:
    """No event is named "e", "es" or "ly": `one = 1` beside a tag is not ``onclick=``. Such
    Markdown (LLM-written tables with <br>, numpy code) was held back."""
    assert guard_bundle({"text/markdown": markdown, "text/plain": "md"}) is None


@pytest.mark.parametrize(
    "markdown",
    [
        "<b>x</b> onclick = go()",
        "<img src=x one=1 onerror=alert(1)>",
        "<p ONLOAD=x>",
        "<b>x</b> onOnce=1",
    ],
)
def test_markdown_with_a_real_handler_beside_those_words_is_still_held_back(markdown: str) -> None:
    assert guard_bundle({"text/markdown": markdown}) == {"text/plain": HELD_BACK_NOTE}


def test_audio_and_video_embedded_as_data_urls_pass() -> None:
    """IPython's Audio and Video(embed=True) put the media in a data: URL, which cannot run
    script; they showed only the held-back note. Other data: URLs are still held back."""
    import numpy as np
    from IPython.display import Audio

    audio = Audio(np.sin(np.arange(800) / 10), rate=8000)._repr_html_()
    video = '<video controls><source src="data:video/mp4;base64,AAAAIGZ0eXA="></video>'
    assert guard_bundle({"text/html": audio, "text/plain": "a"}) is None
    assert guard_bundle({"text/html": video, "text/plain": "v"}) is None
    page = '<a href="data:text/html,<script>alert(1)</script>">x</a>'
    assert guard_bundle({"text/html": page}) == {"text/plain": HELD_BACK_NOTE}


def test_widget_html_is_shown_as_text_and_widget_javascript_is_not_run() -> None:
    content = {
        "comm_id": "c",
        "target_name": "jupyter.widget",
        "data": {
            "state": {
                "_model_name": "HTMLModel",
                "value": "<img src=x onerror=alert(1)>",
                "description": "<b>n</b>",
                "_esm": "export default { render() { fetch('/api/terminals') } }",
                "outputs": [
                    {"output_type": "display_data", "data": {"text/html": "<script>1</script>"}}
                ],
            },
            "buffer_paths": [],
        },
    }
    state = guard_comm(content)["data"]["state"]  # type: ignore[index]
    assert state["value"] == "&lt;img src=x onerror=alert(1)&gt;"
    assert state["description"] == "<b>n</b>"
    assert "fetch" not in state["_esm"] and "E2B_KERNEL_TRUST_OUTPUTS" in state["_esm"]
    assert state["outputs"][0]["data"] == {"text/plain": HELD_BACK_NOTE}
    assert guard_comm({"data": {"state": {"value": 3, "_esm": ""}}}) is None


def test_the_states_a_reconnecting_front_end_gets_are_guarded_too() -> None:
    """A page that reconnects asks for every widget's state (request_states): they come as
    ``states``, which code in the sandbox can fill without a checked update."""
    states = {
        "a": {"state": {"_model_name": "HTMLModel", "value": "<img src=x onerror=alert(1)>"}},
        "b": {"state": {"_model_name": "IntSliderModel", "value": 3}, "buffer_paths": []},
    }
    content = {"comm_id": "c", "data": {"method": "update_states", "states": states}}
    guarded = guard_comm(content)["data"]["states"]  # type: ignore[index]
    assert guarded["a"]["state"]["value"] == "&lt;img src=x onerror=alert(1)&gt;"
    assert guarded["b"] == states["b"]


def _parts(content: bytes) -> list[bytes]:
    return [b"{}", b"{}", b"{}", content, b"buffer"]


def test_serialized_messages_are_parsed_only_when_they_may_hold_code() -> None:
    plain = _parts(json.dumps({"data": {"image/png": "iVBOR", "text/plain": "x"}}).encode())
    assert guard_parts("display_data", plain) is plain
    # A JSON escape can spell a script MIME type that no byte search would find.
    escaped = b'{"data": {"application/java\\u0073cript": "alert(1)"}, "metadata": {}}'
    guarded = guard_parts("display_data", _parts(escaped))
    assert json.loads(guarded[3])["data"] == {"text/plain": HELD_BACK_NOTE}
    assert guarded[4] == b"buffer"
    update = {"data": {"method": "update", "state": {"value": "<svg onload=alert(1)>"}}}
    guarded = guard_parts("comm_msg", _parts(json.dumps(update).encode()))
    assert json.loads(guarded[3])["data"]["state"]["value"].startswith("&lt;svg")
    page = {"status": "ok", "payload": [{"source": "page", "data": {"text/html": "<script>"}}]}
    guarded = guard_parts("execute_reply", _parts(json.dumps(page).encode()))
    assert json.loads(guarded[3])["payload"][0]["data"] == {"text/plain": HELD_BACK_NOTE}


@pytest.mark.parametrize(
    ("msg_type", "content"),
    [
        # JSON may escape "/" (the sandbox's kernel can send any bytes it likes)
        ("display_data", b'{"data": {"text\\/html": "<img src=x onerror=alert(1)>"}}'),
        ("execute_result", b'{"data": {"text\\/ht\\u006dl": "<script>1</script>"}}'),
        (
            "execute_reply",
            b'{"status": "ok", "payload": [{"source": "p\\u0061ge", '
            b'"data": {"text\\/html": "<script>1</script>"}}]}',
        ),
    ],
)
def test_json_escapes_do_not_hide_a_message_from_the_guard(msg_type: str, content: bytes) -> None:
    guarded = guard_parts(msg_type, _parts(content))
    assert guarded is not None
    text = json.dumps(json.loads(guarded[3]))
    assert "text/html" not in text and HELD_BACK_NOTE in text


@pytest.mark.parametrize(
    "content",
    [b'{"data": {"text/html": "<b>', b"[" * 100_000 + b"]" * 100_000 + b' "text/html"'],
)
def test_content_the_guard_cannot_read_is_not_passed_on(content: bytes) -> None:
    """Nested past Python's parser (a browser's JSON.parse may read it), or not JSON."""
    assert guard_parts("display_data", _parts(content)) is None


def test_a_huge_data_url_is_judged_by_its_scheme() -> None:
    image = "data:image/png;base64," + "A" * 5_000_000
    assert not markup_is_active(f'<img src="{image}">')
    tabs = "\t" * 1000
    assert markup_is_active(f'<a href="{tabs}javascript:alert(1)">x</a>')
