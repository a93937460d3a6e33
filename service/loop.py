"""The loop: inbound mail in, decisions applied to the database, outbound mail queued and sent.

This module orchestrates; it decides nothing itself. Decisions come from `service.core`; the
mailbox, sender, database and templates are handed in (see `service.app` for the real ones).

Guarantees kept here:
- raw bytes are committed before a message is marked done on the server;
- every message is processed in its own transaction; one that raises is quarantined with its
  reason and processing goes on;
- every outgoing message is an outbox row with a unique key and a Message-ID fixed before it is
  sent; nothing is ever written to a suppressed (opted-out or bounced) address.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy.engine import Engine

from service.adapters.templates import Renderer
from service.alerts import raise_alerts
from service.config import Settings
from service.core.decide import (
    Policy,
)
from service.core.model import Person
from service.core.reader import Classify
from service.inbound import InboundMixin
from service.loopbase import PassReport, content_hash  # noqa: F401  (re-exported)
from service.outbound import OutboundMixin
from service.ports import Clock, Mailbox, Sender
from service.summaries import SummaryMixin

log = structlog.get_logger("introloop")








class Loop(InboundMixin, OutboundMixin, SummaryMixin):
    """One Introloop service: a mailbox, a sender, a database, templates and a clock."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        mailbox: Mailbox | None,
        sender: Sender | None,
        renderer: Renderer,
        classify: Classify,
        clock: Clock,
    ):
        self.settings = settings
        self.engine = engine
        self.mailbox = mailbox
        self.sender = sender
        self.renderer = renderer
        self.classify = classify
        self.clock = clock
        self.secret = settings.secret_bytes()
        self.policy = Policy(
            feedback_delay=settings.feedback_delay,
            reminder_delay=settings.reminder_delay,
            max_reminders=settings.max_reminders,
            pending_recheck=settings.pending_recheck,
            timezone=settings.zone,
            quiet_hours=settings.quiet_hours,
            quiet_weekends=settings.quiet_weekends,
            party_weekly_cap=settings.party_weekly_cap,
        )
        self.service = Person(settings.address, settings.network_name)
        self.on_event: Callable[[str, dict[str, Any]], None] | None = None
        # called with the bytes of each sent message (IMAP APPEND to Sent, when configured)
        self.sent_copy: Callable[[bytes], object] | None = None


    # ------------------------------------------------------------------ one full pass

    def run_once(self) -> PassReport:
        """Fetch and process all new mail, then queue what is due, then send the outbox."""
        report = PassReport()
        try:
            report.merge(self.fetch())
        except Exception:
            # cron's one pass must still tell the operator the mailbox cannot be read
            report.merge(raise_alerts(self))
            report.merge(self.flush_outbox())
            raise
        report.merge(self.process_pending())
        report.merge(self.send_due())
        report.merge(self.queue_monthly_summaries())
        report.merge(raise_alerts(self))
        report.merge(self.flush_outbox())
        return report

