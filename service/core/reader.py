"""Read one inbound message: what it is, why, and (for replies) what it says. Pure.

Evidence is ranked in one table; the first row whose evidence is present decides, and each
row says why it beats the rows below it. `introloop inspect` prints the deciding row.

====  =======================================  ===========  ==================================
 #    evidence                                 verdict      why it ranks here
====  =======================================  ===========  ==================================
 1    the screen proves automatic mail: a      bounce /     a machine wrote it; answering
      DSN, an ARF/JMRP report, Auto-Submitted, autoreply /  would loop or spam, even when it
      a vacation responder, our own mail       ignored      carries our token (responders
                                                            quote it back)
 2    a valid signed reply token in a          reply        proves a person answers *our*
      delivery address, or In-Reply-To/                     mail: only someone who received
      References naming a Message-ID we minted              it can know them; nothing below
                                                            (list headers, Feedback-ID,
                                                            List-Unsubscribe, Precedence, an
                                                            ESP X-Mailer) can outrank that
 3    a list server (List-Id, List-Post,       ignored      a post to a list is not an intro
      Mailman/ezmlm headers)                                even from a member
 4    a member (or allowed sender) writing to  intro /      a member's word; more than
      two or more people, the service in Bcc/  ignored      MAX_PARTIES recipients is a
      Cc, sender not forged                                 mailing, not an intro (intro.py)
 5    a hint of bulk mail only (Feedback-ID,   ignored      weak: providers stamp these on
      List-Unsubscribe, Precedence,                         personal mail, so they decide only
      header-only auto-reply signals), not                  mail that rows 1-4 leave
      from a member                                         unexplained; the pipeline still
                                                            matches the sender's open request
 6    not from a member, and the text reads    reply        an answer that lost its headers
      as an answer                             (unknown)
 7    anything else                            ignored /    a stranger's mail is never answered
                                               rejected
====  =======================================  ===========  ==================================

The database-backed pipeline adds one more matching step after rows 4 and 5 (the sender's
open request) that a pure reading cannot know.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from service.core import headers as h
from service.core.auth import AuthVerdict, DkimCheck, DkimVerifier, authenticate
from service.core.body import parse_message
from service.core.intro import IntroVerdict, Senders, parse_intro
from service.core.model import Classification, Evidence, Kind, Outcome, Person, Screening
from service.core.outgoing import is_minted
from service.core.quote import answer_of
from service.core.replytext import ReplyText, extract_reply
from service.core.screening import screen
from service.core.tokens import Token, tokens_in

Classify = Callable[[str], Classification]


@dataclass(frozen=True, slots=True)
class ReadContext:
    """What reading needs besides the message: who we are, who may write, how to classify."""

    service_address: str
    senders: Senders
    classify: Classify
    secret: bytes | None = None
    extra_addresses: tuple[str, ...] = ()  # other addresses that are the service too
    # sender authentication of intros (service/core/auth.py): the receiving server's
    # authserv-ids whose Authentication-Results count, and an optional DKIM verifier
    trusted_authserv_ids: tuple[str, ...] = ()
    verify_dkim: DkimVerifier | None = None

    @property
    def own_addresses(self) -> tuple[str, ...]:
        """Every address that is the service itself."""
        return (self.service_address, *self.extra_addresses)

    @property
    def domain(self) -> str:
        """The domain our Message-IDs are minted in."""
        return self.service_address.rsplit("@", 1)[1]


@dataclass(frozen=True, slots=True)
class Reading:
    """Everything the core concluded about one message."""

    kind: Kind
    reason: str
    message_id: str | None
    sender: Person | None
    subject: str
    referrer: Person | None = None
    parties: tuple[Person, ...] = ()
    tokens: tuple[Token, ...] = ()
    our_references: tuple[str, ...] = ()
    reply: ReplyText | None = None
    classification: Classification | None = None
    screening: Screening | None = None
    intro: IntroVerdict | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    auth: AuthVerdict | None = None
    # a member's intro set aside because of *how* it was sent: what they should do instead
    advice: str = ""

    @property
    def outcome(self) -> Outcome | None:
        """The classified outcome, for replies."""
        return self.classification.outcome if self.classification else None


def read_bytes(raw: bytes, ctx: ReadContext, *, sent_texts: Sequence[str] = ()) -> Reading:
    """Parse `raw` and read it (see `read`)."""
    return read(parse_message(raw), raw, ctx, sent_texts=sent_texts)


def read(
    msg: EmailMessage, raw: bytes, ctx: ReadContext, *, sent_texts: Sequence[str] = ()
) -> Reading:
    """Classify one message. `sent_texts` are our own texts it may quote (to strip them)."""
    mid = h.message_id(msg)
    who = h.sender(msg)
    subject = h.header(msg, "Subject")
    base: dict[str, Any] = {"message_id": mid, "sender": who, "subject": subject}

    screening = screen(msg, raw, own_addresses=ctx.own_addresses, own_domain=ctx.domain)
    # row 1: proof of automatic mail beats everything
    if screening is not None and screening.evidence is Evidence.AUTOMATIC:
        return Reading(kind=screening.kind, reason=screening.reason, screening=screening, **base)
    # a list or hint verdict is kept with the reading (inspect shows it) but decides later
    base["notes"] = (f"outranked: {screening.reason}",) if screening is not None else ()

    # row 2: proof that a person answers our mail
    tokens = (
        tuple(tokens_in(h.recipients_seen(msg), ctx.service_address, ctx.secret))
        if ctx.secret
        else ()
    )
    ours = tuple(r for r in h.references(msg) if is_minted(r, ctx.domain))
    if tokens or ours:
        reply, verdict = _read_reply(msg, ctx, tokens, sent_texts)
        how = f"token {tokens[0].id}{tokens[0].kind}" if tokens else f"references <{ours[0]}>"
        despite = f" (outranks {screening.rule})" if screening is not None else ""
        return Reading(
            kind=Kind.REPLY,
            reason=f"reply matched by {how}{despite}; read as {verdict.outcome} "
                   f"({verdict.rule})",
            tokens=tokens,
            our_references=ours,
            reply=reply,
            classification=verdict,
            **base,
        )

    intro = parse_intro(msg, service_addresses=ctx.own_addresses, senders=ctx.senders)
    # row 3: a list server
    if screening is not None and screening.evidence is Evidence.LIST:
        # no note to the member: a post to a list the service reads is not a misdirected
        # intro (the operator still sees it as set aside)
        meant = intro.kind is Kind.INTRO
        return Reading(kind=screening.kind, reason=screening.reason, screening=screening,
                       referrer=intro.referrer if meant else None, **base)

    if intro.kind is Kind.INTRO and who is not None:
        auth = authenticate(
            msg, from_address=who.email, trusted=ctx.trusted_authserv_ids,
            dkim=_verify_dkim(ctx, raw),
        )
        if auth.rejected:
            # a forged or unverifiable From must never create a referral (or any mail, not
            # even a note to the member it claims to be: the operator's alert says it)
            return Reading(kind=Kind.REJECTED, reason=f"{auth.reason}: not accepted as an "
                           f"intro from {who.email}", referrer=intro.referrer,
                           intro=intro, auth=auth, **base)
        checked = f"; sender verified: {auth.reason}" if auth.status == "pass" else ""
        return Reading(
            kind=Kind.INTRO,
            reason=intro.reason + checked,
            referrer=intro.referrer,
            parties=intro.parties,
            intro=intro,
            auth=auth,
            **base,
        )

    # row 5: only a hint of bulk mail; a member's message is explained by the intro rules
    # instead ("addressed to 10 people"), which say more than "Feedback-ID"
    is_member = who is not None and ctx.senders.member_for(who.email) is not None
    if screening is not None and not is_member:
        return Reading(kind=screening.kind, reason=screening.reason, screening=screening,
                       referrer=intro.referrer, intro=intro, **base)
    if intro.kind is Kind.IGNORED and intro.advice:
        return Reading(kind=Kind.IGNORED, reason=intro.reason, referrer=intro.referrer,
                       intro=intro, advice=intro.advice, **base)
    if intro.kind is Kind.REJECTED and intro.parties:
        # a non-member introducing people: say so (it is not a reply to anything)
        return Reading(kind=Kind.REJECTED, reason=intro.reason, referrer=intro.referrer,
                       intro=intro, **base)

    # rows 6 and 7
    reply, verdict = _read_reply(msg, ctx, (), sent_texts)
    if not is_member and verdict.outcome is not Outcome.UNCLEAR:
        return Reading(
            kind=Kind.REPLY,
            reason=f"reads as an answer ({verdict.outcome}, {verdict.rule}) but names no request",
            reply=reply,
            classification=verdict,
            intro=intro,
            **base,
        )
    return Reading(
        kind=intro.kind,
        reason=intro.reason,
        referrer=intro.referrer,
        parties=intro.parties,
        reply=reply,
        classification=verdict,
        intro=intro,
        **base,
    )


def _read_reply(
    msg: EmailMessage, ctx: ReadContext, tokens: Sequence[Token], sent_texts: Sequence[str]
) -> tuple[ReplyText, Classification]:
    reply = extract_reply(msg, sent_texts=sent_texts)
    answer = next((t.answer for t in tokens if t.answer is not None), None)
    if answer is not None:
        # a one-click answer: the address says it all; any text is kept as a comment
        return reply, Classification(answer, 1.0, f"one-click:{answer.value}")
    # the answer alone: a greeting, a sign-off or a company called "Great Lakes Partners" in
    # the signature must not sway the outcome
    return reply, ctx.classify(answer_of(reply.text))


def _verify_dkim(ctx: ReadContext, raw: bytes) -> tuple[DkimCheck, ...] | None:
    """Direct DKIM checks when INTROLOOP_VERIFY_DKIM wired a verifier; a verifier that
    raises counts as no signature verified (strict mode then rejects, with the reason)."""
    if ctx.verify_dkim is None:
        return None
    try:
        return ctx.verify_dkim(raw)
    except Exception:
        return ()


def own_addresses(service_address: str, extra: Collection[str] = ()) -> tuple[str, ...]:
    """The service address plus any extra addresses, lowercased."""
    return tuple(a.lower() for a in (service_address, *extra))
