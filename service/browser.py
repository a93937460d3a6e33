"""Headless Chromium for seeing emails as people see them: screenshots and layout checks.

Used by `introloop preview` and the rendering tests. Playwright (Python) drives the system's
Chromium (Debian's `chromium` package): Playwright's own browser download is not needed and
does not work offline. Both are optional: `available()` says whether they are here.
Chromium's own `--screenshot` CLI cannot be used instead: headless windows are at least
500 px wide, so a phone-width rendering needs the viewport emulation Playwright provides.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PHONE = (375, 812)
DESKTOP = (1280, 900)
# Without these flags Chromium tries to reach Google's servers at every start, which a closed
# network refuses noisily; as root it also needs --no-sandbox.
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]

# Measures the rendered page: document width against the viewport, every element that sticks
# out, images that did not load, and the visible text.
_PROBE = """() => {
  const vw = window.innerWidth, wide = [];
  document.querySelectorAll('body *').forEach(el => {
    const r = el.getBoundingClientRect();
    if (r.width > 0 && (r.right > vw + 1 || r.left < -1)) {
      wide.push(el.tagName.toLowerCase() + (el.className ? '.' + el.className : '') +
                ' ' + Math.round(r.left) + '..' + Math.round(r.right));
    }
  });
  const broken = Array.from(document.images)
    .filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src);
  return {viewport: vw, scroll_width: document.documentElement.scrollWidth,
          overflowing: wide.slice(0, 20), broken_images: broken,
          text: document.body ? document.body.innerText : ''};
}"""


class BrowserMissing(RuntimeError):
    """Chromium or Playwright is not installed."""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary, or None (INTROLOOP_CHROMIUM overrides)."""
    explicit = os.environ.get("INTROLOOP_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def available() -> str | None:
    """None when screenshots can be taken, else what is missing (one line)."""
    if find_chromium() is None:
        return "Chromium is not installed (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install 'introloop[browser]')"
    return None


@dataclass(frozen=True)
class Layout:
    """How a page fits a viewport."""

    viewport: int
    scroll_width: int
    overflowing: list[str]
    broken_images: list[str]
    text: str

    @property
    def fits(self) -> bool:
        """Nothing wider than the screen, no horizontal scrolling, no broken image."""
        return self.scroll_width <= self.viewport and not self.overflowing \
            and not self.broken_images


class Browser:
    """One Chromium process, reused for many pages."""

    def __init__(self, page_factory: Any):
        self._new_page = page_factory

    def _page(self, html: str, size: tuple[int, int]) -> Any:
        page = self._new_page(viewport={"width": size[0], "height": size[1]})
        # emails must not fetch anything: block every request that is not inline
        page.route("**/*", lambda route: route.abort()
                   if not route.request.url.startswith(("data:", "about:")) else
                   route.continue_())
        page.set_content(html, wait_until="load")
        return page

    def layout(self, html: str, size: tuple[int, int] = PHONE) -> Layout:
        """Render `html` at `size` and measure it."""
        page = self._page(html, size)
        try:
            return Layout(**page.evaluate(_PROBE))
        finally:
            page.close()

    def screenshot(self, html: str, png: Path, size: tuple[int, int] = DESKTOP) -> Path:
        """Render `html` at `size` and save a full-page PNG."""
        png = Path(png)
        png.parent.mkdir(parents=True, exist_ok=True)
        page = self._page(html, size)
        try:
            page.screenshot(path=str(png), full_page=True)
        finally:
            page.close()
        return png


@contextmanager
def browser() -> Iterator[Browser]:
    """A running headless Chromium; raises BrowserMissing when it cannot start."""
    missing = available()
    if missing:
        raise BrowserMissing(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=find_chromium(), args=ARGS)
        try:
            yield Browser(chromium.new_page)
        finally:
            chromium.close()
