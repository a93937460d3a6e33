"""The screen over every message of the shared corpus (../shared/corpus, never copied here).

Checks: no exception on any file; every ``bounce`` is a BOUNCE and every ``autoreply``
an AUTOREPLY; complaint reports, read receipts and success DSNs are IGNORED; no reply
is taken for automatic mail; flufl.bounce's own expected addresses come out exactly.
Where the corpus label is debatable the file is listed below with the reason, and the
test checks our verdict for it instead of skipping it.

Skipped when the corpus is absent. ``python bench/screening_report.py`` prints the table.
"""

from __future__ import annotations

import csv
import email
import email.policy
import traceback
from pathlib import Path

import pytest

from service.core.model import Kind, Screening
from service.core.screening import screen

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"

pytestmark = [
    pytest.mark.corpus,
    pytest.mark.skipif(not (CORPUS / "index.tsv").is_file(), reason="../shared/corpus absent"),
]

# path -> (our verdict, why the corpus label is debatable)
DEBATABLE: dict[str, tuple[Kind | None, str]] = {
    "bounce_email/tests/bounces/bounce-auto-respond.txt": (
        Kind.IGNORED,
        "an ARF abuse report (report-type=feedback-report), not a delivery "
        "failure; upstream bounce_email calls every report a bounce",
    ),
    "perl-Mail-DeliveryStatus-BounceParser/t/corpus/spam-bogus-email-in-report.msg": (
        None,
        "plain spam: upstream t/spam-bogus-email-in-report.t asserts *no* bounce report",
    ),
    "perl-Mail-DeliveryStatus-BounceParser/t/corpus/spam-lots-of-bogus-addresses.msg": (
        None,
        "plain spam: upstream t/spam-lots-of-bogus-addresses.t asserts no bounce report",
    ),
    "perl-Mail-DeliveryStatus-BounceParser/t/corpus/spam-with-badly-parsed-email.msg": (
        None,
        "plain spam: upstream t/spam-with-badly-parsed-email.t asserts no report",
    ),
    "perl-Mail-DeliveryStatus-BounceParser/t/corpus/spam-with-image.msg": (
        None,
        "plain spam: upstream t/spam-with-image.t asserts no bounce report",
    ),
    "sisimai-set-of-emails/maildir/bsd/lhost-sendmail-14.eml": (
        None,
        "a person forwarding a bounce ('Fwd: Returned mail', 'Forward the message.'): "
        "the DSN is quoted, the message itself is human-written",
    ),
    "perl-Mail-DeliveryStatus-BounceParser/t/corpus/whitelist.msg": (
        Kind.BOUNCE,
        "a genuine Postfix DSN (Action: failed, 5.0.0): the remote server "
        "refused our server until its operator confirms it; not a challenge to the sender",
    ),
    "bounce_email/tests/non_bounces/tt_1234241664.txt": (
        None,
        "a one-off apology mailing ('please ignore this e-mail'): no automatic marker "
        "and not sent in reply to anything; upstream only asserts 'not a bounce'",
    ),
    "ruby-mail/spec/fixtures/emails/mime_emails/raw_email_with_mimepart_without_content_type.eml": (
        Kind.BOUNCE,
        "a real Sendmail delay DSN (Action: delayed, 4.5.0) that upstream uses as a MIME edge case",
    ),
    "sisimai-set-of-emails/maildir/not/rb-issue-368-bug.eml": (
        Kind.BOUNCE,
        "a postmaster's 'automatic bounce notification' (reject reason: Mailbox "
        "full); sisimai keeps it as a parser regression sample",
    ),
    "sisimai-set-of-emails/maildir/bsd/arf-26.eml": (
        None,
        "Apple Mail's one-click unsubscribe request, not a complaint report: it must "
        "reach the reply stage so the opt-out is honoured",
    ),
}


