"""Every message's HTML as people see it: headless Chromium at phone and desktop widths.

Nothing may stick out of the screen or need sideways scrolling, no image may be broken, and
the text that matters must be there. Screenshots are kept under tests/artifacts/rendering/
(ignored by git) so CI can keep them as artifacts. Without Chromium or Playwright the tests
are skipped, unless INTROLOOP_REQUIRE_SERVERS=1 (CI), where that is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service import browser as br
from service.adapters.templates import Renderer, TemplateError
from service.preview import SAMPLES, render_sample

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "rendering"

# What must be readable in each message (besides the recipient's name)
KEY_TEXT: dict[str, list[str]] = {
    "feedback_request": ["How did it go?", "It went well", "Not a fit", "Not yet",
                         "Stop asking me", "shared with Alice", "Carol Nguyễn"],
    "reminder": ["A quick nudge", "It went well", "Not yet", "Stop asking me"],
    "recheck": ["we promised to check back", "It went well", "Stop asking me"],
    "combined_request": ["1. Carol Nguyễn", "2. Erin O'Brien", "dev@harbour.example",
                         "It went well", "Stop asking me"],
    "pending_ack": ["We’ll check back on", "stop asking me"],
    "thanks_positive": ["great to hear", "Alice"],
    "thanks_negative": ["honest answer", "no blame"],
    "optout_confirmation": ["will not email you again", "not what I meant"],
    "appreciation": ["worked", "In their words", "first sprint starts next week"],
    "lessons": ["Not every referral lands", "Timeline", "Signals missed",
                "introduce you better", "not a fit right now"],
    "unclear_review": ["could not tell what they meant", "<b>what happens</b>", "positive",
                       "negative", "pending"],
    "monthly_summary": ["September 2026", "worked", "We met for coffee", "12 months"],
    "network_summary": ["September 2026", "Alice Martin", "introloop review", "bounced"],
    "intro_confirmation": ["Got it", "cancel"],
    "operator_alert": ["cannot sign in", "introloop auth google"],
    "set_aside_note": ["didn't record your intro", "as an attachment"],
}
GREETED = {"unclear_review": "Hi Operator", "network_summary": "Hello",
           "operator_alert": "Hello"}
REFERRER_MAIL = {"appreciation", "lessons", "monthly_summary", "intro_confirmation",
                 "set_aside_note"}


def _names() -> list[str]:
    return Renderer().names()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    missing = br.available()
    if missing:
        if os.environ.get("INTROLOOP_REQUIRE_SERVERS") == "1":
            pytest.fail(f"INTROLOOP_REQUIRE_SERVERS=1 but {missing}", pytrace=False)
        pytest.skip(missing)
    with br.browser() as b:
        yield b


@pytest.mark.parametrize("name", _names())
@pytest.mark.parametrize("size", [br.PHONE, br.DESKTOP], ids=["phone", "desktop"])
def test_every_template_renders_cleanly(chromium: Any, name: str, size: tuple[int, int]) -> None:
    try:
        _, _, html, _ = render_sample(Renderer(), name)
    except TemplateError as exc:
        if name not in SAMPLES:
            pytest.skip(f"{name}: no sample data in service/preview.py ({exc})")
        raise
    label = "phone" if size == br.PHONE else "desktop"
    chromium.screenshot(html, ARTIFACTS / f"{name}-{label}.png", size)
    layout = chromium.layout(html, size)
    assert layout.scroll_width <= layout.viewport, f"{name} scrolls sideways at {size[0]} px"
    assert not layout.overflowing, f"{name} at {size[0]} px: {layout.overflowing}"
    assert not layout.broken_images
    if name in KEY_TEXT:
        for phrase in KEY_TEXT[name]:
            assert phrase in layout.text, f"{name} at {size[0]} px lacks {phrase!r}"
        greeting = GREETED.get(name, "Hi Alice" if name in REFERRER_MAIL else "Hi José")
        assert greeting in layout.text


def test_every_template_of_ours_is_checked() -> None:
    assert set(KEY_TEXT) == set(SAMPLES)
