"""XOAUTH2 / OAUTHBEARER against real servers: Dovecot with its `oauth2` passdb checks each bearer
token at a token-introspection endpoint run by this test (RFC 7662), and Postfix offers
Dovecot's SASL for SMTP AUTH. A good token signs in; a bad or expired one fails with a clear
one-line message. Last, the whole service (`introloop run --once`) with INTROLOOP_PROVIDER=google
pointed at these servers and at a local Google token service.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from service.adapters.db import make_engine, migrate
from service.adapters.imap import ImapMailbox, MailboxError
from service.adapters.oauth import Grant, OAuthApp, OAuthError, store_sign_in
from service.adapters.smtp import SmtpSender
from service.cli import main
from service.ports import PermanentFailure, TemporaryFailure

pytestmark = pytest.mark.servers
SERVICE = "referrals@example.test"
USERS = (SERVICE, "alice@example.test", "bob@example.test", "carol@example.test")


def _load(name: str, file: str) -> ModuleType:
    """A helper module of tests/, imported by path (tests/ is not a package)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(file))
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


servers = _load("introloop_test_servers", "servers.py")
fakes = _load("introloop_oauth_fakes", "oauth_fakes.py")


class Introspection:
    """The token-introspection endpoint Dovecot asks: which bearer tokens are live, for whom."""

    def __init__(self, server: HTTPServer):
        self.live: dict[str, str] = {}  # token -> user
        self.asked: list[str] = []
        server.expect_request("/introspect", method="POST").respond_with_handler(self.answer)

    def answer(self, request: Request) -> Response:
        token = request.form.get("token", "")
        self.asked.append(token)
        user = self.live.get(token)
        body = {"active": True, "username": user, "scope": "mail"} if user else {"active": False}
        return Response(json.dumps(body), content_type="application/json")


@pytest.fixture(scope="module")
def oauth_stack(server_tmp: Path) -> Iterator[tuple[Any, Introspection]]:
    """Dovecot + Postfix in OAuth mode, with the introspection endpoint they ask."""
    missing = servers.MailStack.missing()
    if missing:
        reason = f"mail servers unavailable, missing: {'; '.join(missing)}"
        if os.environ.get("INTROLOOP_REQUIRE_SERVERS") == "1":
            pytest.fail(f"INTROLOOP_REQUIRE_SERVERS=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    http = HTTPServer(host="127.0.0.1", port=0)
    http.start()
    introspection = Introspection(http)
    stack = servers.MailStack.start(
        Path(tempfile.mkdtemp(prefix="oauthstack-", dir=server_tmp)), USERS,
        oauth2_introspection_url=http.url_for("/introspect"))
    yield stack, introspection
    stack.stop()
    http.stop()


class Tokens:
    """A TokenSource handing out the given tokens in turn (the next one after `invalidate`)."""

    def __init__(self, *tokens: str):
        self.account = SERVICE
        self.tokens = list(tokens)
        self.invalidated = 0

    def access_token(self) -> str:
        if not self.tokens:
            raise OAuthError("Google refused to refresh the sign-in: invalid_grant; run "
                             "`introloop auth google` again")
        return self.tokens[0]

    def invalidate(self) -> None:
        self.invalidated += 1
        self.tokens.pop(0)


def mailbox(stack: Any, tokens: Tokens, signins: list[Any], **kw: Any) -> ImapMailbox:
    return ImapMailbox(stack.host, stack.imap_port, SERVICE, "", tls="none", tokens=tokens,
                       on_signin=lambda ch, err: signins.append((ch, err)), **kw)


@pytest.mark.parametrize("sasl", [("XOAUTH2",), ("OAUTHBEARER",)])
def test_imap_signs_in_with_a_good_token(oauth_stack, sasl) -> None:
    stack, introspection = oauth_stack
    introspection.live["good-imap-token"] = SERVICE
    signins: list[Any] = []
    mb = mailbox(stack, Tokens("good-imap-token"), signins, sasl=sasl)
    assert mb.uidvalidity()
    mb.close()
    assert signins == [("imap", None)] and "good-imap-token" in introspection.asked
    log = stack.dovecot_log.read_text()
    assert f"user=<{SERVICE}>, method={sasl[0]}" in log


def test_imap_refuses_an_expired_token_clearly_then_the_refreshed_one_works(oauth_stack) -> None:
    stack, introspection = oauth_stack
    introspection.live["fresh-token"] = SERVICE  # "stale-token" is unknown: expired
    signins: list[Any] = []
    tokens = Tokens("stale-token", "fresh-token")
    mb = mailbox(stack, tokens, signins, sasl=("XOAUTH2",))
    with pytest.raises(MailboxError) as err:
        mb.connect()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"IMAP 127.0.0.1:{stack.imap_port} (none) refused the OAuth token "
                              f"(XOAUTH2) for {SERVICE}: [AUTHENTICATIONFAILED]")
    assert "mail scope" in message and tokens.invalidated == 1
    assert signins == [("imap", message)]
    assert mb.uidvalidity()  # the next connect uses the refreshed token
    mb.close()
    assert signins[-1] == ("imap", None)


