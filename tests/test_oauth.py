"""OAuth sign-in and token refresh with the providers' own libraries against token services run
here (HTTPS with a throwaway CA, no internet): google-auth / google-auth-oauthlib and msal.

What must hold: the interactive sign-in stores the refresh token encrypted; access tokens are
refreshed before they expire and shared through the database; a rotated refresh token is
saved every time; a revoked one fails with a one-line message, is recorded, and raises the
operator alert.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
import urllib.request
import webbrowser
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner
from pytest_httpserver import HTTPServer
from sqlmodel import Session

from service.adapters.db import make_engine, migrate
from service.adapters.oauth import (
    GOOGLE_SCOPES,
    Cipher,
    GoogleTokens,
    MicrosoftTokens,
    OAuthApp,
    OAuthError,
    StoredTokens,
    store_sign_in,
    stored_sign_in,
)
from service.adapters.tables import OAuthToken, as_utc
from service.alerts import current_alerts
from service.app import FrozenClock
from service.cli import main
from service.config import load_settings


def _load_fakes() -> ModuleType:
    """tests/oauth_fakes.py, imported by path (tests/ is not a package)."""
    name = "introloop_oauth_fakes"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(
            "oauth_fakes.py"))
        assert spec is not None and spec.loader is not None
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


fakes = _load_fakes()
FakeGoogle, FakeMicrosoft, ACCOUNT = fakes.FakeGoogle, fakes.FakeMicrosoft, fakes.ACCOUNT
SECRET = b"s" * 32
NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def https(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HTTPServer]:
    """A local HTTPS server whose CA the provider libraries (requests) trust."""
    server, bundle = fakes.https_server(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    yield server
    server.clear()
    if server.is_running():
        server.stop()


@pytest.fixture
def engine(tmp_path: Path):
    eng = make_engine(f"sqlite:///{tmp_path / 'introloop.db'}")
    migrate(eng)
    return eng


def stored_state(engine: Any, provider: str) -> dict[str, Any]:
    row = stored_sign_in(engine, ACCOUNT)
    assert row is not None
    return Cipher(SECRET).open(row.state, ACCOUNT, provider)


# ------------------------------------------------------------------------------ Google


def google_app(fake: FakeGoogle) -> OAuthApp:
    return OAuthApp(provider="google", client_id="cid.apps.googleusercontent.com",
                    client_secret="csecret", token_url=fake.url,
                    auth_url="https://accounts.google.test/o/oauth2/auth")


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stands in for the operator's browser: consents and follows the redirect to localhost."""
    opened: list[str] = []

    class Browser:
        def open(self, url: str, new: int = 1, autoraise: bool = True) -> bool:
            opened.append(url)
            q = parse_qs(urlsplit(url).query)
            target = (f"{q['redirect_uri'][0]}?state={q['state'][0]}&code=the-code"
                      f"&scope={'+'.join(GOOGLE_SCOPES)}")

            def follow() -> None:
                time.sleep(0.05)
                urllib.request.urlopen(target, timeout=10).read()

            threading.Thread(target=follow, daemon=True).start()
            return True

    monkeypatch.setattr(webbrowser, "get", lambda *a, **k: Browser())
    return opened


def test_google_browser_sign_in_stores_the_refresh_token_encrypted(https, engine,
                                                                   browser) -> None:
    fake = FakeGoogle(https)
    app = google_app(fake)
    grant = GoogleTokens(app).sign_in(login_hint=ACCOUNT, say=print, ask=None, open_browser=True,
                                      port=0, testing_app=True, now=NOW)
    q = parse_qs(urlsplit(browser[0]).query)
    assert q["login_hint"] == [ACCOUNT] and q["prompt"] == ["consent"]
    assert q["access_type"] == ["offline"] and q["code_challenge_method"] == ["S256"]
    assert set(q["scope"][0].split()) == set(GOOGLE_SCOPES)
    assert grant.identity == ACCOUNT and grant.access_token == "at-1"
    assert grant.refresh_expires_at == NOW + timedelta(days=7)  # an app in Testing

    store_sign_in(engine, SECRET, app, ACCOUNT, grant, NOW)
    with Session(engine) as s:
        row = s.get(OAuthToken, ACCOUNT)
        assert row is not None and b"rt-1" not in row.state  # encrypted at rest
    assert stored_state(engine, "google")["refresh_token"] == "rt-1"


def test_google_paste_sign_in_checks_the_state(https, engine) -> None:
    fake = FakeGoogle(https)
    fake.lifetime = 3 * 86400  # Google said how long this sign-in lasts
    said: list[str] = []

    def paste(_prompt: str) -> str:
        url = next(line.strip() for text in said for line in text.splitlines()
                   if line.strip().startswith("https://accounts.google.test/"))
        state = parse_qs(urlsplit(url).query)["state"][0]
        return f"http://localhost:8765/?state={state}&code=the-code&scope=x"

    grant = GoogleTokens(google_app(fake)).sign_in(
        login_hint=ACCOUNT, say=said.append, ask=paste, open_browser=False, port=0,
        testing_app=False, now=NOW)
    assert grant.refresh_expires_at == NOW + timedelta(days=3)
    with pytest.raises(OAuthError, match="another sign-in attempt"):
        GoogleTokens(google_app(fake)).sign_in(
            login_hint=ACCOUNT, say=said.append, ask=lambda _p: "http://localhost:8765/?"
            "state=forged&code=the-code", open_browser=False, port=0, testing_app=False,
            now=NOW)


