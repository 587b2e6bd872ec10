"""JupyterLab in headless Chromium: pick "E2B Python" in the launcher and run cells.

Uses Debian's chromium driven by the Python ``playwright`` package (no browser download).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Debian's chromium is not installed (apt-get install chromium); .ci/run installs it",
    ),
]

# Flags for a root, offline machine: no sandbox (root), and no background calls to Google.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, process: subprocess.Popen, deadline: float) -> None:
    import urllib.request

    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)  # polling a real condition (the server answering), bounded by deadline
    raise TimeoutError(f"JupyterLab did not answer at {url}")


@pytest.fixture
def jupyterlab(tmp_path: Path) -> Iterator[str]:
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "E2B_API_KEY"}
    env.update(
        E2B_KERNEL_BACKEND="local",
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
    )
    (tmp_path / "work").mkdir()
    log = open(tmp_path / "jupyterlab.log", "wb")  # closed in teardown
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={tmp_path / 'work'}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/api/status?token={token}", process, time.monotonic() + 90)
        yield f"{base}/lab?reset&token={token}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def what_the_page_showed(page, tmp_path: Path) -> str:
    """What a failed run leaves to read in CI: the status bar, any dialog, the server's log."""
    try:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        shown = page.evaluate(
            "() => [...document.querySelectorAll('.jp-StatusBar-Widget, .jp-Dialog')]"
            ".map(e => e.innerText).join(' || ')"
        )
    except Exception as error:  # the page itself may be what broke
        shown = f"(the page could not be read: {error})"
    log = (tmp_path / "jupyterlab.log").read_bytes()[-6000:].decode(errors="replace")
    return f"the page showed: {shown}\n--- jupyterlab.log, last lines ---\n{log}"


def run_cell(page, code: str) -> None:
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")


def run_cells_from_the_launcher(page, url: str, screenshot: Path) -> None:
    page.set_default_timeout(120_000)
    page.goto(url)
    card = page.locator('.jp-LauncherCard[data-category="Notebook"]', has_text="E2B Python")
    card.click()
    status = page.locator(".jp-StatusBar-Widget", has_text="E2B Python | Idle")
    status.wait_for()
    page.locator(".jp-Notebook .jp-Cell .cm-content").first.click()

    run_cell(page, 'print("first", flush=True); import time; time.sleep(4); print("second")')
    outputs = page.locator(".jp-OutputArea-output")
    outputs.filter(has_text="first").first.wait_for()
    # The first line is on screen while the cell still sleeps: streaming, not batching.
    assert outputs.filter(has_text="second").count() == 0
    outputs.filter(has_text="second").first.wait_for()

    run_cell(page, "import matplotlib.pyplot as plt; plt.plot([1, 3, 2]); plt.show()")
    page.locator(".jp-OutputArea-output img").first.wait_for()
    status.wait_for()

    # Widgets need the jupyter transport: their comms reach JupyterLab's manager.
    run_cell(page, "import ipywidgets as w; w.IntSlider(value=3, description='n')")
    page.locator(".jp-OutputArea-output .widget-slider").first.wait_for()
    run_cell(page, "from tqdm.auto import tqdm\nfor _ in tqdm(range(3)): pass")
    page.locator(".jp-OutputArea-output .widget-hprogress").first.wait_for()
    status.wait_for()

    # Code in the sandbox must not reach the browser: JupyterLab runs the JavaScript of the
    # outputs a running cell sends, in the page of this Jupyter Server, which can open a host
    # terminal. Both outputs are held back, saying why, and nothing of theirs runs here.
    run_cell(
        page,
        "from IPython.display import HTML, Javascript, Markdown; "
        'display(Javascript("document.body.dataset.pwned=1")); '
        'display(HTML("<img src=x onerror=document.body.dataset.pwned=2>")); '
        # a code span holding "<!--", which hid the tag after it from a parse as HTML (the
        # handler quoted, as Markdown's raw HTML needs: chr(34))
        'q, h = chr(96), chr(34); display(Markdown(q + "<!--" + q + '
        '" <img src=x onerror=" + h + "document.body.dataset.pwned=3" + h + ">"))',
    )
    outputs.filter(has_text="Not shown: this output from the sandbox").nth(2).wait_for()
    assert page.locator(".jp-OutputArea-output img[src='x']").count() == 0
    assert page.evaluate("() => document.body.dataset.pwned ?? null") is None
    page.screenshot(path=str(screenshot), full_page=True)


@pytest.mark.timeout(300)
def test_launcher_runs_cells_on_e2b_python(jupyterlab: str, tmp_path: Path) -> None:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            try:
                run_cells_from_the_launcher(page, jupyterlab, tmp_path / "jupyterlab.png")
            except Exception as error:
                raise AssertionError(what_the_page_showed(page, tmp_path)) from error
        finally:
            browser.close()
    assert (tmp_path / "jupyterlab.png").stat().st_size > 10_000
