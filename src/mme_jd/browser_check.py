"""Check the gallery and the local app as a person would see them: in a real (headless) browser.

    python -m mme_jd.browser_check --output-dir inspect_check     (`make inspect-check`)

opens a gallery (written here for the tiny random model on synthetic rows, or for `--model` on
`--data`) and the local app (`mme_jd.app`, on 127.0.0.1) in headless Chromium, uploads an image
and a text to the app, switches its mode, and asserts for each page that it loaded without a
console error, an uncaught exception or a blocked/failed load (the pages' Content-Security-Policy
turns any network load into such an error), and shows the expected number of example cards. It
saves a screenshot of each page (`gallery.png`, `app.png`).

The browser is driven with the Chrome DevTools Protocol over Chromium's `--remote-debugging-pipe`
(NUL-separated JSON on file descriptors 3 and 4): standard library only, no Selenium/Playwright.
Chromium comes from the system packages (`apt-get install chromium`); `find_chromium` looks for
it (`$CHROMIUM`, then `chromium`, `chromium-browser`, `google-chrome` on the PATH).
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BrowserError", "HeadlessChromium", "PageCheck", "find_chromium", "main", "run_check"]

CARD_SELECTOR = "article.example"
#: Flags for a quiet, offline, throwaway headless browser.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")


class BrowserError(RuntimeError):
    """The browser could not be started or did not answer."""


def find_chromium() -> str | None:
    """The Chromium executable: `$CHROMIUM`, else the first of chromium, chromium-browser,
    google-chrome on the PATH; None when there is none."""
    candidates = [os.environ.get("CHROMIUM")] + [shutil.which(n) for n in ("chromium", "chromium-browser",
                                                                            "google-chrome")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@dataclass
class PageCheck:
    """What a page showed: its URL, the number of example cards, the console errors, and the
    screenshot file (when one was taken)."""

    url: str
    cards: int
    errors: list[str] = field(default_factory=list)
    screenshot: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def problems(self, expected_cards: int) -> list[str]:
        """Why the page fails the check (empty when it passes)."""
        found = [f"{self.url}: console error: {e}" for e in self.errors]
        if self.cards != expected_cards:
            found.append(f"{self.url}: shows {self.cards} example cards, expected {expected_cards}")
        return found


class HeadlessChromium:
    """A headless Chromium driven over the DevTools protocol pipe (a context manager).

        with HeadlessChromium() as browser:
            check = browser.open("file:///.../gallery.html", screenshot="gallery.png")
    """

    def __init__(self, executable: str | None = None, width: int = 1280, height: int = 1000, timeout: float = 60.0):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise BrowserError("no Chromium found: install it (apt-get install chromium) or set $CHROMIUM.")
        self.width, self.height, self.timeout = width, height, timeout
        self._next_id = 0
        self._buffer = b""
        self._events: list[dict] = []
        self.session: str | None = None

    # ---------------------------------------------------------------- process and pipe
    def __enter__(self) -> "HeadlessChromium":
        self._profile = tempfile.mkdtemp(prefix="mme-jd-chromium-")
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def use_pipe_fds() -> None:  # in the child: the protocol pipe must be fds 3 (in) and 4 (out)
            inbound = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
            outbound = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
            os.dup2(inbound, 3)
            os.dup2(outbound, 4)

        command = [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-pipe",
                   f"--window-size={self.width},{self.height}", "about:blank"]
        self._log = tempfile.TemporaryFile()
        # fds 3 and 4 are open here (the pipes just made took the lowest free numbers), so
        # pass_fds may name them: the child keeps them after use_pipe_fds and closes the rest
        self.process = subprocess.Popen(command, preexec_fn=use_pipe_fds, close_fds=True, pass_fds=(3, 4),
                                        stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        os.close(to_browser_read)
        os.close(from_browser_write)
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "DOM"):
                self.call(f"{domain}.enable", session=True)
            self.call("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                             "deviceScaleFactor": 1, "mobile": False}, session=True)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.process.poll() is None:
                try:
                    self.call("Browser.close", timeout=10)
                except (BrowserError, OSError):
                    pass
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()  # our own child only
                    self.process.wait(10)
        finally:
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._log.close()
            shutil.rmtree(self._profile, ignore_errors=True)

    def _browser_log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-2000:]

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, remaining))
            if not ready:
                raise BrowserError(f"Chromium did not answer within {self.timeout:.0f} s.")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium closed the DevTools pipe (exit {self.process.poll()}): "
                                   f"{self._browser_log()}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: bool = False,
             timeout: float | None = None) -> dict:
        """Send one DevTools command (to the page's session when `session`) and return its result;
        events that arrive meanwhile are kept for `wait_for` and the error check."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        try:
            os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            raise BrowserError(f"Chromium is not running (exit {self.process.poll()}): {self._browser_log()}") from None
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self._events.append(reply)

    def wait_for(self, event: str, after: int = 0) -> dict:
        """Wait for the first `event` of the page's session among the events from index `after`."""
        deadline = time.monotonic() + self.timeout
        index = after
        while True:
            while index < len(self._events):
                candidate = self._events[index]
                index += 1
                if candidate.get("method") == event and candidate.get("sessionId") == self.session:
                    return candidate
            self._events.append(self._receive(deadline))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (driving the page, not part of it)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"evaluating {expression!r}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    # ---------------------------------------------------------------- pages
    def _errors_since(self, start: int) -> list[str]:
        errors = []
        for event in self._events[start:]:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                errors.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append(params["entry"].get("text", ""))
        return errors

    def navigate(self, url: str) -> int:
        """Load `url` and wait for its load event; returns the event index the page starts at."""
        start = len(self._events)
        self.call("Page.navigate", {"url": url}, session=True)
        self.wait_for("Page.loadEventFired", start)
        return start

    def submit_and_wait(self, expression: str) -> int:
        """Run `expression` (which submits a form) and wait for the next page's load event."""
        start = len(self._events)
        self.evaluate(expression)
        self.wait_for("Page.loadEventFired", start)
        return start

    def set_file_input(self, selector: str, path: str) -> None:
        """Choose `path` in the file input matching `selector` (what a user's file dialog does)."""
        root = self.call("DOM.getDocument", session=True)["root"]["nodeId"]
        node = self.call("DOM.querySelector", {"nodeId": root, "selector": selector}, session=True)["nodeId"]
        if not node:
            raise BrowserError(f"no element matches {selector!r} on the page.")
        self.call("DOM.setFileInputFiles", {"nodeId": node, "files": [os.path.abspath(path)]}, session=True)

    def check(self, start: int, screenshot: str | os.PathLike | None = None) -> PageCheck:
        """Count the example cards, collect the errors since event `start`, take a screenshot."""
        time.sleep(0.2)  # let late console messages of the load arrive
        self.evaluate("1")  # and be read
        check = PageCheck(url=self.evaluate("location.href"),
                          cards=int(self.evaluate(f"document.querySelectorAll({json.dumps(CARD_SELECTOR)}).length")),
                          errors=self._errors_since(start))
        if screenshot is not None:
            data = self.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
            check.screenshot = str(save_screenshot(base64.b64decode(data), screenshot))
        return check

    def open(self, url: str, screenshot: str | os.PathLike | None = None) -> PageCheck:
        """Load `url`, then `check` it."""
        return self.check(self.navigate(url), screenshot)


def save_screenshot(png: bytes, path: str | os.PathLike, max_colours: int = 256) -> Path:
    """Save a PNG screenshot reduced to `max_colours` colours (small enough to commit)."""
    import io

    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=max_colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, format="PNG", optimize=True)
    return path