def google_source(engine: Any, fake: FakeGoogle, clock: FrozenClock) -> StoredTokens:
    return StoredTokens(engine, google_app(fake), ACCOUNT, SECRET, clock=clock)


def seed_google(engine: Any, fake: FakeGoogle, expires_in: timedelta) -> None:
    from service.adapters.oauth import Grant

    grant = Grant(state={"refresh_token": "rt-1", "token": "at-0"}, access_token="at-0",
                  access_expires_at=NOW + expires_in)
    store_sign_in(engine, SECRET, google_app(fake), ACCOUNT, grant, NOW)


def test_google_refresh_before_expiry_and_every_rotation_is_saved(https, engine) -> None:
    fake = FakeGoogle(https)
    fake.rotate = True
    seed_google(engine, fake, timedelta(minutes=30))
    clock = FrozenClock(NOW)
    tokens = google_source(engine, fake, clock)
    assert tokens.access_token() == "at-0"  # still valid for 30 min: no request
    assert fake.grants == []

    clock.advance(timedelta(minutes=26))  # 4 min left: refreshed ahead of expiry
    assert tokens.access_token() == "at-1"
    assert [g["refresh_token"] for g in fake.grants] == ["rt-1"]
    assert stored_state(engine, "google")["refresh_token"] == "rt-2"  # rotated: saved

    other_worker = google_source(engine, fake, clock)  # shares the row, not the memory
    assert other_worker.access_token() == "at-1" and len(fake.grants) == 1

    clock.advance(timedelta(minutes=56))
    assert tokens.access_token() == "at-2"
    assert [g["refresh_token"] for g in fake.grants] == ["rt-1", "rt-2"]  # the rotated one
    assert stored_state(engine, "google")["refresh_token"] == "rt-3"
    row = stored_sign_in(engine, ACCOUNT)
    assert row is not None and row.refreshed_at is not None and row.failing_since is None


def test_google_revoked_refresh_token_fails_clearly_and_raises_the_alert(https, engine,
                                                                         tmp_path) -> None:
    fake = FakeGoogle(https)
    seed_google(engine, fake, timedelta(minutes=1))
    fake.revoked = True
    clock = FrozenClock(NOW)
    with pytest.raises(OAuthError) as err:
        google_source(engine, fake, clock).access_token()
    message = str(err.value)
    assert "\n" not in message and "invalid_grant" in message
    assert "run `introloop auth google` again" in message
    row = stored_sign_in(engine, ACCOUNT)
    assert row is not None and as_utc(row.failing_since) == NOW
    assert "invalid_grant" in (row.last_error or "")

    settings = load_settings(None, {
        "address": ACCOUNT, "network_name": "T", "operator": "operator@example.test",
        "secret": SECRET.decode(), "data_dir": tmp_path, "provider": "google",
        "oauth_client_id": "cid.apps.googleusercontent.com", "oauth_client_secret": "csecret"})
    later = NOW + timedelta(minutes=20)
    [alert] = current_alerts(engine, settings, later)
    assert alert.cause == "signin" and "invalid_grant" in alert.detail

    fake.revoked = False  # the operator ran `introloop auth google` again: the alert stops
    seed_google(engine, fake, timedelta(hours=1))
    assert current_alerts(engine, settings, later) == []


def test_a_changed_secret_is_a_one_line_error(https, engine) -> None:
    fake = FakeGoogle(https)
    seed_google(engine, fake, timedelta(minutes=1))
    tokens = StoredTokens(engine, google_app(fake), ACCOUNT, b"another-secret-0123456789",
                          clock=FrozenClock(NOW))
    with pytest.raises(OAuthError, match="cannot be read with this INTROLOOP_SECRET"):
        tokens.access_token()


# ------------------------------------------------------------------------------ Microsoft


def microsoft_app(fake: FakeMicrosoft) -> OAuthApp:
    return OAuthApp(provider="microsoft", client_id=fake.CLIENT, authority=fake.authority)


