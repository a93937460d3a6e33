"""The pure summary core: months and due times across timezones and DST, answers, rates,
quotes, lessons and the chart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from service.core.model import Outcome, Person
from service.core.summary import (
    DeliveryRecord,
    Month,
    PartyRecord,
    Quote,
    ReferralRecord,
    SuppressionRecord,
    UnclearRecord,
    due_month,
    lessons_from,
    may_quote,
    member_summary,
    network_summary,
    one_line,
)

UTCZ = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
AUCKLAND = ZoneInfo("Pacific/Auckland")
LA = ZoneInfo("America/Los_Angeles")
NEW_YORK = ZoneInfo("America/New_York")
ALICE = Person("alice@example.com", "Alice Martin")
OCT = Month(2026, 10)


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def party(
    email: str,
    outcome: Outcome | None = None,
    when: datetime | None = None,
    quote: str = "",
    status: str | None = None,
    asked: datetime | None = None,
    shareable: bool = True,
) -> PartyRecord:
    name = email.split("@")[0].title()
    return PartyRecord(
        Person(email, name),
        status or ("answered" if outcome else "requested"),
        outcome,
        when,
        quote,
        shareable,
        asked,
    )


def ref(
    n: int, when: datetime, *parties: PartyRecord, referrer: Person = ALICE, status: str = "open"
) -> ReferralRecord:
    return ReferralRecord(n, referrer, when, f"Intro {n}", tuple(parties), status)


# ------------------------------------------------------------------------------ months


def test_month_arithmetic_and_labels() -> None:
    assert (
        OCT.back(0) == OCT and OCT.back(10) == Month(2025, 12) and OCT.back(22) == Month(2024, 12)
    )
    assert Month(2026, 1).previous() == Month(2025, 12) and Month(2026, 12).next() == Month(2027, 1)
    assert OCT.label == "October 2026" and OCT.short == "Oct" and str(OCT) == "2026-10"
    for bad in ("2026-13", "October", "2026/10", ""):
        with pytest.raises(ValueError, match="YYYY-MM"):
            Month.parse(bad)


def test_dst_month_in_berlin_ends_at_the_local_midnight() -> None:
    # summer time ends on 25 October 2026: October starts at 22:00 UTC and ends at 23:00 UTC
    assert OCT.start(BERLIN) == at(2026, 9, 30, 22) and OCT.end(BERLIN) == at(2026, 10, 31, 23)
    assert OCT.contains(at(2026, 10, 31, 22, 30), BERLIN)
    assert not OCT.contains(at(2026, 10, 31, 23, 30), BERLIN)  # already 00:30 on 1 November
    assert OCT.summary_due_at(BERLIN, 9) == at(2026, 11, 1, 8)  # 09:00 CET
    assert due_month(at(2026, 11, 1, 7, 59), BERLIN, 9) == Month(2026, 9)
    assert due_month(at(2026, 11, 1, 8, 0), BERLIN, 9) == OCT


def test_dst_month_in_new_york() -> None:
    march = Month(2026, 3)  # summer time starts on 8 March 2026
    assert march.start(NEW_YORK) == at(2026, 3, 1, 5) and march.end(NEW_YORK) == at(2026, 4, 1, 4)
    assert march.summary_due_at(NEW_YORK, 9) == at(2026, 4, 1, 13)  # 09:00 EDT
    assert due_month(at(2026, 4, 1, 12, 59), NEW_YORK, 9) == Month(2026, 2)
    assert due_month(at(2026, 4, 1, 13, 0), NEW_YORK, 9) == march


def test_the_first_starts_a_day_earlier_in_auckland() -> None:
    # 1 November 09:00 in Auckland (NZDT, +13) is 31 October 20:00 UTC
    assert OCT.summary_due_at(AUCKLAND, 9) == at(2026, 10, 31, 20)
    assert due_month(at(2026, 10, 31, 20), AUCKLAND, 9) == OCT
    assert due_month(at(2026, 10, 31, 20), UTCZ, 9) == Month(2026, 9)
    # an intro on 31 October 12:00 UTC is already November in Auckland
    assert Month.of(at(2026, 10, 31, 12), AUCKLAND) == Month(2026, 11)


def test_late_on_the_31st_in_los_angeles_is_still_october() -> None:
    moment = at(2026, 11, 1, 3)  # 31 October 20:00 PDT
    assert OCT.contains(moment, LA) and not OCT.contains(moment, UTCZ)
    # summer time ends in the night to Sunday 1 November 2026: 09:00 is PST (-8), 17:00 UTC
    assert OCT.summary_due_at(LA, 9) == at(2026, 11, 1, 17)
    assert due_month(at(2026, 11, 1, 16, 59), LA, 9) == Month(2026, 9)
    assert due_month(at(2026, 11, 1, 17), LA, 9) == OCT


def test_a_missed_first_is_still_due_until_the_next_one() -> None:
    assert due_month(at(2026, 11, 20), UTCZ, 9) == OCT
    assert due_month(at(2026, 12, 1, 8), UTCZ, 9) == OCT  # not skipped before the next hour
    assert due_month(at(2026, 12, 1, 9), UTCZ, 9) == Month(2026, 11)


# ------------------------------------------------------------------------------ quotes


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "Hi Alice,\nIt went really well, we signed a contract!\n\nThanks,\nBob Chen",
            "It went really well, we signed a contract!",
        ),
        ("Thanks for the intro, it was great.", "Thanks for the intro, it was great."),
        ("Hello, it went great!\nWe signed.", "Hello, it went great! We signed."),
        (
            "Great   call.\n\n\tWe are\nworking together now.",
            "Great call. We are working together now.",
        ),
        ("“Brilliant.”", "Brilliant."),
    ],
)
def test_one_line_flattens_and_trims(raw: str, expected: str) -> None:
    assert one_line(raw) == expected


def test_one_line_shortens_by_sentence_then_by_word() -> None:
    long = (
        "We met twice. The first call was about pricing and the second about timelines; in "
        "the end there was no budget this year, so it did not work out. Lovely person "
        "though, and maybe next year with a bigger scope we will try again."
    )
    short = one_line(long, 160)
    assert short.endswith("did not work out.") and len(short) <= 160
    words = one_line("word " * 100, 60)
    assert words.endswith("…") and len(words) <= 60 and "wor…" not in words
    assert one_line("a\u202eb\u0000c\u200bd") == "abcd"  # no bidi overrides, no controls


def test_discretion_is_respected() -> None:
    for text in (
        "Please keep this between us: no budget.",
        "Confidential: it failed.",
        "Don't share this, but they were rude.",
        "Das ist vertraulich.",
    ):
        assert not may_quote(text), text
    assert may_quote("It went well, feel free to share!")


# ------------------------------------------------------------------------------ lessons


def q(who: str, text: str) -> tuple[Quote, str]:
    return Quote(who, one_line(text), 1), text


def test_lessons_find_themes_without_blame() -> None:
    lessons = lessons_from(
        [
            q("Carol", "Nice guy but no budget this year."),
            q("Dan", "Too expensive for us right now."),
            q("Eve", "We already work with an agency for this."),
        ]
    )
    assert [x.title for x in lessons] == ["Budget got in the way", "They were already covered"]
    assert [x.who for x in lessons[0].quotes] == ["Carol", "Dan"]
    for lesson in lessons:
        assert "you should" not in lesson.text.lower() and "fault" not in lesson.text.lower()


def test_lessons_fall_back_to_a_general_one_and_need_answers() -> None:
    assert lessons_from([]) == ()
    (general,) = lessons_from([q("Bob", "It did not work out with Carol.")])
    assert general.title == "Every introduction teaches something"
    assert (
        len(
            lessons_from(
                [q("A", "no budget"), q("B", "bad timing, next year"), q("C", "wrong location")]
            )
        )
        == 2
    )


# ------------------------------------------------------------------------------ member


def october_world() -> tuple[list[ReferralRecord], list[ReferralRecord]]:
    bob, carol = "bob@acme.example", "carol@studio.example"
    refs = [
        # both answered, one quote each; a decisive answer this month
        ref(
            1,
            at(2026, 10, 5),
            party(
                bob,
                Outcome.POSITIVE,
                at(2026, 10, 9),
                "Hi Alice,\nWe signed a contract!\nThanks,\nBob",
            ),
            party(carol, Outcome.POSITIVE, at(2026, 10, 10), "Great match, thank you."),
        ),
        # the sides disagree: shown as such, not a failure
        ref(
            2,
            at(2026, 10, 6),
            party("dan@x.example", Outcome.POSITIVE, at(2026, 10, 12), "Useful chat."),
            party("eve@y.example", Outcome.NEGATIVE, at(2026, 10, 12), "Not a fit for our stage."),
        ),
        # did not work, with a budget reason; the other side has not answered yet
        ref(
            3,
            at(2026, 10, 7),
            party("fay@z.example", Outcome.NEGATIVE, at(2026, 10, 14), "No budget this year."),
            party("gus@z.example"),
        ),
        # the answer came after the month: October shows "no answer yet"
        ref(
            4,
            at(2026, 10, 20),
            party("hal@h.example", Outcome.POSITIVE, at(2026, 11, 2), "Late but great"),
            party("ivy@i.example", Outcome.PENDING, at(2026, 10, 25)),
        ),
        # still open from September
        ref(
            5,
            at(2026, 9, 20),
            party("jo@j.example", Outcome.PENDING, at(2026, 9, 28)),
            party("kim@k.example"),
        ),
        # decided in earlier months (for the 12-month rate and the trend)
        ref(
            6,
            at(2026, 6, 1),
            party("l@l.example", Outcome.NEGATIVE, at(2026, 6, 9)),
            party("m@m.example", status="noresponse"),
        ),
        ref(
            7,
            at(2026, 7, 1),
            party("n@n.example", Outcome.NEGATIVE, at(2026, 7, 9)),
            party("o@o.example", status="noresponse"),
        ),
        ref(
            8,
            at(2026, 8, 1),
            party("p@p.example", Outcome.POSITIVE, at(2026, 8, 9)),
            party("q@q.example", status="noresponse"),
        ),
        ref(
            9,
            at(2026, 8, 2),
            party("r@r.example", Outcome.NEGATIVE, at(2026, 8, 9)),
            party("s@s.example", status="noresponse"),
        ),
        # cancelled by the referrer: nowhere
        ref(10, at(2026, 10, 8), party("t@t.example"), party("u@u.example"), status="cancelled"),
    ]
    dave = Person("dave@example.com", "Dave Okafor")
    received = [
        ref(
            11,
            at(2026, 10, 15),
            party("alice@example.com", Outcome.POSITIVE, at(2026, 10, 20)),
            party("zoe@zed.example"),
            referrer=dave,
        )
    ]
    return refs, received


def test_member_month_has_every_section() -> None:
    refs, received = october_world()
    s = member_summary(ALICE, OCT, refs, received, UTCZ)
    assert s.has_activity
    assert [r.id for r in s.passed] == [1, 2, 3, 4]
    assert s.counts == {
        "passed": 4,
        "worked": 1,
        "did_not_work": 1,
        "mixed": 1,
        "waiting": 1,
        "answers": 6,
        "received": 1,
    }
    one = s.passed[0]
    assert one.outcome == "worked" and [(a.name, a.state, a.quote) for a in one.answers] == [
        ("Bob", "worked", "We signed a contract!"),
        ("Carol", "worked", "Great match, thank you."),
    ]
    mixed = s.passed[1]
    assert mixed.outcome_label == "the two sides see it differently"
    assert [a.state for a in mixed.answers] == ["worked", "did_not"]
    late = s.passed[3]
    assert [a.state for a in late.answers] == ["no_answer", "pending"]  # as of 31 October
    assert [r.id for r in s.still_open] == [5]
    # mixed is left out of the rate: 1 worked (#1) of 2 decided (#1, #3)
    assert (s.rate.good, s.rate.total, s.rate.percent) == (1, 2, 50)
    assert (s.rate_12m.good, s.rate_12m.total) == (2, 6)
    assert s.trend == "up"  # 50% against 1 of 4 before
    assert s.thanks_received == 3 and [t.who for t in s.thanks] == ["Bob", "Carol", "Dan"]
    assert s.thanks[0].about == "Carol"
    assert [x.title for x in s.lessons] == ["Budget got in the way", "The fit was not quite there"]
    (mine,) = s.received
    assert mine.referrer.email == "dave@example.com" and mine.others == "Zoe"
    assert mine.answer.state == "worked" and mine.thank_link.startswith("mailto:dave@example.com?")
    bars = {b.long_label: b for b in s.chart.bars}
    assert len(s.chart.bars) == 12 and s.chart.bars[-1].current
    assert (
        bars["Oct 2026"].worked,
        bars["Oct 2026"].did_not,
        bars["Oct 2026"].mixed,
        bars["Oct 2026"].pending,
    ) == (1, 1, 1, 1)
    assert bars["Aug 2026"].words == "1 worked, 1 did not"


def test_quotes_only_when_shareable() -> None:
    refs = [
        ref(
            1,
            at(2026, 10, 5),
            party(
                "a@a.example", Outcome.POSITIVE, at(2026, 10, 9), "Great, but keep this between us."
            ),
            party("b@b.example", Outcome.POSITIVE, at(2026, 10, 9), "Wonderful!", shareable=False),
            party("c@c.example", Outcome.NEGATIVE, at(2026, 10, 9), "Confidential: no budget"),
        )
    ]
    s = member_summary(ALICE, OCT, refs, [], UTCZ)
    assert all(a.quote == "" for a in s.passed[0].answers)
    assert s.thanks == () and s.thanks_received == 2
    # a private reason does not even give the lesson its theme
    assert [x.title for x in s.lessons] == ["Every introduction teaches something"]
    assert s.lessons[0].quotes == ()


def test_a_member_with_nothing_new_has_no_activity() -> None:
    old = [ref(1, at(2026, 8, 5), party("a@a.example"), party("b@b.example"))]
    s = member_summary(ALICE, OCT, old, [], UTCZ)
    assert not s.has_activity and [r.id for r in s.still_open] == [1]
    empty = member_summary(ALICE, OCT, [], [], UTCZ)
    assert not empty.has_activity and empty.chart.empty and empty.trend is None


def test_timezone_decides_which_month_an_intro_is_in() -> None:
    late_31st = [ref(1, at(2026, 11, 1, 3), party("a@a.example"), party("b@b.example"))]
    assert len(member_summary(ALICE, OCT, late_31st, [], LA).passed) == 1  # 31 Oct, 20:00 PDT
    assert len(member_summary(ALICE, OCT, late_31st, [], UTCZ).passed) == 0
    early = [ref(1, at(2026, 10, 31, 12), party("a@a.example"), party("b@b.example"))]
    assert len(member_summary(ALICE, OCT, early, [], AUCKLAND).passed) == 0  # 1 Nov in NZ
    assert len(member_summary(ALICE, Month(2026, 11), early, [], AUCKLAND).passed) == 1


def test_text_chart_reads_well() -> None:
    refs, _ = october_world()
    chart = member_summary(ALICE, OCT, refs, [], UTCZ).chart
    lines = chart.text_lines()
    assert len(lines) == 12
    assert lines[-1].startswith("Oct 2026") and "#x~." in lines[-1]
    assert lines[-1].endswith("1 worked, 1 did not, 1 mixed, 1 waiting")
    assert lines[0].startswith("Nov 2025") and lines[0].endswith("-")
    assert "~ sides disagree" in chart.legend
    many = [ref(i, at(2026, 10, 1), party("a@a.example")) for i in range(100)]
    big = member_summary(ALICE, OCT, many, [], UTCZ).chart
    assert (
        "each mark is 5 introductions" in big.legend and max(len(x) for x in big.text_lines()) < 80
    )


# ------------------------------------------------------------------------------ network


def test_network_month_has_every_section() -> None:
    refs, received = october_world()
    bob = Person("bob@example.com", "Bob Smith")
    asked = at(2026, 10, 10)
    refs = [
        *refs,
        *received,
        ref(
            20,
            at(2026, 10, 8),
            party("ann@a.example", asked=asked, status="noresponse"),
            party("ben@b.example", Outcome.POSITIVE, at(2026, 10, 12), asked=asked),
            referrer=bob,
        ),
        ref(
            21,
            at(2026, 10, 9),
            party("ann@a.example", asked=asked),
            party("cy@c.example"),
            referrer=bob,
        ),
    ]
    s = network_summary(
        OCT,
        refs,
        UTCZ,
        unclear=[UnclearRecord(7, "ann@a.example", "hmm,\nmaybe?", at(2026, 10, 30), 21)],
        suppressions=[
            SuppressionRecord("x@gone.example", "bounce", at(2026, 10, 3)),
            SuppressionRecord("y@no.example", "optout", at(2026, 10, 4)),
            SuppressionRecord("old@no.example", "optout", at(2026, 9, 4)),
        ],
        delivery=[
            DeliveryRecord(
                40,
                "feedback_request",
                "z@z.example",
                "failed",
                3,
                "550 5.1.1 no such\nuser",
                at(2026, 10, 20),
            ),
            DeliveryRecord(41, "reminder", "w@w.example", "pending", 2, "timeout", at(2026, 9, 2)),
            DeliveryRecord(42, "reminder", "v@v.example", "failed", 1, "old", at(2026, 8, 2)),
        ],
    )
    c = s.counts
    assert (c["referrals"], c["referrers"], c["worked"], c["mixed"]) == (7, 3, 3, 1)
    assert (c["bounced"], c["opted_out"]) == (1, 1)
    assert [(x.email, x.count) for x in s.top_referrers] == [
        ("alice@example.com", 4),
        ("bob@example.com", 2),
        ("dave@example.com", 1),
    ]
    # only people introduced more than once make the list
    assert [(x.email, x.count) for x in s.top_receivers] == [("ann@a.example", 2)]
    assert (s.answer_rate.good, s.answer_rate.total) == (1, 3)
    assert s.unanswered_total == 2 and s.unanswered[0].gave_up
    assert s.unclear_total == 1 and s.unclear[0][2] == "hmm, maybe?"
    assert [d.id for d, _, _ in s.delivery] == [40, 41]  # old failures are last month's news
    assert s.delivery[0][2] == "550 5.1.1 no such user"
    assert s.needs_attention == 3 and s.has_activity
    quiet = network_summary(Month(2025, 1), [], UTCZ)
    assert not quiet.has_activity


def test_answers_after_the_month_do_not_change_it() -> None:
    refs = [
        ref(
            1,
            at(2026, 10, 28),
            party("a@a.example", Outcome.POSITIVE, at(2026, 11, 1, 1)),
            party("b@b.example"),
        )
    ]
    before = member_summary(ALICE, OCT, refs, [], UTCZ)
    assert before.passed[0].outcome == "open" and before.thanks_received == 0
    later = member_summary(ALICE, Month(2026, 11), refs, [], UTCZ)
    assert later.thanks_received == 1 and later.rate.total == 1


def test_due_month_steps_hour_by_hour_around_the_first() -> None:
    start = at(2026, 10, 31, 0)
    seen = []
    for h in range(48):
        m = due_month(start + timedelta(hours=h), AUCKLAND, 9)
        if not seen or seen[-1][1] != m:
            seen.append((h, m))
    assert seen == [(0, Month(2026, 9)), (20, OCT)]
