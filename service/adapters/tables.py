"""The database tables (SQLModel). Durable state lives here, never only in the scheduler.

All datetimes are stored as aware UTC (`DateTime(timezone=True)`); SQLite hands them back
naive, so `as_utc()` below re-attaches UTC when reading.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

# Named constraints, so Alembic's batch mode on SQLite and drops on PostgreSQL can find them.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Aware UTC now: used only for bookkeeping columns, never for decisions."""
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes for timezone columns: they are UTC."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _ts(nullable: bool = True, index: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(sa.DateTime(timezone=True), nullable=nullable, index=index)


class Member(SQLModel, table=True):
    """A member of the network: may create referrals; receives thanks and summaries."""

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(sa_column=sa.Column(sa.String(320), unique=True, nullable=False))
    name: str = ""
    timezone: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(False))


class MemberAlias(SQLModel, table=True):
    """Another address of the same member: never a party, accepted as the member."""

    __tablename__ = "member_alias"
    id: int | None = Field(default=None, primary_key=True)
    member_id: int = Field(foreign_key="member.id", index=True)
    email: str = Field(sa_column=sa.Column(sa.String(320), unique=True, nullable=False))


class Inbound(SQLModel, table=True):
    """Every message read from the mailbox, raw bytes first. The dedupe log and the quarantine."""

    id: int | None = Field(default=None, primary_key=True)
    mailbox: str = Field(default="default", max_length=200)
    folder: str = Field(default="INBOX", max_length=200)
    uidvalidity: int | None = Field(default=None, sa_type=sa.BigInteger)
    uid: int | None = Field(default=None, sa_type=sa.BigInteger)
    message_id: str | None = Field(default=None, max_length=998, index=True)
    content_hash: str = Field(sa_column=sa.Column(sa.String(64), unique=True, nullable=False))
    raw: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    size: int = 0
    received_at: datetime = Field(default_factory=utcnow, sa_column=_ts(False))
    # new -> processed | quarantined
    status: str = Field(default="new", max_length=20, index=True)
    kind: str | None = Field(default=None, max_length=20)
    reason: str | None = None
    sender: str | None = Field(default=None, max_length=320)
    subject: str | None = None
    referral_id: int | None = Field(default=None, index=True)
    party_id: int | None = Field(default=None, index=True)
    processed_at: datetime | None = Field(default=None, sa_column=_ts())
    attempts: int = 0
    # mail from a member ("member"), a member's other address ("alias") or a person we asked
    # ("party") that was ignored or rejected: the operator is told (check, health, alert)
    set_aside: str | None = Field(default=None, max_length=20, index=True)
    # several workers: a worker claims a few `new` rows (status `claimed`) until lease_until;
    # a crashed worker's claims are taken over once their lease has passed
    claimed_by: str | None = Field(default=None, max_length=200)
    lease_until: datetime | None = Field(default=None, sa_column=_ts())


class Referral(SQLModel, table=True):
    """One introduction: a referrer and two or more parties."""

    id: int | None = Field(default=None, primary_key=True)
    referrer_email: str = Field(max_length=320, index=True)
    referrer_name: str = ""
    subject: str = ""
    intro_message_id: str | None = Field(default=None, max_length=998)
    intro_key: str = Field(sa_column=sa.Column(sa.String(128), unique=True, nullable=False))
    inbound_id: int | None = None
    introduced_at: datetime = Field(sa_column=_ts(False, index=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(False))
    status: str = Field(default="open", max_length=20)  # open | cancelled


class Party(SQLModel, table=True):
    """One introduced person in one referral, with where they are in the feedback loop."""

    id: int | None = Field(default=None, primary_key=True)
    referral_id: int = Field(foreign_key="referral.id", index=True)
    email: str = Field(max_length=320, index=True)
    name: str = ""
    status: str = Field(default="scheduled", max_length=20, index=True)
    next_due_at: datetime | None = Field(default=None, sa_column=_ts(index=True))
    requests_sent: int = 0
    reminders_sent: int = 0
    rounds: int = 0
    outcome: str | None = Field(default=None, max_length=20)
    outcome_at: datetime | None = Field(default=None, sa_column=_ts())
    last_request_message_id: str | None = Field(default=None, max_length=998)
    lease_until: datetime | None = Field(default=None, sa_column=_ts())


class Reply(SQLModel, table=True):
    """A human reply matched to a party: its new text and how it was read."""

    id: int | None = Field(default=None, primary_key=True)
    party_id: int | None = Field(default=None, index=True)
    inbound_id: int = Field(index=True)
    from_email: str = Field(max_length=320)
    text: str = ""
    outcome: str = Field(max_length=20)
    confidence: float = 0.0
    rule: str = ""
    matched_by: str = ""
    flagged: str | None = None  # e.g. "sent from another address than the party's"
    settled_by: str | None = None  # who decided an unclear reply (operator address / cli)
    settled_outcome: str | None = Field(default=None, max_length=20)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(False, index=True))


