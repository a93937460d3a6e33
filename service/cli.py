"""The `introloop` command. Every sub-command has --help with an example.

Expected failures (bad config, unreachable servers, bad input) print one line naming the problem
and the fix, and exit 1 (2 for usage errors); they never print a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from service.adapters.db import DatabaseError
from service.adapters.imap import MailboxError
from service.adapters.oauth import OAuthError
from service.adapters.templates import TemplateError
from service.config import ConfigError, Settings, load_settings, require_for_run
from service.logs import setup_logging
from service.ports import PermanentFailure, TemporaryFailure

F = TypeVar("F", bound=Callable[..., Any])
FOLLOWER_POLL = 2.0  # seconds: how often a worker without the mailbox looks for stored work
EXPECTED = (ConfigError, DatabaseError, MailboxError, TemplateError, TemporaryFailure,
            PermanentFailure, OAuthError)


def friendly(func: F) -> F:
    """Turn expected failures into one-line errors (exit 1) instead of tracebacks."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EXPECTED as exc:
            for line in str(exc).splitlines() or [type(exc).__name__]:
                click.echo(f"error: {line}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


class Ctx:
    """Shared CLI state: where the .env is, and lazily loaded settings."""

    def __init__(self, env_file: str | None, verbose: bool, mailbox: str | None = None):
        self.env_file = env_file
        self.verbose = verbose
        self.mailbox = mailbox  # one of INTROLOOP_MAILBOXES_FILE's mailboxes, or None

    def settings(self, **overrides: Any) -> Settings:
        """Load settings (ConfigError if something is wrong), of --mailbox when given."""
        if self.mailbox:
            from service.mailboxes import settings_for

            return settings_for(self.env_file, self.mailbox, overrides)
        return load_settings(self.env_file, overrides or None)


pass_ctx = click.make_pass_decorator(Ctx)


def _out(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, default=str))


@click.group(
    epilog="Example:\n\n  introloop demo            # the whole loop, locally, no mail account\n\n"
    "  introloop run --once      # one pass against the configured mailbox"
)
@click.option("--env-file", default=".env", show_default=True, help="Settings file to read.")
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
@click.option("--mailbox", default=None, envvar="INTROLOOP_MAILBOX", metavar="NAME",
              help="With INTROLOOP_MAILBOXES_FILE: act on this mailbox (e.g. a chapter).")
@click.version_option(package_name="introloop")
@click.pass_context
def main(ctx: click.Context, env_file: str, verbose: bool, mailbox: str | None) -> None:
    """Introloop closes the loop on introductions made by email.

    Members BCC the service address on intro emails; Introloop asks both introduced people how
    it went, reads their replies, thanks the right people and sends monthly summaries.
    """
    # `run` narrates its work at INFO; one-shot commands only log problems
    quiet = ctx.invoked_subcommand != "run"
    setup_logging("DEBUG" if verbose else ("WARNING" if quiet else None))
    ctx.obj = Ctx(env_file, verbose, mailbox)


# ---------------------------------------------------------------------------------- demo


