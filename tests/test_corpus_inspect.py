"""`introloop inspect --json` over every message of the shared corpus (../shared/corpus, read at
test time, never copied here; skipped when absent).

Run with INTROLOOP_ALLOW_SENDERS=* (everyone may introduce): the worst case for capture, where
only the automatic-mail screen and the intro rules keep a message from becoming a referral.
Checks: no crash and no traceback on any file; every file gets a kind and a one-line reason;
no corpus bounce, auto-reply or reply is taken for an intro; with the shipped default (no
members, no allow list) nothing at all is. `python bench/corpus_inspect_report.py` prints the
corpus kind x our kind tables.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from service.config import load_settings
from service.inspect import inspect_files

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
KINDS = {"intro", "reply", "autoreply", "bounce", "ignored", "rejected"}

pytestmark = [
    pytest.mark.corpus,
    pytest.mark.skipif(not (CORPUS / "index.tsv").is_file(), reason="../shared/corpus absent"),
]


def _rows() -> list[dict[str, str]]:
    with (CORPUS / "index.tsv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _settings(tmp: Path, allow: str):
    return load_settings(None, {
        "address": "referrals@network.example", "network_name": "Corpus", "data_dir": tmp,
        "database_url": None, "allow_senders": allow, "secret": "corpus-test-secret-0123456789",
    })


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[dict[str, str], dict]]:
    """(index row, inspect's JSON object) for every corpus message, everyone allowed."""
    rows = _rows()
    settings = _settings(tmp_path_factory.mktemp("corpus"), "*")
    return list(zip(rows, inspect_files(settings, [CORPUS / r["path"] for r in rows]),
                    strict=True))


def test_every_file_gets_a_kind_and_a_clean_reason(results) -> None:
    assert len(results) >= 1378
    bad = {
        row["path"]: (res["kind"], res["reason"])
        for row, res in results
        if res["kind"] not in KINDS
        or not res["reason"].strip()
        or "\n" in res["reason"]
        or "Traceback" in res["reason"]
        or "could not be read" in res["reason"]  # inspect's own catch-all for a reader crash
    }
    assert bad == {}


@pytest.mark.parametrize("label", ["bounce", "autoreply", "reply"])
def test_no_bounce_autoreply_or_reply_is_taken_for_an_intro(results, label: str) -> None:
    taken = {row["path"]: res["reason"] for row, res in results
             if row["kind"] == label and res["kind"] == "intro"}
    assert taken == {}


def test_intros_name_two_to_eight_lowercased_people(results) -> None:
    for row, res in results:
        if res["kind"] == "intro":
            emails = [p["email"] for p in res["parties"]]
            assert 2 <= len(emails) <= 8, row["path"]
            assert all(e == e.lower() and "@" in e for e in emails)
            assert res["referrer"] not in emails


def test_nobody_introduces_without_members_or_allow_list(results, tmp_path: Path) -> None:
    # only the files that read as intros with everyone allowed can become one: re-run those
    shaped = [row for row, res in results if res["kind"] == "intro"]
    assert shaped, "the corpus should hold some intro-shaped mail"
    settings = _settings(tmp_path, "")
    again = list(inspect_files(settings, [CORPUS / r["path"] for r in shaped]))
    assert {r["kind"] for r in again} == {"rejected"}
    assert all("not a member" in r["reason"] for r in again)