def _rows() -> list[dict[str, str]]:
    with (CORPUS / "index.tsv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="module")
def verdicts() -> dict[str, tuple[dict[str, str], Screening | str | None]]:
    """path -> (index row, screen verdict or the traceback text if anything raised)."""
    out: dict[str, tuple[dict[str, str], Screening | str | None]] = {}
    for row in _rows():
        raw = (CORPUS / row["path"]).read_bytes()
        try:
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            got: Screening | str | None = screen(msg, raw)
        except Exception:
            got = traceback.format_exc()
        out[row["path"]] = (row, got)
    return out


def _kind(got: Screening | str | None) -> Kind | str | None:
    return got if isinstance(got, str) or got is None else got.kind


def test_index_lists_every_message_and_nothing_raises(verdicts) -> None:
    assert len(verdicts) >= 1378
    missing = [p for p in verdicts if not (CORPUS / p).is_file()]
    assert missing == []
    raised = {p: got for p, (_, got) in verdicts.items() if isinstance(got, str)}
    assert raised == {}
    for _, got in verdicts.values():
        if isinstance(got, Screening):
            assert got.reason and "\n" not in got.reason
            assert all(a == a.lower() and "@" in a for a in got.failed)


def test_debatable_labels_get_our_verdict(verdicts) -> None:
    wrong = {
        p: (_kind(verdicts[p][1]), want)
        for p, (want, _) in DEBATABLE.items()
        if _kind(verdicts[p][1]) != want
    }
    assert wrong == {}


@pytest.mark.parametrize(
    ("label", "want"), [("bounce", Kind.BOUNCE), ("autoreply", Kind.AUTOREPLY)]
)
def test_every_bounce_and_autoreply_is_recognised(verdicts, label: str, want: Kind) -> None:
    missed = {
        p: getattr(got, "reason", got)
        for p, (row, got) in verdicts.items()
        if row["kind"] == label and p not in DEBATABLE and _kind(got) is not want
    }
    assert missed == {}


def test_delay_warnings_are_soft(verdicts) -> None:
    # flufl.bounce's temporary-failure samples, flanker's and the Perl set's delay warnings
    soft = [
        p
        for p, (row, _) in verdicts.items()
        if row["kind"] == "bounce" and "delay" in row["notes"].lower()
    ]
    assert len(soft) >= 14
    hard = [
        p for p in soft if not isinstance(verdicts[p][1], Screening) or verdicts[p][1].permanent
    ]  # type: ignore[union-attr]
    assert hard == []


def test_complaints_receipts_and_success_dsns_are_ignored(verdicts) -> None:
    wanted = ("ARF", "complaint", "read receipt", "disposition notification", "successful delivery")
    wrong = {
        p: getattr(got, "reason", got)
        for p, (row, got) in verdicts.items()
        if row["kind"] == "other"
        and p not in DEBATABLE
        and any(w.lower() in row["notes"].lower() for w in wanted)
        and _kind(got) is not Kind.IGNORED
    }
    assert wrong == {}


def test_other_mail_is_never_a_bounce_or_autoreply(verdicts) -> None:
    wrong = {
        p: got.reason
        for p, (row, got) in verdicts.items()
        if row["kind"] == "other"
        and p not in DEBATABLE
        and isinstance(got, Screening)
        and got.kind in (Kind.BOUNCE, Kind.AUTOREPLY)
    }
    assert wrong == {}


def test_replies_pass_as_human(verdicts) -> None:
    flagged = {
        p: got.reason
        for p, (row, got) in verdicts.items()
        if row["kind"] == "reply" and isinstance(got, Screening)
    }
    assert flagged == {}


def test_flufl_bounce_expected_addresses(verdicts) -> None:
    """flufl.bounce's own test table: the failed recipients we report are exactly its."""
    expected: dict[str, set[str]] = {}
    with (CORPUS / "flufl.bounce" / "expected.tsv").open(encoding="utf-8") as fh:
        for line in fh:
            cells = line.rstrip("\n").split("\t")
            if line.startswith("#") or cells[0] == "file" or len(cells) < 4 or not cells[3]:
                continue
            expected.setdefault(cells[0], set()).update(
                a.strip().lower() for a in cells[3].split(",")
            )
    assert len(expected) > 100
    wrong = {}
    for name, addresses in expected.items():
        got = verdicts[f"flufl.bounce/tests/data/{name}"][1]
        if not isinstance(got, Screening) or set(got.failed) != addresses:
            wrong[name] = (addresses, getattr(got, "failed", got))
    assert wrong == {}