@main.command(
    epilog="Example:\n\n  introloop demo --dir /tmp/introloop-demo\n\n"
    "Every email the demo sends is left as an .eml file under DIR/outgoing/."
)
@click.option("--dir", "directory", default="introloop-demo", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Where the demo's database, Maildir and sent .eml files go (emptied first).")
@click.option("--json", "as_json", is_flag=True, help="Print the story as JSON lines.")
@friendly
def demo(directory: Path, as_json: bool) -> None:
    """Run the whole loop on sample mail with a simulated clock: no mail account needed."""
    from service.demo import run_demo

    run_demo(directory, as_json=as_json)


# ---------------------------------------------------------------------------------- run


@main.command(
    epilog="Examples:\n\n  introloop run            # keep running (IDLE + scheduler)\n\n"
    "  introloop run --once     # one pass, for cron and tests\n\n"
    "  introloop run --once --dry-run   # read and decide, send nothing"
)
@click.option("--once", is_flag=True,
              help="One pass: fetch and process all new mail, send everything due, exit.")
@click.option("--dry-run", is_flag=True,
              help="With --once: do everything but send (outgoing mail is only queued).")
@click.option("--json", "as_json", is_flag=True, help="With --once: print the pass as JSON.")
@pass_ctx
@friendly
def run(ctx: Ctx, once: bool, dry_run: bool, as_json: bool) -> None:
    """Run the service: read the mailbox, ask, read answers, thank, summarise."""
    from service.app import build_loop
    from service.mailboxes import load_mailboxes, mailboxes_file

    if ctx.mailbox or mailboxes_file(ctx.env_file) is None:
        configs = {ctx.mailbox or "": ctx.settings()}
    else:  # every mailbox of INTROLOOP_MAILBOXES_FILE
        configs = dict(load_mailboxes(ctx.env_file))
    for settings in configs.values():
        require_for_run(settings)
    loops = {name: build_loop(settings) for name, settings in configs.items()}
    for loop in loops.values():
        if dry_run:
            loop.sender = None
    if once:
        for name, loop in loops.items():
            try:
                report = loop.run_once()
            finally:
                with contextlib.suppress(DatabaseError):
                    loop.release_mailbox()  # the next run (or another worker) reads it at once
            if name and not as_json:
                click.echo(f"[{name}] {loop.settings.address}")
            _print_report(report, as_json)
        return
    _run_forever(loops)


def _print_report(report: Any, as_json: bool) -> None:
    if as_json:
        _out({"fetched": report.fetched, "processed": report.processed,
              "queued": report.queued, "sent": report.sent, "failed": report.failed,
              "steps": report.steps})
        return
    click.echo(f"fetched {report.fetched} message(s)")
    for inbound_id, kind, reason in report.processed:
        click.echo(f"  #{inbound_id} {kind}: {reason}")
    for kind, to, _ in report.queued:
        click.echo(f"  queued {kind} for {to}")
    for kind, to, subject in report.sent:
        click.echo(f"  sent {kind} to {to}: {subject}")
    for party, status, note in report.steps:
        click.echo(f"  {party}: {status} ({note})")
    for kind, to, error in report.failed:
        click.echo(f"  not sent {kind} to {to}: {error}")


def _raced(exc: Exception) -> None:
    """Another worker wrote the same unique row at the same moment: its work stands; this
    unit of work is simply done again on the next pass (one line, no traceback)."""
    detail = str(getattr(exc, "orig", exc)).strip().splitlines()
    click.echo(f"note: another worker did the same at the same moment "
               f"({detail[0] if detail else 'unique key'}); retrying on the next pass", err=True)


def _run_forever(loops: dict[str, Any]) -> None:
    """Serve each mailbox: IDLE, fetch and process in a thread per mailbox (in this thread
    when there is only one); APScheduler ticks each mailbox's outbound work."""
    from apscheduler.schedulers.background import BackgroundScheduler

    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # interval jobs only: due dates live in our tables, each loop's own zone decides them
    scheduler = BackgroundScheduler(timezone="UTC")
    served = []
    for name, loop in loops.items():
        lock = threading.Lock()  # one unit of work at a time: inbound and outbound never overlap
        outbound = functools.partial(_outbound, loop, lock)
        # Late ticks coalesce into one.
        scheduler.add_job(functools.partial(_scheduled, outbound), "interval", seconds=60,
                          id=f"outbound:{name}", coalesce=True, max_instances=1,
                          misfire_grace_time=None, next_run_time=datetime.now())
        served.append((name, loop, lock, outbound))
    scheduler.start()
    try:
        if len(served) == 1:
            _serve(*served[0], stop)
        else:
            threads = [threading.Thread(target=_serve, args=(*args, stop), name=args[0],
                                        daemon=True) for args in served]
            for th in threads:
                th.start()
            while not stop.is_set() and any(th.is_alive() for th in threads):
                stop.wait(0.5)  # signals reach this (main) thread
            stop.set()
            for th in threads:
                th.join(timeout=60)
    finally:
        scheduler.shutdown(wait=True)
        for _, loop, _, _ in served:
            with contextlib.suppress(Exception):  # the database may be the thing that is down
                loop.release_mailbox()
            loop.mailbox.close()
            if loop.sender is not None:
                loop.sender.close()


def _outbound(loop: Any, lock: threading.Lock) -> None:
    from service.alerts import raise_alerts

    with lock:
        loop.send_due()
        loop.queue_monthly_summaries()
        raise_alerts(loop)  # tells the operator (at most daily per cause) what is wrong
        loop.flush_outbox()


def _scheduled(outbound: Callable[[], None]) -> None:
    from sqlalchemy.exc import IntegrityError

    # the serving loop reports outages (once); here they would become scheduler tracebacks
    with contextlib.suppress(MailboxError, DatabaseError, TemporaryFailure):
        try:
            outbound()
        except IntegrityError as exc:
            _raced(exc)


def _serve(name: str, loop: Any, lock: threading.Lock, outbound: Callable[[], None],
           stop: threading.Event) -> None:
    """One mailbox until `stop`: fetch (if this worker holds its lease), process, send,
    then IDLE (or poll); outages are reported once and waited out with backoff."""
    import structlog
    from sqlalchemy.exc import IntegrityError

    prefix = f"[{name}] " if name else ""
    structlog.contextvars.bind_contextvars(**({"mailbox_config": name} if name else {}))
    poll = max(5.0, loop.settings.poll_interval.total_seconds())
    # the mailbox reader renews its lease between IDLEs: an IDLE must end well within it
    idle = min(poll, 30.0, loop.settings.mailbox_lease.total_seconds() / 3)
    backoff = 1.0
    down_since: float | None = None  # an outage is reported once, and its end once
    idles = False  # has the IMAP server offered IDLE (remembered across reconnects)?
    click.echo(f"{prefix}introloop running on {loop.mailbox.name} as worker {loop.worker}; "
               "Ctrl-C to stop", err=True)
    while not stop.is_set():
        try:
            with lock:
                loop.fetch()  # only the worker holding the mailbox lease reads it
                loop.process_pending()
            outbound()
            backoff = 1.0
            if down_since is not None:
                click.echo(f"{prefix}resumed after {time.monotonic() - down_since:.0f}s",
                           err=True)
                down_since = None
        except IntegrityError as exc:
            _raced(exc)
            stop.wait(1.0)
            continue
        except (MailboxError, DatabaseError, TemporaryFailure) as exc:
            if down_since is None:
                down_since = time.monotonic()
                click.echo(f"{prefix}warning: {exc}; retrying with backoff (up to 5 min) until "
                           "it works again", err=True)
            stop.wait(backoff)
            backoff = min(backoff * 2, 300.0)
            continue
        if not getattr(loop, "holds_mailbox", True):
            # another worker reads the mailbox: look for stored work every few seconds
            stop.wait(min(poll, FOLLOWER_POLL))
        # IDLE wakes us early when mail arrives; a catch-up fetch runs at least every `poll`
        elif not loop.mailbox.wait(idle) and not stop.is_set():
            # a server without IDLE is polled; one with IDLE (even if the connection just
            # dropped) is fetched from again at once: a failed reconnect backs off above
            idles = idles or getattr(loop.mailbox, "has_idle", lambda: False)()
            stop.wait(0 if idles else poll)


# ---------------------------------------------------------------------------------- check


@main.command(epilog="Example:\n\n  introloop check && introloop run")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@pass_ctx
def check(ctx: Ctx, as_json: bool) -> None:
    """Validate the settings, reach IMAP, SMTP and the database, and show current alerts."""
    from service.alerts import SigninRecorder
    from service.app import SystemClock, build_engine, build_mailbox, build_sender, build_tokens
    from service.health import status_checks

    results: list[tuple[str, bool | None, str]] = []  # ok None: a warning
    try:
        settings = ctx.settings()
        require_for_run(settings)
        results.append(("settings", True, f"service address {settings.address}"))
    except ConfigError as exc:
        for p in exc.problems:
            results.append(("settings", False, p))
        _report_checks(results, as_json)
        return
    try:
        from service.adapters.db import check_database

        engine = build_engine(settings)
        check_database(engine)
        results.append(("database", True, engine.url.render_as_string(hide_password=True)))
    except DatabaseError as exc:
        results.append(("database", False, str(exc)))
        _report_checks(results, as_json)
        return
    try:
        tokens = build_tokens(settings, engine)
    except OAuthError as exc:
        tokens = None
        results.append(("oauth", False, str(exc)))
    signin = SigninRecorder(engine, SystemClock())  # a real sign-in: keep the status current
    try:
        mb = build_mailbox(settings, tokens=tokens, on_signin=signin)
        uv = mb.uidvalidity()
        where = f"{settings.imap_host}:{settings.effective_imap_port}" if settings.uses_imap \
            else "local Maildir (no IMAP configured)"
        results.append(("imap", True, f"{where} folder {settings.imap_folder} uidvalidity {uv}"))
        mb.close()
    except MailboxError as exc:
        results.append(("imap", False, str(exc)))
    try:
        sender = build_sender(settings, tokens=tokens, on_signin=signin)
        if hasattr(sender, "check"):
            sender.check()
            results.append(("smtp", True, f"{settings.smtp_host}:{settings.effective_smtp_port}"))
        else:
            results.append(("smtp", True, "outgoing mail written as .eml (no SMTP configured)"))
        sender.close()
    except (TemporaryFailure, PermanentFailure) as exc:
        results.append(("smtp", False, str(exc)))
    # after the sign-ins above, so what they just found is part of the picture
    results += status_checks(settings, engine, SystemClock().now())
    _report_checks(results, as_json)


def _report_checks(results: list[tuple[str, bool | None, str]], as_json: bool) -> None:
    ok = all(r[1] is not False for r in results)  # warnings (None) do not fail the check
    if as_json:
        _out({"ok": ok, "checks": [{"name": n, "ok": o is not False, "warning": o is None,
                                    "detail": d} for n, o, d in results]})
    else:
        for name, good, detail in results:
            click.echo(f"{'WARN' if good is None else 'ok ' if good else 'ERR'} {name}: {detail}")
    if not ok:
        sys.exit(1)


# ---------------------------------------------------------------------------------- health


@main.command(epilog="Example (Docker HEALTHCHECK):\n\n  introloop health || echo unhealthy")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@pass_ctx
def health(ctx: Ctx, as_json: bool) -> None:
    """Exit 0 when the worker works (recent cycles, signed in, mail moving), else 1 and why.

    Reads the database only (fast, no mail server needed). Warnings are printed but keep 0.
    """
    from service.health import health_report

    warnings: list[str] = []
    try:
        problems, warnings = health_report(ctx.settings())
    except (ConfigError, DatabaseError) as exc:
        problems = [str(exc).splitlines()[0]]
    if as_json:
        _out({"ok": not problems, "problems": problems, "warnings": warnings})
    else:
        click.echo("healthy" if not problems else "\n".join(f"unhealthy: {p}" for p in problems))
        for w in warnings:
            click.echo(f"warning: {w}")
    sys.exit(1 if problems else 0)


# ---------------------------------------------------------------------------------- auth


@main.group(epilog="Examples:\n\n  introloop auth microsoft\n\n"
            "  introloop auth google --no-browser")
def auth() -> None:
    """Sign the service mailbox in with OAuth 2.0 (Gmail / Google Workspace, Microsoft 365).

    Needs INTROLOOP_OAUTH_CLIENT_ID (Google: and _SECRET) of the app you registered; README
    "Gmail and Microsoft 365" says how. The refresh token is stored encrypted in the database.
    """


_AUTH_OPTIONS = [
    click.option("--dry-run", is_flag=True,
                 help="Say what would be asked for and where it goes; contact nobody."),
    click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
]


def _auth_options(func: F) -> F:
    for option in reversed(_AUTH_OPTIONS):
        func = option(func)
    return func


@auth.command("google", epilog="Examples:\n\n  introloop auth google            # opens a browser "
              "here\n\n  introloop auth google --no-browser   # on a server: open the address "
              "elsewhere, paste back where it ends\n\n  introloop auth google --testing-app  "
              "# consent screen still in Testing: warn before day 7")
@click.option("--no-browser", is_flag=True,
              help="No browser on this machine: open the address elsewhere, paste back the "
              "address it ends on.")
@click.option("--port", default=0, type=int, show_default=True,
              help="Local port for the browser's redirect (0: any free port).")
@click.option("--testing-app", is_flag=True,
              help="The app's consent screen is in Testing (sign-ins last 7 days): alert in time.")
@_auth_options
@pass_ctx
@friendly
def auth_google(ctx: Ctx, no_browser: bool, port: int, testing_app: bool, dry_run: bool,
                as_json: bool) -> None:
    """Sign in with Google (installed-app flow) and store the refresh token."""
    _sign_in(ctx, "google", dry_run, as_json, no_browser=no_browser, port=port,
             testing_app=testing_app)


@auth.command("microsoft", epilog="Example:\n\n  introloop auth microsoft   # shows a code to "
              "enter at https://microsoft.com/devicelogin")
@_auth_options
@pass_ctx
@friendly
def auth_microsoft(ctx: Ctx, dry_run: bool, as_json: bool) -> None:
    """Sign in with Microsoft 365 (device code) and store the refresh token."""
    _sign_in(ctx, "microsoft", dry_run, as_json)


def _sign_in(ctx: Ctx, provider: str, dry_run: bool, as_json: bool, **flow: Any) -> None:
    from service.adapters.oauth import sign_in_and_store, sign_in_plan
    from service.app import SystemClock, build_engine

    # this command is how an operator switches to OAuth, whatever .env says so far
    settings = ctx.settings(provider=provider, auth="oauth")
    require_for_run(settings)
    plan = sign_in_plan(settings)
    if dry_run:
        if as_json:
            _out({"dry_run": True, **plan})
        else:
            click.echo(f"would sign {plan['account']} in with {plan['provider']} "
                       f"(client {plan['client_id']}, scopes {' '.join(plan['scopes'])}, "
                       f"token service {plan['endpoint']}) and store the refresh token "
                       f"encrypted in {plan['stored_in']}")
        return
    ask = (lambda text: click.prompt(text, err=True)) if flow.pop("no_browser", False) else None
    result = sign_in_and_store(
        settings, build_engine(settings), SystemClock().now(), ask=ask,
        say=lambda text: click.echo(text, err=True), **flow)
    if as_json:
        _out(result)
        return
    click.echo(f"signed in {result['account']} with {result['provider']}"
               + (f" (as {result['identity']})" if result["identity"] else "")
               + "; the refresh token is stored encrypted in the database")
    if result["refresh_expires_at"]:
        click.echo(f"it expires {result['refresh_expires_at'][:16]}: "
                   f"{result['expiry_reason']}; you will be e-mailed before then")
    if settings.provider != ctx.settings().provider:
        click.echo(f"now set INTROLOOP_PROVIDER={provider} in .env", err=True)
    click.echo("next: introloop check")


# ---------------------------------------------------------------------------------- inspect


@main.command(
    epilog="Examples:\n\n  introloop inspect intro.eml\n\n"
    "  introloop inspect --json mail/*.eml | jq .kind"
)
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
@pass_ctx
@friendly
def inspect(ctx: Ctx, files: tuple[Path, ...], as_json: bool) -> None:
    """Say what Introloop would make of each message file. Writes and sends nothing."""
    from service.inspect import inspect_files

    for result in inspect_files(ctx.settings(), files):
        if as_json:
            _out(result)
        else:
            click.echo(f"{result['file']}: {result['kind']}: {result['reason']}")
            if result["parties"]:
                click.echo(f"  referrer {result['referrer']}; parties "
                           + ", ".join(p["email"] for p in result["parties"]))
            if result["reply_text"] is not None and result["kind"] == "reply":
                click.echo(f"  reply text: {result['reply_text']!r}")
                click.echo(f"  outcome: {result['outcome']} ({result['confidence']})")


# ---------------------------------------------------------------------------------- referrals


@main.command(epilog="Example:\n\n  introloop referrals --json | jq '.[] | .outcome'")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@pass_ctx
@friendly
def referrals(ctx: Ctx, as_json: bool) -> None:
    """List referrals with each party's status and answer."""
    from service.queries import list_referrals

    rows = list_referrals(ctx.settings())
    if as_json:
        _out(rows)
        return
    if not rows:
        click.echo("no referrals yet")
    for r in rows:
        click.echo(f"#{r['id']} {r['introduced_at'][:10]} {r['referrer']} -> "
                   f"{', '.join(p['email'] for p in r['parties'])}: {r['outcome']}")
        for p in r["parties"]:
            click.echo(f"    {p['email']}: {p['status']}"
                       + (f" ({p['outcome']})" if p["outcome"] else ""))


# ---------------------------------------------------------------------------------- summary


@main.command(
    epilog="Examples:\n\n  introloop summary --month 2026-10\n\n"
    "  introloop summary --month 2026-10 --member alice@example.com --html alice.html\n\n"
    "  introloop summary --month 2026-10 --network --json\n\n"
    "  introloop summary --month 2026-10 --send --dry-run"
)
@click.option("--month", required=True, help="The month, as YYYY-MM.")
@click.option("--member", default=None, help="Only this member's summary.")
@click.option("--network", is_flag=True,
              help="The operator's summary of the whole network (to INTROLOOP_OPERATOR).")
@click.option("--send", is_flag=True, help="Queue and send them (each at most once, ever).")
@click.option("--dry-run", is_flag=True, help="With --send: say what would be sent, send nothing.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the (first) summary's HTML to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the summaries' data as JSON.")
@pass_ctx
@friendly
def summary(ctx: Ctx, month: str, member: str | None, network: bool, send: bool,
            dry_run: bool, html_file: Path | None, as_json: bool) -> None:
    """Preview, export or send the monthly summaries (members', or the network's)."""
    from service.app import build_loop
    from service.core.summary import Month

    try:
        m = Month.parse(month)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--month") from None
    if network and member:
        raise click.BadParameter("use either --member or --network", param_hint="--network")
    settings = ctx.settings()
    require_for_run(settings)
    loop = build_loop(settings)
    if send and not dry_run:
        report = loop.queue_network_summary(m) if network else loop.queue_summaries(m, member)
        report.merge(loop.flush_outbox())
        _print_report(report, as_json)
        return
    previews = loop.summary_previews(m, member=member, network=network)
    if as_json:
        _out([p.data() for p in previews])
    if not previews and not as_json:
        click.echo(f"nobody has anything to report for {m}" if member is None
                   else f"{member} is not a member")
    for p in previews:
        if html_file is not None:
            html_file.write_text(p.rendered.html, encoding="utf-8")
            click.echo(f"wrote {html_file}", err=True)
            html_file = None
        if not as_json:
            verb = ("already queued" if p.outbox_status else "would send") if p.wanted \
                else "nothing to report, not sent"
            click.echo(f"=== {p.to}: {p.rendered.subject} ({verb})")
            click.echo(p.rendered.text)


# ---------------------------------------------------------------------------------- members


@main.group(epilog="Example:\n\n  introloop members add alice@example.com --name 'Alice Martin'")
def members() -> None:
    """Manage the members who may create referrals."""


@members.command("add", epilog="Example:\n\n  introloop members add ann@x.com --name Ann "
                 "--timezone Europe/Paris --alias ann.private@gmail.com")
@click.argument("email")
@click.option("--name", default="", help="Display name.")
@click.option("--timezone", default=None, help="IANA timezone for their dates and summaries.")
@click.option("--alias", "aliases", multiple=True, help="Another address of theirs (repeatable).")
@click.option("--dry-run", is_flag=True, help="Validate, change nothing.")
@pass_ctx
@friendly
def members_add(ctx: Ctx, email: str, name: str, timezone: str | None,
                aliases: tuple[str, ...], dry_run: bool) -> None:
    """Add a member (or update their name, timezone and aliases)."""
    from service.queries import add_member

    click.echo(add_member(ctx.settings(), email, name, timezone, aliases, dry_run=dry_run))


@members.command("remove", epilog="Example:\n\n  introloop members remove ann@x.com")
@click.argument("email")
@click.option("--dry-run", is_flag=True, help="Say what would be removed, change nothing.")
@pass_ctx
@friendly
def members_remove(ctx: Ctx, email: str, dry_run: bool) -> None:
    """Remove a member (their referrals stay)."""
    from service.queries import remove_member

    click.echo(remove_member(ctx.settings(), email, dry_run=dry_run))


@members.command("list", epilog="Example:\n\n  introloop members list --json")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@pass_ctx
@friendly
def members_list(ctx: Ctx, as_json: bool) -> None:
    """List members with their aliases."""
    from service.queries import list_members

    rows = list_members(ctx.settings())
    if as_json:
        _out(rows)
        return
    if not rows:
        click.echo("no members yet: add one with `introloop members add EMAIL`")
    for m in rows:
        extra = f" aliases: {', '.join(m['aliases'])}" if m["aliases"] else ""
        tz = f" ({m['timezone']})" if m["timezone"] else ""
        click.echo(f"{m['email']} {m['name']}{tz}{extra}")


# ---------------------------------------------------------------------------------- quarantine


@main.group(epilog="Example:\n\n  introloop quarantine list")
def quarantine() -> None:
    """Messages that could not be processed, kept with their raw bytes and the reason."""


@quarantine.command(
    "list",
    epilog="Examples:\n\n  introloop quarantine list --json\n\n"
    "  introloop quarantine list --set-aside",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--all", "show_all", is_flag=True,
              help="Also rejected senders and ignored mail, not only failures.")
@click.option("--set-aside", "set_aside", is_flag=True,
              help="Only ignored or rejected mail from members, their other addresses and "
              "people we asked (what the daily set-aside alert lists).")
@pass_ctx
@friendly
def quarantine_list(ctx: Ctx, as_json: bool, show_all: bool, set_aside: bool) -> None:
    """List quarantined messages (and, with --all, rejected and ignored ones).

    Mail from a member, a member's alias or a person we asked that was set aside is marked
    [member], [alias] or [party]."""
    from service.queries import list_quarantine

    rows = list_quarantine(ctx.settings(), show_all=show_all, set_aside=set_aside)
    if as_json:
        _out(rows)
        return
    if not rows:
        click.echo("nothing set aside" if set_aside else "quarantine is empty")
    for r in rows:
        mark = f" [{r['set_aside']}]" if r["set_aside"] else ""
        click.echo(f"#{r['id']} {r['received_at'][:16]} {r['status']}/{r['kind'] or '-'} "
                   f"from {r['sender'] or '?'}{mark}: {r['reason']}")


@quarantine.command("show", epilog="Example:\n\n  introloop quarantine show 12 --raw > m.eml")
@click.argument("message_id", type=int)
@click.option("--raw", is_flag=True, help="Print the raw message bytes.")
@pass_ctx
@friendly
def quarantine_show(ctx: Ctx, message_id: int, raw: bool) -> None:
    """Show one stored message: its reason and headers (or its raw bytes)."""
    from service.queries import show_inbound

    data = show_inbound(ctx.settings(), message_id)
    if data is None:
        raise click.ClickException(f"no stored message #{message_id}")
    if raw:
        sys.stdout.buffer.write(data["raw"])
        return
    for key in ("id", "status", "kind", "reason", "sender", "subject", "message_id", "size",
                "received_at"):
        click.echo(f"{key}: {data[key]}")


@quarantine.command(
    "retry",
    epilog="Examples:\n\n  introloop quarantine retry 12\n\n  introloop quarantine retry --all",
)
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "retry_all", is_flag=True, help="Retry every quarantined message.")
@click.option("--dry-run", is_flag=True, help="Say what would be retried.")
@pass_ctx
@friendly
def quarantine_retry(ctx: Ctx, ids: tuple[int, ...], retry_all: bool, dry_run: bool) -> None:
    """Process quarantined messages again (after a fix), with progress.

    A rejected or ignored message can be named by id too, e.g. an intro from someone who
    was made a member after it arrived (`introloop quarantine list --all` shows them).
    """
    from service.app import build_loop
    from service.queries import quarantined_ids

    settings = ctx.settings()
    require_for_run(settings)
    targets = list(ids) or (quarantined_ids(settings) if retry_all else [])
    if not targets:
        raise click.UsageError("name message ids, or --all")
    if dry_run:
        click.echo("would retry: " + ", ".join(f"#{i}" for i in targets))
        return
    from service.queries import requeue_inbound

    loop = build_loop(settings)

    with click.progressbar(targets, label="retrying", file=sys.stderr) as bar:
        for i in bar:
            requeue_inbound(loop, i)
            kind, reason = loop.process_one(i)
            click.echo(f"\n#{i} {kind}: {reason}")
    report = loop.send_due()
    report.merge(loop.flush_outbox())
    _print_report(report, False)


