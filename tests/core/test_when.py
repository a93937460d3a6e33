"""Dates named in "not yet" answers (service/core/when.py), read on Thursday 8 October 2026."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from service.core.when import named_date

TODAY = date(2026, 10, 8)


@pytest.mark.parametrize(("text", "want"), [
    ("We should know by mid-April.", "2027-04-15"),
    ("Meeting on the 12th.", "2026-10-12"),
    ("We meet next week", "2026-10-16"),
    ("Let's talk after the summer", "2027-09-01"),
    ("Board decides on 20 October", "2026-10-20"),
    ("Wir treffen uns nächste Woche", "2026-10-16"),
    ("Entscheidung Anfang November", "2026-11-10"),
    ("Termin am 15. Oktober", "2026-10-15"),
    ("réponse fin du mois", "2026-10-31"),
    ("rendez-vous le 12", "2026-10-12"),
    ("lo sabremos la semana que viene", "2026-10-16"),
    ("reunión el 3 de noviembre", "2026-11-03"),
    ("we praten na de zomer verder", "2027-09-01"),
    ("in two weeks", "2026-10-22"),
    ("by the end of Q1", "2027-03-31"),
    ("I'll know tomorrow", "2026-10-09"),
    ("in 3 Wochen", "2026-10-29"),
    ("dans deux semaines", "2026-10-22"),
    ("a mediados de diciembre", "2026-12-15"),
    ("half november", "2026-11-15"),
    ("après les fêtes", "2027-01-10"),
    ("Monday week", "2026-10-19"),
    ("Hablamos el lunes 19.", "2026-10-19"),
    ("early next year", "2027-01-31"),
])
def test_named_dates(text: str, want: str) -> None:
    assert named_date(text, TODAY) == date.fromisoformat(want)


@pytest.mark.parametrize("text", [
    "not yet", "We met last Tuesday, decision pending", "we have 12 people on the team",
    "Q3 numbers look good so far", "two weeks ago we spoke", "la semaine dernière",
])
def test_no_date(text: str) -> None:
    assert named_date(text, TODAY) is None


def test_training_replies_with_a_labelled_date() -> None:
    """The pending training replies that carry `recheck_after` (written for training, so
    tuned on): at least 90 % exact."""
    path = Path(__file__).parents[2] / "config" / "classifier" / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    dated = [r for r in rows if r.get("recheck_after")]
    exact = sum(named_date(r["text"], TODAY) == date.fromisoformat(r["recheck_after"])
                for r in dated)
    assert len(dated) >= 140 and exact / len(dated) >= 0.90
