"""The summaries as people see them: rendered in headless Chromium at phone and desktop widths.

Checks that nothing sticks out of the screen, that the 12-month chart is drawn (each coloured
segment has a real size and sits inside the screen) and that no image, script or SVG is needed.
Screenshots are kept under tests/artifacts/ (git-ignored; CI keeps them as artifacts).
Skipped when Chromium or Playwright is missing, unless INTROLOOP_REQUIRE_SERVERS=1.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from service import browser as br
from service.app import FrozenClock, build_loop
from service.loop import Loop

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
SIZES = {"phone": br.PHONE, "desktop": br.DESKTOP}

# Where each coloured segment of the chart is, and how big (the chart is `table.chart`).
_CHART_PROBE = """() => {
  const chart = document.querySelector('table.chart');
  if (!chart) return null;
  const box = chart.getBoundingClientRect();
  const segments = Array.from(chart.querySelectorAll('td[bgcolor]')).map(td => {
    const r = td.getBoundingClientRect();
    return {color: td.getAttribute('bgcolor'), left: r.left, right: r.right,
            width: r.width, height: r.height,
            shown: getComputedStyle(td).visibility !== 'hidden'};
  });
  return {left: box.left, right: box.right, width: box.width, height: box.height, segments,
          labels: chart.innerText};
}"""


def _seeded() -> ModuleType:
    """tests/test_summary.py (seed data and settings), loaded by path: tests is no package."""
    name = "introloop_test_summary_seed"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(
            "test_summary.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def chromium() -> Iterator[br.Browser]:
    missing = br.available()
    if missing:
        if os.environ.get("INTROLOOP_REQUIRE_SERVERS") == "1":
            pytest.fail(f"INTROLOOP_REQUIRE_SERVERS=1 but {missing}", pytrace=False)
        pytest.skip(missing)
    with br.browser() as b:
        yield b


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """HTML of Alice's October, the network's October, and a quiet month."""
    seed = _seeded()
    tmp = tmp_path_factory.mktemp("render")
    loop: Loop = build_loop(seed.make_settings(tmp / "a", summary_empty="send"),
                            clock=FrozenClock(seed.at(2026, 10, 28)))
    seed.seed(loop)
    (alice,) = loop.summary_previews(seed.OCT, member="alice@example.com")
    (network,) = loop.summary_previews(seed.OCT, network=True)
    (quiet,) = loop.summary_previews(seed.OCT, member="gina@example.com")
    return {"member": alice.rendered.html, "network": network.rendered.html,
            "quiet": quiet.rendered.html}


def _chart(b: br.Browser, html: str, size: tuple[int, int]) -> dict[str, Any] | None:
    # Browser has layout() and screenshot(); the chart needs its own probe on the same page
    page = b._page(html, size)
    try:
        return page.evaluate(_CHART_PROBE)
    finally:
        page.close()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("which", ["member", "network", "quiet"])
def test_summary_fits_and_the_chart_is_drawn(chromium: br.Browser, pages: dict[str, str],
                                             which: str, size: str) -> None:
    html = pages[which]
    width, _ = SIZES[size]
    shot = chromium.screenshot(html, ARTIFACTS / f"summary-{which}-{size}.png", SIZES[size])
    assert shot.stat().st_size > 10_000
    layout = chromium.layout(html, SIZES[size])
    assert layout.fits, (layout.scroll_width, layout.overflowing)
    assert "<img" not in html and "<svg" not in html.lower() and "<script" not in html.lower()
    chart = _chart(chromium, html, SIZES[size])
    if which == "quiet":  # nothing to draw: no chart at all
        assert chart is None and "quiet month" in layout.text
        return
    assert chart is not None
    assert chart["left"] >= 0 and chart["right"] <= width
    assert chart["width"] > 250 and chart["height"] > 80
    coloured = [s for s in chart["segments"] if s["color"] != "#8c959f"]
    baselines = [s for s in chart["segments"] if s["color"] == "#8c959f"]
    assert len(baselines) == 12  # one per month, drawn even for empty months
    # Oct: worked, did not, mixed, waiting; Sep: waiting; Aug: worked + did not; Jun, Jul
    assert {s["color"] for s in coloured} == {"#0b6e4f", "#cf8e6d", "#d4a72c", "#afb8c1"}
    for s in coloured:
        assert s["shown"] and s["width"] >= 8 and s["height"] >= 3, s
        assert s["left"] >= 0 and s["right"] <= width
    for month in ("Nov", "Jun", "Oct"):
        assert month in chart["labels"]
    assert "worked" in layout.text and "waiting" in layout.text  # the legend
