"""The answer alone (service/core/quote.py) on the quote-cut development set.

`tests/data/quotecut/dev.jsonl` was written for this (greetings, sign-offs, signatures, legal
footers, banners and mobile footers in five languages); it is the set the rules were tuned
on, so it guards against regressions. The blind figure is in bench/README.md (check3).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.core.quote import answer_of
from service.core.replytext import strip_reply_text

DEV = [json.loads(line) for line in
       (Path(__file__).parents[1] / "data" / "quotecut" / "dev.jsonl").open(encoding="utf-8")]


def _norm(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("row", DEV, ids=[r["id"] for r in DEV])
def test_the_answer_is_cut_as_a_careful_person_would(row: dict) -> None:
    assert _norm(answer_of(strip_reply_text(row["body"]))) == _norm(row["quote"])


@pytest.mark.parametrize("text", ["Thanks!", "👍", "Best", "Jürgen", "Hi"])
def test_never_empty(text: str) -> None:
    assert answer_of(text) == text