class Outbox(SQLModel, table=True):
    """Every message we send, keyed by what it is, with its Message-ID fixed before sending."""

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(sa_column=sa.Column(sa.String(300), unique=True, nullable=False))
    kind: str = Field(max_length=50, index=True)
    to_email: str = Field(max_length=320, index=True)
    message_id: str = Field(sa_column=sa.Column(sa.String(300), unique=True, nullable=False))
    raw: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    subject: str = ""
    referral_id: int | None = Field(default=None, index=True)
    party_id: int | None = Field(default=None, index=True)
    member_email: str | None = Field(default=None, max_length=320)
    # pending -> sending -> sent | failed ; pending again after a temporary failure
    status: str = Field(default="pending", max_length=20, index=True)
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_column=_ts(False, index=True))
    lease_until: datetime | None = Field(default=None, sa_column=_ts())
    last_error: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(False))
    sent_at: datetime | None = Field(default=None, sa_column=_ts(index=True))


class Suppression(SQLModel, table=True):
    """Addresses we never write to again: opted out or complained (forever), or hard-bounced."""

    email: str = Field(sa_column=sa.Column(sa.String(320), primary_key=True))
    reason: str = Field(max_length=20)  # optout | bounce | complaint (reported us as spam)
    detail: str = ""
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(False))


class MailboxState(SQLModel, table=True):
    """IMAP watermark per mailbox folder: UIDs only mean something within one UIDVALIDITY."""

    __tablename__ = "mailbox_state"
    id: int | None = Field(default=None, primary_key=True)
    mailbox: str = Field(max_length=200)
    folder: str = Field(max_length=200)
    uidvalidity: int = Field(sa_type=sa.BigInteger)
    last_uid: int = Field(default=0, sa_type=sa.BigInteger)
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(False))

    __table_args__ = (sa.UniqueConstraint("mailbox", "folder", name="uq_mailbox_state_folder"),)


class SummaryLog(SQLModel, table=True):
    """Monthly summaries already dealt with: queued, or nothing to report, per recipient and month.

    The scheduler checks this small table on every tick instead of rebuilding summaries; the
    unique key makes a second worker's attempt fail instead of sending twice.
    """

    __tablename__ = "summary_log"
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=20)  # member | network
    recipient: str = Field(max_length=320)
    month: str = Field(max_length=7, index=True)  # YYYY-MM
    status: str = Field(max_length=20)  # queued | empty | suppressed
    created_at: datetime = Field(sa_column=_ts(False))

    __table_args__ = (
        sa.UniqueConstraint("kind", "recipient", "month", name="uq_summary_log_recipient_month"),
    )


class Lease(SQLModel, table=True):
    """A job only one worker may do at a time (reading one mailbox), who does it, and until when.

    The holder renews it while it works; when it stops renewing (crash, network split) any
    other worker may take it over once `expires_at` has passed. See service/leases.py.
    """

    name: str = Field(sa_column=sa.Column(sa.String(200), primary_key=True))
    holder: str = Field(max_length=200)
    acquired_at: datetime = Field(sa_column=_ts(False))
    expires_at: datetime = Field(sa_column=_ts(False))


class Heartbeat(SQLModel, table=True):
    """When each kind of work last completed: health checks read these."""

    name: str = Field(sa_column=sa.Column(sa.String(100), primary_key=True))
    at: datetime = Field(sa_column=_ts(False))
    detail: str = ""


class OAuthToken(SQLModel, table=True):
    """The OAuth 2.0 sign-in of one mailbox login: the provider library's state, encrypted.

    `state` holds what google-auth or msal serialise (refresh token included), encrypted with
    a key derived from INTROLOOP_SECRET; it is rewritten every time the provider rotates the
    refresh token. The other columns are plain so `check`, `health` and the alerts can read
    them without the secret.
    """

    __tablename__ = "oauth_token"
    account: str = Field(sa_column=sa.Column(sa.String(320), primary_key=True))
    provider: str = Field(max_length=20)  # google | microsoft
    client_id: str = Field(max_length=200)
    scopes: str = ""
    state: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    signed_in_at: datetime = Field(sa_column=_ts(False))  # `introloop auth` (the consent)
    refreshed_at: datetime | None = Field(default=None, sa_column=_ts())
    access_expires_at: datetime | None = Field(default=None, sa_column=_ts())
    # a known end of the refresh token (Google "Testing" apps: 7 days; Microsoft: 90 days unused)
    refresh_expires_at: datetime | None = Field(default=None, sa_column=_ts())
    expiry_reason: str = ""
    failing_since: datetime | None = Field(default=None, sa_column=_ts())
    last_error: str | None = None
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(False))
