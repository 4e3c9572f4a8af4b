"""A headless Chromium for the report tests, driven over the Chrome DevTools Protocol on a pipe
(``--remote-debugging-pipe``: JSON messages ended by a NUL byte, commands on the browser's fd 3,
replies on its fd 4), so no websocket client, driver or Python package is needed, only the
``chromium`` Debian package (``make chromium``).

``--dump-dom`` cannot say whether an image decoded (``naturalWidth``) and ``--screenshot`` cannot
say which element is what, so the test asks the page itself: :meth:`Browser.page` loads a URL,
waits for the load event and every image, and returns what a small script reads from the DOM, plus the
page's console errors (``console_errors``: uncaught exceptions, ``console.error`` calls and the browser's own
error log entries, such as a resource that failed to load), collected from the DevTools events.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from typing import Any

REQUIRE_ENV = "FAMLAB_REQUIRE_CHROMIUM"  # CI sets it: no browser is then a failure, not a skip

# what a loaded page holds: its images (decoded size), stderr outputs (a cell error is one), shown code
# inputs, Markdown cells, text and links
PAGE_FACTS = """
(async () => {
  if (document.readyState !== "complete") await new Promise(r => addEventListener("load", r, {once: true}));
  await Promise.all([...document.images].map(i => i.decode().catch(() => null)));
  return JSON.stringify({
    href: location.href,
    title: document.title,
    images: [...document.images].map(i => ({width: i.naturalWidth, height: i.naturalHeight})),
    stderr: [...document.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]')].map(e => e.innerText),
    inputs: document.querySelectorAll(".jp-CodeCell .jp-InputArea").length,
    markdown: document.querySelectorAll(".jp-MarkdownCell").length,
    text: document.body ? document.body.innerText : "",
    links: [...document.links].map(a => a.getAttribute("href")),
  });
})()
"""


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page (tab) attached; use as a context manager."""

    def __init__(self, binary: str, deadline_s: float = 120.0):
        self.deadline_s = deadline_s
        self.profile = tempfile.TemporaryDirectory(prefix="famlab-chromium-")
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()
        args = [
            "--headless=new",
            "--no-sandbox",  # root in a container
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile.name}",
            "about:blank",
        ]
        # the browser wants the pipe on fds 3 and 4: the shell puts it there, then becomes the browser
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}', binary, *args],
            pass_fds=(to_browser_r, from_browser_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.next_id, self.buffer = 0, b""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.console: list[str] = []  # the current page's console errors (events, see keep_event)
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.to_browser, self.from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.profile.cleanup()

    def keep_event(self, event: dict) -> None:
        """Record a console error event; other events are dropped."""
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.console.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args", [])
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            self.console.append(params["entry"].get("text", ""))

    def send(self, method: str, params: dict | None = None, session: bool = False) -> dict:
        """One command; its result (events that arrive meanwhile: console errors kept, the rest dropped)."""
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + self.deadline_s
        while True:
            while b"\0" not in self.buffer:
                left = end - time.monotonic()
                if left <= 0 or not select.select([self.from_browser], [], [], left)[0]:
                    raise RuntimeError(f"chromium did not answer {method}")
                chunk = os.read(self.from_browser, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium closed the pipe during {method}")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if "method" in reply and "id" not in reply:
                self.keep_event(reply)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def page(self, url: str) -> dict:
        """Load ``url`` and return :data:`PAGE_FACTS` of it, once the page and its images loaded, with its
        ``console_errors``."""
        self.console = []
        self.send("Page.navigate", {"url": url}, session=True)
        end = time.monotonic() + self.deadline_s
        while time.monotonic() < end:
            result = self.send(
                "Runtime.evaluate", {"expression": PAGE_FACTS, "awaitPromise": True, "returnByValue": True}, True
            )["result"]
            facts = json.loads(result.get("value") or "{}")
            if facts.get("href") == url:  # not the page before, while the navigation commits
                return {**facts, "console_errors": list(self.console)}
            time.sleep(0.2)
        raise RuntimeError(f"chromium did not load {url}")
