"""A real headless Chromium for UI tests, driven over the DevTools protocol (no browser download).

Debian's `chromium` package (`.ci/run` installs it when missing) started with
`--remote-debugging-port=0` and a fresh profile folder; Chromium writes the port it chose to
`<profile>/DevToolsActivePort`, and one page target is driven over its websocket
(`websocket-client`). Only the few commands the tests need: navigate, evaluate JavaScript,
wait for a condition, click an element found by its text, screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import websocket

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_binary() -> str | None:
    """The installed Chromium, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserError(RuntimeError):
    """The browser did not start, or a page did not reach the state waited for."""


class Page:
    """One tab of a running Chromium, driven by DevTools commands over its websocket."""

    def __init__(self, ws_url: str):
        self._ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self._next_id = 0
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method: str, **params) -> dict:
        """Run one DevTools command; its result (events received meanwhile are dropped)."""
        self._next_id += 1
        self._ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (awaited when a promise)."""
        reply = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression[:80]}: {reply['exceptionDetails'].get('text')}")
        return reply.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout_s: float = 60.0, what: str = "") -> object:
        """Poll a JavaScript expression until it is truthy; its value. BrowserError on timeout,
        with the page's address and the start of its text (what the page showed instead)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(BrowserError):
                value = self.evaluate(expression)
                if value:
                    return value
            time.sleep(0.25)
        raise BrowserError(f"timed out after {timeout_s:.0f}s waiting for {what or expression} on {self.url()}: "
                           f"{(self.text() or '')[:600]!r}")

    def url(self) -> str:
        return self.evaluate("location.href")

    def text(self) -> str:
        """The page's visible text."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, *needles: str, timeout_s: float = 60.0) -> None:
        """Wait until every one of `needles` is in the page's visible text."""
        checks = " && ".join(f"document.body.innerText.includes({json.dumps(n)})" for n in needles)
        self.wait_for(f"document.body && {checks}", timeout_s, what=f"text {list(needles)}")

    def click_text(self, text: str, selector: str = "a", timeout_s: float = 30.0) -> None:
        """Click, as a mouse does (move, press, release at its centre), the first visible
        `selector` element whose text is `text` (trimmed). Some widgets act on the press, not
        on a scripted click()."""
        find = (f"Array.from(document.querySelectorAll({json.dumps(selector)}))"
                f".find(e => e.innerText && e.innerText.trim() === {json.dumps(text)}"
                " && e.getBoundingClientRect().width > 0)")
        self.click(find, timeout_s, what=f"{selector} {text!r}")

    def click(self, find: str, timeout_s: float = 30.0, what: str = "") -> None:
        """Click, as a mouse does, the element the JavaScript expression `find` returns."""
        self.wait_for(f"!!({find})", timeout_s, what=what or find)
        box = self.evaluate(f"(() => {{ const e = {find}; e.scrollIntoView({{block: 'center'}}); "
                            "const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        x, y = box
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ws.close()


@contextlib.contextmanager
def chromium(width: int = 1600, height: int = 1000, timeout_s: float = 30.0):
    """A headless Chromium with a fresh profile (nothing remembered: localStorage empty), as a
    first-time reader's browser; yields its Page, stopped and its profile removed at the end."""
    binary = chromium_binary()
    if binary is None:
        raise BrowserError("no chromium on PATH (Debian: apt-get install -y chromium)")
    profile = Path(tempfile.mkdtemp(prefix="pix3d-chromium-"))
    cmd = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--no-default-browser-check", "--disable-extensions",
           f"--user-data-dir={profile}", "--remote-debugging-port=0", "--remote-allow-origins=*",
           f"--window-size={width},{height}", "about:blank"]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    page = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while not (port_file.is_file() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise BrowserError(f"chromium did not start (exit {process.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            targets = [t for t in json.load(reply) if t.get("type") == "page"]
        page = Page(targets[0]["webSocketDebuggerUrl"])
        page.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        yield page
    finally:
        if page is not None:
            page.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        shutil.rmtree(profile, ignore_errors=True)
