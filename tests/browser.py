"""Drive headless Chromium over the DevTools protocol (CDP) through a pipe: no ports, no extra packages.

Chromium started with `--remote-debugging-pipe` reads CDP commands from its fd 3 and writes replies
and events to its fd 4, each message one JSON object terminated by a NUL byte. The page is opened
from the file system with networking blocked (proxy to a closed port, every host name unresolvable);
every network request the page makes is recorded so tests can assert there was none.
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def chromium_path() -> str | None:
    """The Chromium executable (Debian package `chromium`), or None when it is not installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio",
    # WebGL without a GPU: software rasteriser, so plotly's scatter3d draws.
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
    # Block the network: any http(s) fetch goes to a closed port, every host name fails to resolve.
    "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
]


class Browser:
    """One headless Chromium with one page. Use as a context manager.

    `errors` collects uncaught exceptions, console.error calls and error log entries of the page;
    `requests` collects the URL of every request the page made.
    """

    def __init__(self, width: int = 1600, height: int = 800, timeout: float = 60.0):
        exe = chromium_path()
        if exe is None:
            raise RuntimeError("chromium is not installed (Debian package `chromium`)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="spice-chromium-")
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        args = [exe, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
                "--remote-debugging-pipe", "about:blank"]

        def child_fds():  # chromium expects the CDP pipe on fds 3 (in) and 4 (out)
            r, w = os.dup(to_chrome_r), os.dup(from_chrome_w)  # copies first: the originals may sit on 3 or 4
            os.dup2(r, 3)
            os.dup2(w, 4)
            os.set_inheritable(3, True)  # survive exec; every other fd of ours is closed there (PEP 446)
            os.set_inheritable(4, True)

        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=child_fds, close_fds=False)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._out, self._in = to_chrome_w, from_chrome_r
        self._buf = b""
        self._next_id = 0
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.width, self.height = width, height
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    # ----------------------------------------------------------------------------------- protocol
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError("no reply from chromium")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def _record(self, msg: dict) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = params["exceptionDetails"]
            self.errors.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(params["entry"]["text"])
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])

    def send(self, method: str, session: bool = False, timeout: float | None = None, **params) -> dict:
        """Send one CDP command and return its result (events that arrive meanwhile are recorded)."""
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._record(reply)

    # ------------------------------------------------------------------------------------ actions
    def evaluate(self, expression: str, timeout: float | None = None):
        """Value of a JavaScript expression in the page (promises are awaited)."""
        res = self.send("Runtime.evaluate", session=True, timeout=timeout, expression=expression,
                        awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression!r} threw: {res['exceptionDetails']}")
        return res["result"].get("value")

    def open(self, path: Path, ready: str = "window.spicePainted", timeout: float = 60.0) -> float:
        """Navigate to a local file; wait until `ready` is truthy. Returns seconds from navigation."""
        url = Path(path).resolve().as_uri()
        start = time.monotonic()
        self.send("Page.navigate", session=True, url=url)
        while time.monotonic() - start < timeout:
            if self.evaluate(f"Boolean({ready})"):
                return time.monotonic() - start
            time.sleep(0.05)
        raise TimeoutError(f"{url}: `{ready}` not set after {timeout} s; errors: {self.errors}")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", session=True, format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def drag(self, x0: float, y0: float, x1: float, y1: float, steps: int = 10) -> None:
        """Press the left mouse button at (x0, y0), move to (x1, y1) in steps, release (CSS pixels)."""
        def mouse(kind, x, y, buttons):
            self.send("Input.dispatchMouseEvent", session=True, type=kind, x=x, y=y, button="left",
                      buttons=buttons, clickCount=1 if kind != "mouseMoved" else 0)
        mouse("mouseMoved", x0, y0, 0)
        mouse("mousePressed", x0, y0, 1)
        for k in range(1, steps + 1):
            t = k / steps
            mouse("mouseMoved", x0 + t * (x1 - x0), y0 + t * (y1 - y0), 1)
            time.sleep(0.02)
        mouse("mouseReleased", x1, y1, 0)

    def click(self, x: float, y: float) -> None:
        """Left click at (x, y) CSS pixels."""
        for kind, buttons in (("mouseMoved", 0), ("mousePressed", 1), ("mouseReleased", 0)):
            self.send("Input.dispatchMouseEvent", session=True, type=kind, x=x, y=y, button="left",
                      buttons=buttons, clickCount=0 if kind == "mouseMoved" else 1)

    def click_text(self, selector: str, text: str) -> None:
        """Click the centre of the first element matching `selector` whose text is `text`."""
        box = self.evaluate(f"""(() => {{
            const el = [...document.querySelectorAll({json.dumps(selector)})]
                .find(e => e.textContent.trim() === {json.dumps(text)});
            if (!el) return null;
            const r = el.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2];
        }})()""")
        if box is None:
            raise LookupError(f"no {selector} with text {text!r} on the page")
        self.click(*box)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 — it may already be gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._out)
        os.close(self._in)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