def test_microsoft_device_sign_in_then_refresh_saves_each_rotated_token(https, engine) -> None:
    fake = FakeMicrosoft(https)
    said: list[str] = []
    grant = MicrosoftTokens(microsoft_app(fake)).sign_in(login_hint=ACCOUNT, say=said.append,
                                                         now=NOW)
    assert "ABCD-EFGH" in said[0] and grant.identity == ACCOUNT
    assert grant.refresh_expires_at == NOW + timedelta(days=90)
    store_sign_in(engine, SECRET, microsoft_app(fake), ACCOUNT, grant, NOW)
    assert "ms-rt-1" in stored_state(engine, "microsoft")["cache"]

    clock = FrozenClock(NOW + timedelta(minutes=58))  # 2 min left on ms-at-1
    tokens = StoredTokens(engine, microsoft_app(fake), ACCOUNT, SECRET, clock=clock)
    assert tokens.access_token() == "ms-at-2"
    assert fake.grants[-1]["refresh_token"] == "ms-rt-1"
    cache = stored_state(engine, "microsoft")["cache"]
    assert "ms-rt-2" in cache and "ms-rt-1" not in cache  # the rotated one replaced it
    row = stored_sign_in(engine, ACCOUNT)
    assert row is not None and as_utc(row.refresh_expires_at) == clock.now() + timedelta(days=90)

    clock.advance(timedelta(hours=1))
    fresh_process = StoredTokens(engine, microsoft_app(fake), ACCOUNT, SECRET, clock=clock)
    assert fresh_process.access_token() == "ms-at-3"
    assert fake.grants[-1]["refresh_token"] == "ms-rt-2"


def test_microsoft_revoked_sign_in_fails_with_one_line(https, engine) -> None:
    fake = FakeMicrosoft(https)
    grant = MicrosoftTokens(microsoft_app(fake)).sign_in(login_hint=ACCOUNT, say=print, now=NOW)
    store_sign_in(engine, SECRET, microsoft_app(fake), ACCOUNT, grant, NOW)
    fake.revoked = True
    tokens = StoredTokens(engine, microsoft_app(fake), ACCOUNT, SECRET,
                          clock=FrozenClock(NOW + timedelta(hours=2)))
    with pytest.raises(OAuthError) as err:
        tokens.access_token()
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("Microsoft would not refresh the sign-in: invalid_grant: "
                                     "AADSTS70008")
    assert "run `introloop auth microsoft` again" in str(err.value)


def test_cli_auth_microsoft_signs_in_and_check_shows_it(https, tmp_path, monkeypatch) -> None:
    fake = FakeMicrosoft(https)
    env = {"INTROLOOP_ADDRESS": ACCOUNT, "INTROLOOP_NETWORK_NAME": "T",
           "INTROLOOP_SECRET": SECRET.decode(), "INTROLOOP_DATA_DIR": str(tmp_path),
           "INTROLOOP_OAUTH_CLIENT_ID": fake.CLIENT, "INTROLOOP_OAUTH_AUTHORITY": fake.authority,
           "INTROLOOP_OPERATOR": "operator@example.test"}
    runner = CliRunner()
    dry = runner.invoke(main, ["--env-file", "/nonexistent", "auth", "microsoft", "--dry-run",
                               "--json"], env=env)
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.output)
    assert plan["account"] == ACCOUNT and plan["endpoint"] == fake.authority
    assert fake.grants == []  # a dry run asks nobody

    result = runner.invoke(main, ["--env-file", "/nonexistent", "auth", "microsoft"], env=env)
    assert result.exit_code == 0, result.output
    assert "ABCD-EFGH" in result.output
    assert f"signed in {ACCOUNT} with microsoft" in result.output
    assert "now set INTROLOOP_PROVIDER=microsoft" in result.output

    env["INTROLOOP_PROVIDER"] = "microsoft"
    env["INTROLOOP_IMAP_HOST"] = env["INTROLOOP_SMTP_HOST"] = ""  # no servers in this test
    status = runner.invoke(main, ["--env-file", "/nonexistent", "check", "--json"], env=env)
    checks = {c["name"]: c for c in json.loads(status.output)["checks"]}
    assert checks["oauth"]["ok"] and "microsoft OAuth for referrals@example.test" in \
        checks["oauth"]["detail"]

    bad = runner.invoke(main, ["--env-file", "/nonexistent", "auth", "microsoft"],
                        env={**env, "INTROLOOP_OAUTH_CLIENT_ID": "wrong-client"})
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    # (the other lines are this test's token server logging through the CLI's log setup)
    assert [line for line in bad.output.splitlines() if "error" in line[:6]] == [
        "error: Microsoft would not start the device sign-in: unauthorized_client: AADSTS700016: "
        "Application with identifier 'wrong-client' was not found in the directory.; run "
        "`introloop auth microsoft` again"]


def test_auth_needs_the_client_id(tmp_path) -> None:
    env = {"INTROLOOP_ADDRESS": ACCOUNT, "INTROLOOP_NETWORK_NAME": "T",
           "INTROLOOP_SECRET": SECRET.decode(), "INTROLOOP_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(main, ["--env-file", "/nonexistent", "auth", "google"], env=env)
    assert result.exit_code == 1
    assert "INTROLOOP_OAUTH_CLIENT_ID is not set" in result.output
    assert "INTROLOOP_OAUTH_CLIENT_SECRET is not set" in result.output