# ---------------------------------------------------------------------------- the check


def check_app(browser: HeadlessChromium, url: str, image_path: str, text: str, modes: tuple[str, ...],
              screenshot: str | os.PathLike | None) -> list[PageCheck]:
    """Open the app, expect its empty form (no card), upload `image_path` with `text` in the
    first mode, expect one card, then switch to each other mode (same upload) and expect one
    card in that mode (its strategy badge: the mode's name, or the router's choice in "mme_jd");
    the screenshot is of the last."""
    checks = [browser.open(url)]
    checks[-1].details["expected_cards"] = 0
    browser.set_file_input("input[name=image]", image_path)
    fill_text = f"document.querySelector('textarea[name=text]').value = {json.dumps(text)};"
    for position, mode in enumerate(modes):
        start = browser.submit_and_wait((fill_text if position == 0 else "")
                                        + f"document.querySelector('select[name=mode]').value = {json.dumps(mode)};"
                                        "document.querySelector('form').submit()")
        checks.append(browser.check(start, screenshot if position == len(modes) - 1 else None))
        shown = browser.evaluate("(document.querySelector('.badge.strategy') || {}).textContent || ''")
        checks[-1].details.update(expected_cards=1, mode=mode, strategy_badge=shown)
        expected = "router:" if mode == "mme_jd" else f"strategy: {mode}"
        if expected not in shown:
            checks[-1].errors.append(f"in mode {mode!r} the card's strategy reads {shown!r}")
        if position > 0 and browser.evaluate("document.querySelectorAll('figure img').length") != 2:
            checks[-1].errors.append(f"the switch to mode {mode!r} lost the uploaded image")
    return checks


