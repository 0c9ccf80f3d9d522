"""Drive headless Chromium over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages
ending in NUL on file descriptors 3 and 4), so tests need no WebDriver or websocket package.

`classify_on_page(url, image, screenshot)` opens the page, picks the image in its file input as a
user would (DOM.setFileInputFiles fires the change event), waits for the result table and returns
its rows; the screenshot is saved as PNG.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path


def chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


class DevTools:
    def __init__(self, binary: str, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire():
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.process = subprocess.Popen(
            [binary, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--no-first-run", f"--user-data-dir={profile}", "--window-size=800,600", "about:blank"],
            pass_fds=(3, 4, to_browser_r, from_browser_w), preexec_fn=wire, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer, self._next_id, self.session = b"", 0, None

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str):
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        self.process.wait(timeout=30)
        os.close(self._to_browser)
        os.close(self._from_browser)


def classify_on_page(url: str, image: Path, screenshot: Path, profile: Path, timeout: float = 60) -> list[str]:
    """Rows of the page's result table ("7 | 93.1 %" ...) after choosing `image`; saves a screenshot."""
    tools = DevTools(chromium(), profile)
    try:
        page = next(t for t in tools.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        tools.session = tools.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        tools.send("Page.enable")
        tools.send("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while tools.evaluate("document.readyState") != "complete" or tools.evaluate(
                "document.getElementById('version') && document.getElementById('version').textContent") in (None, "…"):
            if time.monotonic() > deadline:
                raise TimeoutError("the page did not load")
            time.sleep(0.2)
        root = tools.send("DOM.getDocument")["root"]["nodeId"]
        file_input = tools.send("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
        tools.send("DOM.setFileInputFiles", files=[str(image)], nodeId=file_input)
        while tools.evaluate("document.body.dataset.done") != "1":
            if time.monotonic() > deadline:
                raise TimeoutError(f"no result on the page: {tools.evaluate('document.body.innerText')}")
            time.sleep(0.2)
        rows = tools.evaluate("[...document.querySelectorAll('#results tr')].map(r => [...r.cells].map(c => "
                              "c.textContent).join(' | '))")
        header = tools.evaluate("document.getElementById('model').textContent")
        screenshot.write_bytes(base64.b64decode(tools.send("Page.captureScreenshot", format="png")["data"]))
        return [header.strip(), *rows]
    finally:
        tools.close()