# ---------------------------------------------------------------------------------- outbox


@main.group(invoke_without_command=True,
            epilog="Examples:\n\n  introloop outbox\n\n  introloop outbox --json\n\n"
            "  introloop outbox retry 42")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--status", default=None, help="Only rows with this status (pending/sent/failed).")
@click.pass_context
@friendly
def outbox(cctx: click.Context, as_json: bool, status: str | None) -> None:
    """List outgoing messages: pending, sent and failed, with reasons."""
    if cctx.invoked_subcommand is not None:
        return
    from service.queries import list_outbox

    rows = list_outbox(cctx.obj.settings(), status)
    if as_json:
        _out(rows)
        return
    if not rows:
        click.echo("outbox is empty")
    for r in rows:
        err = f" ({r['last_error']})" if r["last_error"] else ""
        click.echo(f"#{r['id']} {r['status']:<8} {r['kind']:<20} {r['to']}: {r['subject']}{err}")


@outbox.command("retry", epilog="Example:\n\n  introloop outbox retry 42")
@click.argument("outbox_id", type=int)
@click.option("--dry-run", is_flag=True, help="Say what would be re-queued.")
@pass_ctx
@friendly
def outbox_retry(ctx: Ctx, outbox_id: int, dry_run: bool) -> None:
    """Re-queue a failed message (it keeps its Message-ID)."""
    from service.queries import retry_outbox

    click.echo(retry_outbox(ctx.settings(), outbox_id, dry_run=dry_run))