def test_imap_reports_a_refresh_that_fails(oauth_stack) -> None:
    stack, _ = oauth_stack
    signins: list[Any] = []
    with pytest.raises(MailboxError, match="invalid_grant; run `introloop auth google` again"):
        mailbox(stack, Tokens(), signins).connect()
    assert signins[0][0] == "imap" and "invalid_grant" in signins[0][1]


def message(to: str, subject: str) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = SERVICE, to, subject
    m["Message-ID"] = f"<{subject.replace(' ', '-')}@example.test>"
    m.set_content("sent with an OAuth sign-in")
    return m.as_bytes()


@pytest.mark.parametrize("sasl", [("XOAUTH2",), ("OAUTHBEARER",)])
def test_smtp_sends_through_postfix_with_a_good_token(oauth_stack, sasl) -> None:
    stack, introspection = oauth_stack
    introspection.live["good-smtp-token"] = SERVICE
    signins: list[Any] = []
    sender = SmtpSender(stack.host, stack.smtp_port, user=SERVICE, tls="none", sasl=sasl,
                        tokens=Tokens("good-smtp-token"),
                        on_signin=lambda ch, err: signins.append((ch, err)))
    subject = f"hello via {sasl[0]}"
    sender.send(message("alice@example.test", subject), SERVICE, ["alice@example.test"],
                "m@example.test")
    sender.close()
    assert signins == [("smtp", None)]
    got = stack.wait_for("alice@example.test", 1)
    assert any(subject.encode() in raw for raw in got)


def test_smtp_refuses_a_bad_token_clearly(oauth_stack) -> None:
    stack, _ = oauth_stack
    signins: list[Any] = []
    tokens = Tokens("forged-token", "another-bad-one")
    sender = SmtpSender(stack.host, stack.smtp_port, user=SERVICE, tls="none",
                        sasl=("XOAUTH2",), tokens=tokens,
                        on_signin=lambda ch, err: signins.append((ch, err)))
    # (a refused login keeps the message queued: a TemporaryFailure where that is wired)
    with pytest.raises((PermanentFailure, TemporaryFailure)) as err:
        sender.send(message("bob@example.test", "never"), SERVICE, ["bob@example.test"], "n")
    text = str(err.value)
    assert "\n" not in text and "refused the OAuth token (XOAUTH2)" in text
    assert "535" in text and tokens.invalidated == 1
    assert signins[0][0] == "smtp" and "535" in signins[0][1]


