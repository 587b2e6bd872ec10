"""Outputs from the sandbox that would run code in the user's browser, held back.

Front ends trust the outputs a running cell sends: JupyterLab and Notebook run
``application/javascript``, and the scripts and event handlers of ``text/html``, Markdown,
SVG and widget HTML, in the page of the user's own Jupyter Server, whose API opens a terminal
on the host. Code in a sandbox is not trusted, so its outputs must not carry code out of it:

- script MIME types (``application/javascript``, Bokeh's and HoloViews' ``*_exec``/``*_load``
  bundles) are dropped;
- ``text/html``, ``image/svg+xml`` and ``text/markdown`` are dropped when they hold active
  content: a script, an element that loads or runs a document (``iframe``, ``object``,
  ``embed``, ``base``, ``meta``...), an event handler attribute, or a ``javascript:`` URL;
  ``text/latex`` when it holds a ``javascript:`` URL. Everything else, a pandas table with its
  ``<style>`` included, passes unchanged, byte for byte;
- widget state (``jupyter.widget`` comms) is treated the same: HTML with active content is
  shown as text, an anywidget's ``_esm`` module is replaced by one that says why.

HTML is judged on the tree that lexbor, a WHATWG-conformant parser, builds: the one the
browser builds too, so markup that hides a handler from a naive reading (``<svg><style>``,
``<noscript>``) does not slip through. A bundle left with nothing to show says why, in
``text/plain``. ``SessionConfig.trust_outputs`` (``E2B_KERNEL_TRUST_OUTPUTS=1``) turns this
off for users who trust the code they run.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "HELD_BACK_NOTE",
    "guard_bundle",
    "guard_comm",
    "guard_event",
    "guard_output",
    "guard_parts",
    "guard_payloads",
]

HELD_BACK_NOTE = (
    "[e2b-kernel] Not shown: this output from the sandbox holds code that your browser would "
    "run outside the sandbox (a script, an event handler or a javascript: link). Set "
    "E2B_KERNEL_TRUST_OUTPUTS=1 to show such outputs if you trust the code you run."
)
_INERT_WIDGET_MODULE = (
    "export default { render({ el }) { el.textContent = "
    + json.dumps(
        "[e2b-kernel] This widget's JavaScript from the sandbox was not run. "
        "Set E2B_KERNEL_TRUST_OUTPUTS=1 to run it if you trust the code you run."
    )
    + "; } };"
)

_SCRIPT_TYPES = re.compile(
    r"(application|text)/(x-)?(javascript|ecmascript)|application/vnd\..*_(exec|load)\.v\d+\+json",
    re.IGNORECASE,
)
_MARKUP_TYPES = frozenset({"text/html", "image/svg+xml", "text/markdown"})
_URL_TYPES = frozenset({"text/latex"})  # MathJax's \href
# Elements that run or load code or documents, redirect the page, or are parsed differently
# by a browser that runs scripts (noscript) than by a parser that does not.
_ACTIVE_ELEMENTS = frozenset(
    {
        "script", "iframe", "frame", "frameset", "object", "embed", "applet", "base", "meta",
        "link", "template", "noscript", "noembed", "noframes", "portal", "fencedframe",
        "animate", "animatemotion", "animatetransform", "set", "handler", "listener",
    }
)  # fmt: skip
_ACTIVE_SCHEMES = ("javascript:", "vbscript:", "livescript:")
_MEDIA_DATA = ("data:image/", "data:audio/", "data:video/")
# Markdown: a tag start anywhere, and anything that makes a tag run code (see markdown_is_active).
_RAW_TAG = re.compile(r"<[a-zA-Z!?/]")
# Words that start like an event handler attribute ("on" + letters) but are none: no event is
# named "e", "ly", "set" or "line" (the handler of "online" is "ononline"). Text such as
# `<br> ones = np.ones(3)` held Markdown back; any other on...= still does.
_NOT_HANDLERS = (
    "one", "ones", "oneself", "only", "once", "online", "onset", "onto", "onus", "ongoing",
    "onboard", "onboarding", "onward", "onwards", "onion", "onions",
)  # fmt: skip
_ACTIVE_WORDS = re.compile(
    r"<(?:" + "|".join(sorted(_ACTIVE_ELEMENTS | {"svg", "math", "use", "form"})) + r")[\s/>]"
    r"|\b(?!(?:" + "|".join(_NOT_HANDLERS) + r")\s*=)on[a-z]+\s*=|\bsrcdoc\b",
    re.IGNORECASE,
)
_JSON_SPECS = re.compile(r"application/vnd\.(vega|vegalite)\.v\d+\+json")
# Bytes whose absence proves a message holds nothing this module would change. Any JSON escape
# (a backslash: ``\\u0068tml``, ``text\\/html``) could spell one of them, so it sends the
# message to the parser too.
_MARKERS = (
    b"javascript", b"ecmascript", b"_exec", b"_load", b"text/html", b"image/svg",
    b"text/markdown", b"text/latex", b"\\",
)  # fmt: skip
_COMM_MARKERS = (b"<", b"_esm", b"\\")
_PAGE_MARKERS = (b"page", b"\\")
# What browsers drop from a URL before reading its scheme: leading C0 controls and spaces,
# and tabs and newlines anywhere (more is dropped here, which only errs on the safe side).
_NOT_IN_SCHEME = dict.fromkeys(range(0x21))
_NOT_IN_TEXT_SCHEME = {**_NOT_IN_SCHEME, ord("\\"): None}  # Markdown's escapes too


def _url_is_active(value: str) -> bool:
    """Whether a URL would run script: browsers drop whitespace and control characters
    before reading the scheme (``java\\tscript:``)."""
    squeezed = value.translate(_NOT_IN_SCHEME)[:16].lower()
    if squeezed.startswith(_ACTIVE_SCHEMES):
        return True
    # Pictures, sound and video (IPython's Audio, Video(embed=True)) cannot run script.
    return squeezed.startswith("data:") and not squeezed.startswith(_MEDIA_DATA)


def _text_has_active_url(text: str) -> bool:
    """Whether text (Markdown, LaTeX, a JSON spec's string) holds a script URL anywhere,
    whatever entities, whitespace or Markdown's backslash escapes (``javascript\\:``) spell
    it with."""
    squeezed = html.unescape(text).translate(_NOT_IN_TEXT_SCHEME).lower()
    return any(scheme in squeezed for scheme in _ACTIVE_SCHEMES)


def _json_has_active_url(value: Any) -> bool:
    """Whether any string in a JSON value holds a script URL."""
    if isinstance(value, str):
        return _text_has_active_url(value)
    if isinstance(value, dict):
        return any(_json_has_active_url(v) or _json_has_active_url(k) for k, v in value.items())
    if isinstance(value, list):
        return any(_json_has_active_url(item) for item in value)
    return False


def _refers_within(attributes: dict[str, str | None]) -> bool:
    """Whether an SVG ``<use>`` refers to an element of its own document (matplotlib's
    markers and glyphs), not to another document."""
    targets = [v for k, v in attributes.items() if k.lower() in ("href", "xlink:href")]
    return all((target or "").strip().startswith("#") for target in targets)


def markup_is_active(markup: str) -> bool:
    """Whether HTML (or SVG) would run code in the browser that shows it."""
    from selectolax.lexbor import LexborHTMLParser  # imported here: only rich outputs need it

    root = LexborHTMLParser(markup).root
    if root is None:
        return False
    for node in root.traverse(include_text=False):
        tag = (node.tag or "").lower()
        if tag in _ACTIVE_ELEMENTS:
            return True
        if tag == "use" and not _refers_within(node.attributes):
            return True  # an SVG <use> of another document may bring its scripts along
        for name, value in node.attributes.items():
            name = name.lower()
            if name.startswith("on") or name == "srcdoc":
                return True
            if value and _url_is_active(value):
                return True
    return False


def markdown_is_active(text: str) -> bool:
    """Whether Markdown would run code once rendered. Its raw HTML cannot be judged by
    parsing the source as HTML: a code span the renderer shows as text (`` `<!--` ``,
    `` `<textarea>` ``) would hide from that parse the live markup after it. So once the text
    holds any tag, a handler attribute or an active element anywhere in it is enough."""
    if _text_has_active_url(text) or ("<" in text and markup_is_active(text)):
        return True
    return _RAW_TAG.search(text) is not None and _ACTIVE_WORDS.search(text) is not None


def _value_is_active(mime: str, value: Any) -> bool:
    """Whether one representation of a bundle would run code (script MIME types always)."""
    if _SCRIPT_TYPES.fullmatch(mime):
        return True
    if isinstance(value, list):  # nbformat's multiline strings
        value = "".join(str(line) for line in value)
    if _JSON_SPECS.fullmatch(mime):  # a renderer's JSON spec (Vega's href channels): its links
        return _json_has_active_url(value)
    if not isinstance(value, str):
        return False
    if mime in _URL_TYPES:
        return _text_has_active_url(value)
    if mime == "text/markdown":
        return markdown_is_active(value)
    if mime in _MARKUP_TYPES:
        return "<" in value and markup_is_active(value)
    return False


def guard_bundle(data: dict[str, Any]) -> dict[str, Any] | None:
    """A MIME bundle without what would run code in the browser; None when nothing is."""
    held = [mime for mime, value in data.items() if _value_is_active(mime, value)]
    if not held:
        return None
    kept = {mime: value for mime, value in data.items() if mime not in held}
    if set(kept) <= {"text/plain"}:  # nothing richer left: say why the output is missing
        shown = kept.get("text/plain")
        kept["text/plain"] = f"{shown}\n{HELD_BACK_NOTE}" if shown else HELD_BACK_NOTE
    return kept


def guard_output(content: dict[str, Any]) -> dict[str, Any] | None:
    """A display_data / execute_result / update_display_data content, guarded; None when
    unchanged."""
    data = content.get("data")
    if not isinstance(data, dict):
        return None
    guarded = guard_bundle(data)
    if guarded is None:
        return None
    return {**content, "data": guarded}


def guard_event(kind: str, content: dict[str, Any]) -> dict[str, Any]:
    """An output event's content (a display, a result, a reply's ``payload``), guarded;
    ``content`` itself when nothing in it is held back."""
    if kind in ("display_data", "update_display_data", "execute_result"):
        return guard_output(content) or content
    if kind == "payload" and isinstance(content.get("data"), dict):
        guarded = guard_bundle(content["data"])
        return content if guarded is None else {**content, "data": guarded}
    return content


def guard_payloads(payloads: Iterable[Any]) -> list[Any] | None:
    """A reply's payloads with the pager's bundles guarded; None when unchanged."""
    result, changed = [], False
    for payload in payloads:
        if isinstance(payload, dict) and isinstance(payload.get("data"), dict):
            guarded = guard_bundle(payload["data"])
            if guarded is not None:
                payload, changed = {**payload, "data": guarded}, True
        result.append(payload)
    return result if changed else None


def _guard_state(state: dict[str, Any]) -> dict[str, Any] | None:
    """A widget's state with its active HTML made text and its ``_esm`` inert."""
    changed: dict[str, Any] = {}
    for key, value in state.items():
        if key == "_esm" and value:
            changed[key] = _INERT_WIDGET_MODULE
        elif isinstance(value, str) and "<" in value and markup_is_active(value):
            changed[key] = html.escape(value)
        elif key == "outputs" and isinstance(value, list):  # an Output widget's outputs
            outputs = [guard_output(o) or o if isinstance(o, dict) else o for o in value]
            if outputs != value:
                changed[key] = outputs
    return {**state, **changed} if changed else None