def run_check(output_dir: str | os.PathLike, model: Any = None, data: str = "synthetic", rows: int = 12,
              split: str | None = None, cues: list[str] | None = None, data_dir: str | None = None,
              screenshots: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write a gallery and start the app, open both in headless Chromium, check them (module
    docstring). `model`: a saved MME-JD folder or a model with `.processor` (None: the tiny
    random model). Returns a summary; raises AssertionError listing every problem."""
    import threading

    from .app import make_server
    from .cues import parse_cues
    from .data.sources import load_split
    from .evaluation.gallery import write_gallery
    from .evaluation.run import load_model

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    screenshots = Path(screenshots) if screenshots is not None else output_dir
    if model is None:
        from .tiny import tiny_model

        model_object = tiny_model().eval()
    else:
        model_object, _ = load_model(model)  # a folder, or a model object with its processor
    dataset, split = load_split(data, split, data_dir, rows=rows)
    parsed_cues = parse_cues(cues) or None
    started = time.perf_counter()
    gallery = write_gallery(model_object, dataset, output_dir, rows=rows, split=split, cues=parsed_cues,
                            progress=False)
    expected = gallery["summary"]["rows"]
    seconds_gallery = time.perf_counter() - started

    # one upload for the app: the first inspected row's image (or a generated one) and text
    from .data.sources import resolve_split

    first = resolve_split(dataset, split)[0][0]
    upload = output_dir / "upload.png"
    if first.get("image") is not None:
        from .data.images import load_image

        load_image(first["image"]).save(upload)
    else:
        from PIL import Image

        Image.new("RGB", (64, 64), (90, 140, 200)).save(upload)
    server = make_server(model_object, host="127.0.0.1", port=0, cues=parsed_cues)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    problems: list[str] = []
    try:
        with HeadlessChromium() as browser:
            gallery_check = browser.open(Path(gallery["html"]).resolve().as_uri(), screenshots / "gallery.png")
            problems += gallery_check.problems(expected)
            app_checks = check_app(browser, f"http://{host}:{port}/", str(upload), first["text"],
                                   ("general", "mme_jd"), screenshots / "app.png")
            for check in app_checks:
                problems += check.problems(check.details["expected_cards"])
    finally:
        server.shutdown()
        server.server_close()
    summary = {"gallery": {"file": gallery["html"], "cards": gallery_check.cards, "expected": expected,
                           "errors": gallery_check.errors, "screenshot": gallery_check.screenshot,
                           "seconds_to_write": round(seconds_gallery, 1)},
               "app": [{"url": c.url, "cards": c.cards, "errors": c.errors, "screenshot": c.screenshot, **c.details}
                       for c in app_checks],
               "problems": problems}
    if problems:
        raise AssertionError("the browser check failed:\n" + "\n".join(problems))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mme_jd.browser_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="inspect_check", help="where the gallery, the upload and the "
                                                                      "screenshots go (default: %(default)s)")
    parser.add_argument("--model", default=None, help="a saved MME-JD folder (default: the tiny random model)")
    parser.add_argument("--data", default="synthetic", help="as for mme-jd inspect (default: %(default)s)")
    parser.add_argument("--split", default=None, help="split (default: test_balanced for synthetic, else test)")
    parser.add_argument("--rows", type=int, default=12, help="rows in the gallery (default: %(default)s)")
    parser.add_argument("--cue", action="append", default=None, help="a declared cue, as for mme-jd inspect")
    parser.add_argument("--data-dir", default=None, help="folder of the real datasets (default: ../shared/data)")
    parser.add_argument("--screenshots", default=None, help="where gallery.png and app.png go (default: "
                                                            "the output dir)")
    args = parser.parse_args(argv)
    if find_chromium() is None:
        print("browser check: no Chromium found; install it (apt-get install chromium) or set $CHROMIUM.",
              file=sys.stderr)
        return 2
    try:
        summary = run_check(args.output_dir, args.model, args.data, args.rows, args.split, args.cue, args.data_dir,
                            args.screenshots)
    except AssertionError as error:
        print(error, file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1))
    print(f"browser check passed: gallery {summary['gallery']['cards']} cards, app "
          f"{[c['cards'] for c in summary['app']]} cards, no console errors", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
