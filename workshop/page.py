"""Lesson 04's upload page in a real browser: Playwright driving Debian's chromium.

The browser checks (checks/test_05_page.py) and the guide's screenshot share
this. The screenshot, from the repository root:

  .venv/bin/python -m workshop.page docs/assets/page.png

starts lesson 04 (with the weights it finds: pretrained where they are
cached, else untrained, and the page says so), uploads the cat twice and
saves the page.
"""

from __future__ import annotations

import base64
import contextlib
import io
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

# Debian's package, or what other systems call it; Playwright's own browser
# download is never used (the workshop works offline).
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
LOOPBACK = "127.0.0.1"


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    return None


@dataclass
class Visit:
    """An open page, and what it did: every URL it asked for, every error it logged."""
    page: object
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    uploads: int = 0

    def upload(self, name: str, data: bytes, mime: str = "image/jpeg", timeout: float = 60) -> None:
        """Choose a file in the page's file input; return once the page has drawn (or refused) it."""
        self.uploads += 1
        self.page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])
        self.page.wait_for_selector(f"body[data-done='{self.uploads}']", state="attached",
                                    timeout=timeout * 1000)

    def set_opacity(self, value: float) -> None:
        self.page.eval_on_selector("#opacity", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }",
                                   str(value))

    def canvas(self) -> np.ndarray:
        """The canvas's pixels, RGB (toDataURL's PNG is lossless)."""
        url = self.page.eval_on_selector("#view", "c => c.toDataURL('image/png')")
        png = base64.b64decode(url.split(",", 1)[1])
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)

    def texts(self, selector: str) -> list[str]:
        return [t.strip() for t in self.page.locator(selector).all_inner_texts()]


@contextlib.contextmanager
def browser(executable: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable)
        try:
            yield launched
        finally:
            launched.close()


@contextlib.contextmanager
def visit(browser, url: str, width: int = 1000, height: int = 900):
    """Open url in a fresh context. A request to any host but 127.0.0.1 is recorded and refused."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    seen = Visit(page)

    def only_loopback(route):
        host = urlsplit(route.request.url).hostname
        return route.continue_() if host == LOOPBACK else route.abort()

    context.route("**/*", only_loopback)
    page.on("request", lambda r: seen.requests.append(r.url))
    page.on("console", lambda m: m.type == "error" and seen.console_errors.append(m.text))
    page.on("pageerror", lambda e: seen.console_errors.append(str(e)))
    try:
        page.goto(url)
        page.wait_for_load_state("load")
        yield seen
    finally:
        context.close()


def screenshot(out: Path, lessons: Path | None = None) -> Path:
    """Lesson 04 running, the cat uploaded twice, the page saved as a PNG."""
    from . import images
    from .harness import lesson_server
    from .lessons import REFERENCE

    executable = find_chromium()
    if executable is None:
        raise SystemExit("chromium is not installed (Debian: apt-get install chromium)")
    photo = images.photo_bytes()
    with lesson_server(lessons or REFERENCE, "04_nginx") as server, browser(executable) as b:
        with visit(b, server.url + "/") as seen:
            seen.upload("chelsea.jpg", photo)
            seen.upload("chelsea.jpg", photo)
            out.parent.mkdir(parents=True, exist_ok=True)
            seen.page.screenshot(path=str(out), full_page=True)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(screenshot(Path(sys.argv[1])))