def test_whole_service_with_google_oauth_on_real_servers(oauth_stack, tmp_path,
                                                         monkeypatch) -> None:
    """`introloop run --once` signs in to IMAP and SMTP with tokens it refreshes itself."""
    stack, introspection = oauth_stack
    google, bundle = fakes.https_server(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    fake = fakes.FakeGoogle(google)

    def issue(request: Request) -> Response:  # whatever Google issues, Dovecot accepts
        response = fake.token(request)
        body = json.loads(response.get_data())
        if "access_token" in body:
            introspection.live[body["access_token"]] = SERVICE
        return response

    google.clear()
    google.expect_request("/token", method="POST").respond_with_handler(issue)
    env = {
        "INTROLOOP_ADDRESS": SERVICE, "INTROLOOP_NETWORK_NAME": "Test Network",
        "INTROLOOP_OPERATOR": "carol@example.test", "INTROLOOP_SECRET": "s" * 32,
        "INTROLOOP_DATA_DIR": str(tmp_path / "data"), "INTROLOOP_FEEDBACK_DELAY": "0s",
        "INTROLOOP_TIMEZONE": "UTC", "INTROLOOP_QUIET_HOURS": "",
        # the three values of a Google operator ...
        "INTROLOOP_PROVIDER": "google",
        "INTROLOOP_OAUTH_CLIENT_ID": "cid.apps.googleusercontent.com",
        "INTROLOOP_OAUTH_CLIENT_SECRET": "csecret",
        # ... and what points the preset at the servers of this test instead of Google's
        "INTROLOOP_IMAP_HOST": stack.host, "INTROLOOP_IMAP_PORT": str(stack.imap_port),
        "INTROLOOP_IMAP_TLS": "none", "INTROLOOP_SMTP_HOST": stack.host,
        "INTROLOOP_SMTP_PORT": str(stack.smtp_port), "INTROLOOP_SMTP_TLS": "none",
        "INTROLOOP_OAUTH_TOKEN_URL": fake.url,
    }

    def cli(*args: str, expect: int = 0) -> str:
        result = CliRunner().invoke(main, ["--env-file", "/nonexistent", *args], env=env)
        assert result.exit_code == expect, result.output
        return result.output

    # `introloop auth google` ran earlier: a refresh token, and an access token long expired
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'introloop.db'}")
    migrate(engine)
    past = datetime.now(UTC) - timedelta(days=1)
    app = OAuthApp("google", "cid.apps.googleusercontent.com", "csecret", token_url=fake.url)
    store_sign_in(engine, b"s" * 32, app, SERVICE,
                  Grant(state={"refresh_token": "rt-1", "token": "at-0"}, access_token="at-0",
                        access_expires_at=past), past)

    cli("members", "add", "alice@example.test")
    intro = EmailMessage()
    intro["From"], intro["To"] = "alice@example.test", "bob@example.test, carol@example.test"
    intro["Subject"], intro["Message-ID"] = "Intro: Bob <> Carol", "<intro-oauth@example.test>"
    intro.set_content("Bob, meet Carol.")
    stack.send(intro.as_bytes(), "alice@example.test",
               ["bob@example.test", "carol@example.test", SERVICE])
    stack.wait_for(SERVICE, 1)

    report = json.loads(cli("run", "--once", "--json").strip().splitlines()[-1])
    assert [p[1] for p in report["processed"]] == ["intro"]
    assert sorted(s[1] for s in report["sent"]) == ["bob@example.test", "carol@example.test"]
    assert [g["grant_type"] for g in fake.grants] == ["refresh_token"]  # one refresh for both
    log = stack.dovecot_log.read_text()
    assert f"user=<{SERVICE}>, method=OAUTHBEARER" in log
    assert any(b"Intro: Bob" in raw for raw in stack.wait_for("bob@example.test", 1))

    out = next(x for x in cli("check", "--json").splitlines() if x.startswith('{"ok"'))
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["imap"]["ok"] and checks["smtp"]["ok"] and checks["oauth"]["ok"]
    assert "google OAuth for referrals@example.test" in checks["oauth"]["detail"]

    # Google revokes the sign-in and the access token dies: one clear line, no traceback
    fake.revoked = True
    introspection.live.clear()
    failed = CliRunner().invoke(main, ["--env-file", "/nonexistent", "run", "--once"], env=env)
    assert failed.exit_code == 1 and "Traceback" not in failed.output
    assert "refused the OAuth token" in failed.output
    again = CliRunner().invoke(main, ["--env-file", "/nonexistent", "run", "--once"], env=env)
    errors = [line for line in again.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: IMAP sign-in for {SERVICE}: Google refused to refresh the sign-in:"
                      " invalid_grant: Token has been expired or revoked.; run `introloop auth "
                      "google` again (Google revokes sign-ins after a password change, when "
                      "access is removed, after 6 months unused, and after 7 days for apps "
                      "still in Testing)"]
    health = CliRunner().invoke(main, ["--env-file", "/nonexistent", "health", "--json"], env=env)
    verdict = json.loads(next(x for x in health.output.splitlines() if x.startswith('{"ok"')))
    assert verdict["ok"] is True  # sign-in failures get 15 minutes of grace before they count
    google.stop()