# ---------------------------------------------------------------------------------- preview


@main.command(
    epilog="Examples:\n\n  introloop preview feedback_request\n\n"
    "  introloop preview --all --out /tmp/introloop-preview\n\n"
    "  INTROLOOP_TEMPLATES_DIR=my-templates introloop preview lessons --json\n\n"
    "Writes OUT/NAME.html, .txt and .eml and, with Chromium and Playwright installed, "
    "OUT/NAME-phone.png and OUT/NAME-desktop.png."
)
@click.argument("template", required=False)
@click.option("--all", "all_", is_flag=True, help="Every message template.")
@click.option("--out", "out_dir", default="preview", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Where to write the files.")
@click.option("--no-screenshots", is_flag=True, help="Skip the PNGs even if Chromium is here.")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
@pass_ctx
@friendly
def preview(ctx: Ctx, template: str | None, all_: bool, out_dir: Path, no_screenshots: bool,
            as_json: bool) -> None:
    """Render a message template with sample data (HTML, text, .eml, screenshots)."""
    from contextlib import ExitStack

    from service import browser as br
    from service.adapters.templates import Renderer
    from service.preview import SAMPLES, Sample, write_preview

    try:
        settings: Settings | None = ctx.settings()
    except ConfigError:
        settings = None  # a preview needs no mailbox: fall back to the shipped defaults
    override = settings.templates_dir if settings else None
    renderer = Renderer(override)
    names = renderer.names()
    if all_ == bool(template):
        raise click.UsageError("give a TEMPLATE or --all; templates: " + ", ".join(names))
    if template and template not in names:
        raise click.UsageError(f"no template {template!r}; templates: " + ", ".join(names))
    wanted = names if all_ else [template or ""]
    if settings is not None:
        sample = Sample(network_name=settings.network_name, address=settings.address)
    else:
        sample = Sample()
    missing = None if no_screenshots else br.available()
    results, errors, skipped = [], [], []
    with ExitStack() as stack:
        b = stack.enter_context(br.browser()) if not no_screenshots and not missing else None
        for name in wanted:
            try:
                results.append(write_preview(renderer, name, out_dir, sample=sample,
                                             screenshots=not no_screenshots, browser=b))
            except TemplateError as exc:
                if all_ and name not in SAMPLES:
                    skipped.append(name)  # --all: a message without sample data is no error
                else:
                    errors.append((name, str(exc)))
    if as_json:
        _out({"written": [{"template": r.name, "subject": r.subject,
                           "files": [str(f) for f in r.files]} for r in results],
              "errors": [{"template": n, "error": e} for n, e in errors],
              "skipped_no_sample": skipped,
              "screenshots": None if (missing or no_screenshots) else "written",
              "screenshots_missing": missing})
    else:
        for r in results:
            click.echo(f"{r.name}: {r.subject}")
            for f in r.files:
                click.echo(f"  wrote {f}")
        for name, error in errors:
            click.echo(f"error: {name}: {error}", err=True)
        if skipped:
            click.echo(f"skipped (no sample data in service/preview.py): {', '.join(skipped)}",
                       err=True)
        if missing and not no_screenshots:
            click.echo(f"no screenshots: {missing}; the .html files open in any browser",
                       err=True)
    if errors:
        sys.exit(1)


# ---------------------------------------------------------------------------------- review


@main.command(
    epilog="Examples:\n\n  introloop review                 # list unclear replies\n\n"
    "  introloop review 7 positive       # settle reply #7"
)
@click.argument("reply_id", type=int, required=False)
@click.argument("verdict", type=click.Choice(["positive", "negative", "pending", "optout"]),
                required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the unclear replies as JSON.")
@click.option("--dry-run", is_flag=True, help="Say what settling would do, change nothing.")
@pass_ctx
@friendly
def review(ctx: Ctx, reply_id: int | None, verdict: str | None, as_json: bool,
           dry_run: bool) -> None:
    """List replies waiting for a person, or settle one (same effect as an automatic verdict)."""
    from service.core.model import Outcome
    from service.queries import list_unclear

    settings = ctx.settings()
    if reply_id is None:
        rows = list_unclear(settings)
        if as_json:
            _out(rows)
            return
        if not rows:
            click.echo("no replies are waiting for a person")
        for r in rows:
            click.echo(f"#{r['id']} {r['from']} about referral #{r['referral_id']}: "
                       f"{r['text']!r} ({r['rule']})")
        return
    if verdict is None:
        raise click.UsageError("give a verdict: positive, negative, pending or optout")
    if dry_run:
        click.echo(f"would settle reply #{reply_id} as {verdict}")
        return
    from service.app import build_loop

    require_for_run(settings)
    loop = build_loop(settings)
    with loop.session() as s:
        _, reason = loop.settle(s, reply_id, Outcome(verdict), "cli")
    click.echo(reason)
    _print_report(loop.flush_outbox(), False)


if __name__ == "__main__":
    main()