def guard_comm(content: dict[str, Any]) -> dict[str, Any] | None:
    """A comm_open / comm_msg content with its widget state guarded; None when unchanged.
    Both forms: one model's ``state``, and the ``states`` of every model that a front end
    gets when it reconnects (``request_states``)."""
    data = content.get("data")
    if not isinstance(data, dict):
        return None
    changed: dict[str, Any] = {}
    if isinstance(data.get("state"), dict):
        state = _guard_state(data["state"])
        if state is not None:
            changed["state"] = state
    states = data.get("states")
    if isinstance(states, dict):
        guarded_states = dict(states)
        for model_id, model in states.items():
            if isinstance(model, dict) and isinstance(model.get("state"), dict):
                state = _guard_state(model["state"])
                if state is not None:
                    guarded_states[model_id] = {**model, "state": state}
        if guarded_states != states:
            changed["states"] = guarded_states
    if not changed:
        return None
    return {**content, "data": {**data, **changed}}


def guard_parts(msg_type: str, parts: list[bytes]) -> list[bytes] | None:
    """A serialized message (``[header, parent, metadata, content, *buffers]``), guarded;
    the same list, unparsed, when it cannot hold anything to guard; None when its content
    cannot be read here (a browser might read it: it must not go on as it is)."""
    content_bytes = parts[3]
    if msg_type in ("comm_open", "comm_msg"):
        markers: tuple[bytes, ...] = _COMM_MARKERS
        guard = guard_comm
    elif msg_type == "execute_reply":
        if not any(marker in content_bytes for marker in _PAGE_MARKERS):
            return parts
        markers, guard = _MARKERS, _guard_reply
    else:
        markers, guard = _MARKERS, guard_output
    if not any(marker in content_bytes for marker in markers):
        return parts
    try:
        content = json.loads(content_bytes)
        guarded = guard(content) if isinstance(content, dict) else None
    except Exception:  # not JSON, nested past Python's parser, or shaped like nothing sent
        return None
    if guarded is None:
        return parts
    return [*parts[:3], json.dumps(guarded).encode(), *parts[4:]]


def _guard_reply(content: dict[str, Any]) -> dict[str, Any] | None:
    payloads = guard_payloads(content.get("payload") or [])
    return None if payloads is None else {**content, "payload": payloads}
