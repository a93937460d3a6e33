"""Real mail and database servers on 127.0.0.1, started and stopped by the test suite.

This is the project's Python version of the recipe in ``notes/mailservers.md``:

* :class:`MailStack`: Dovecot (IMAP + LMTP) and a private Postfix instance (SMTP) that
  accepts mail only for the listed ``@example.test`` users and hands it to Dovecot over LMTP.
  Nothing can leave the machine: Postfix has no ``smtp`` client service at all.
* :class:`PgCluster`: a throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``).

Everything an instance writes (configs, sockets, queue, mail, logs, data) lives under the
``root`` directory its caller hands in; nothing under ``/etc`` is read or written except for
creating the ``vmail`` system user when it is missing. Ports are picked free at start and
the start is retried on fresh ports if another process grabbed one in the meantime, so
several test sessions on one machine can run side by side.

Mail servers need root (Postfix's ``master`` and Dovecot's privilege separation). PostgreSQL
refuses root, so as root it runs as the ``postgres`` user via ``runuser``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import smtplib
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from imapclient import IMAPClient

HOST = "127.0.0.1"
DOMAIN = "example.test"
MAIL_UID_USER = "vmail"
# Daemons live outside the user's PATH for non-root shells on Debian.
_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
)
_DOVECOT_LIBEXEC = ("/usr/lib/dovecot", "/usr/libexec/dovecot")
_START_ATTEMPTS = 5

# Every live server object, so an interpreter exit without fixture teardown
# (Ctrl-C twice, an exception in a session hook) does not leave daemons behind.
_LIVE: set[MailStack | PgCluster] = set()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


class ServerError(RuntimeError):
    """A server did not start or stop as expected; the message carries its log tail."""


# ----------------------------------------------------------------------------- helpers


def _which(name: str) -> str | None:
    return shutil.which(name, path=_SEARCH_PATH)


def _free_ports(count: int) -> list[int]:
    """Ports free right now, all different (the sockets are held open together)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _greeting(port: int, timeout: float = 2.0) -> bytes | None:
    """First line a server sends on ``port``, or None if nothing answers (yet)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            return s.makefile("rb").readline()
    except OSError:
        return None


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as gone (it waits only to be reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path} unreadable)"
    return f"--- last lines of {path}:\n" + "\n".join(text[-lines:])


def _wait(
    predicate: Callable[[], bool], timeout: float, what: str, log: Path | None = None
) -> None:
    """Poll ``predicate`` until true; on timeout raise ServerError with ``log``'s tail."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ServerError(
                f"timed out after {timeout} s waiting for {what}"
                + (f"\n{_tail(log)}" if log else "")
            )
        time.sleep(0.02)


def _backdate(*paths: Path) -> None:
    """Set mtime 10 s back: Postfix re-reads files younger than ~1 s until they "cool down"."""
    then = time.time() - 10
    for p in paths:
        os.utime(p, (then, then))


def _rcpt_code(client: type[smtplib.SMTP], port: int, addr: str) -> int:
    """Reply code to ``RCPT TO:<addr>`` on an SMTP or LMTP server (no mail is sent)."""
    with client(HOST, port, timeout=10) as s:
        s.ehlo_or_helo_if_needed()
        s.mail("probe@example.test")
        code, _ = s.rcpt(addr)
        s.rset()
    return code


def _ensure_mail_user() -> pwd.struct_passwd:
    """The ``vmail`` user that owns all Maildirs; created if missing (CI does it too)."""
    try:
        return pwd.getpwnam(MAIL_UID_USER)
    except KeyError:
        pass
    # Two sessions may race here; whichever loses gets "already exists" and reads it back.
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            MAIL_UID_USER,
        ],
        check=False,
        capture_output=True,
    )
    return pwd.getpwnam(MAIL_UID_USER)


def _check_address(addr: str) -> str:
    local, sep, domain = addr.lower().partition("@")
    if not sep or domain != DOMAIN or not local or "+" in local:
        raise ValueError(f"test users must be plain local@{DOMAIN} addresses, got {addr!r}")
    return f"{local}@{domain}"


# ----------------------------------------------------------------------------- mail


class MailStack:
    """Dovecot (IMAP + LMTP) and Postfix (SMTP → LMTP) for ``@example.test`` users.

    Create with :meth:`start`; every user's password is its local part + ``"pw"``.
    Attributes: ``host``, ``imap_port``, ``smtp_port``, ``lmtp_port``, ``root``, ``users``
    and ``timings`` (seconds per start/stop phase, for reports; never assert on them).

    Optional OAuth mode (``oauth2_introspection_url``): Dovecot also accepts XOAUTH2 and
    OAUTHBEARER, checking each bearer token by POSTing it to that RFC 7662 introspection
    URL (which must answer ``{"active": true, "username": "<user>"}``), and Postfix offers
    Dovecot's SASL mechanisms for SMTP AUTH. Without it the stack is password-only.
    """

    host = HOST
    domain = DOMAIN

    def __init__(
        self, root: Path, users: Iterable[str], oauth2_introspection_url: str | None = None
    ) -> None:
        self.root = Path(root)
        self.oauth2_introspection_url = oauth2_introspection_url
        self.auth_port = 0  # Dovecot's SASL listener for Postfix (OAuth mode only)
        self.users: list[str] = []
        # accepted by Postfix, unknown to Dovecot: delivery fails after acceptance (a DSN)
        self.undeliverable: list[str] = []
        for u in users:
            addr = _check_address(u)
            if addr not in self.users:
                self.users.append(addr)
        self.imap_port = self.lmtp_port = self.smtp_port = 0
        self.timings: dict[str, float] = {}
        self._dovecot: subprocess.Popen[bytes] | None = None
        self._dovecot_stderr: IO[bytes] | None = None
        self._postfix_running = False
        self._token = ""  # in Dovecot's greeting: proves a listener is ours
        self._postfix_token = ""  # same for Postfix's banner
        self._mail_uid = 0

    # ---- layout
    @property
    def dovecot_conf(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def dovecot_log(self) -> Path:
        return self.root / "dovecot.log"

    @property
    def postfix_dir(self) -> Path:
        """Postfix's config dir (``postfix -c`` argument)."""
        return self.root / "postfix" / "etc"

    @property
    def maillog(self) -> Path:
        return self.root / "postfix" / "maillog"

    # ---- availability
    @staticmethod
    def missing() -> list[str]:
        """What this machine lacks to run the stack (empty list: good to go)."""
        lacks = []
        if not _which("dovecot"):
            lacks.append("dovecot (apt-get install dovecot-imapd)")
        for prog, pkg in (("imap", "dovecot-imapd"), ("lmtp", "dovecot-lmtpd")):
            if not any(Path(d, prog).exists() for d in _DOVECOT_LIBEXEC):
                lacks.append(f"Dovecot {prog} service (apt-get install {pkg})")
        if not _which("postfix"):
            lacks.append("postfix (apt-get install postfix)")
        if os.geteuid() != 0:
            lacks.append("root privileges (Postfix's master and Dovecot's mail uid need root)")
        return lacks

    # ---- lifecycle
    @classmethod
    def start(
        cls, root: Path, users: Iterable[str], *, oauth2_introspection_url: str | None = None
    ) -> MailStack:
        """Write the configs under ``root`` (a fresh, empty or missing dir) and start both."""
        stack = cls(root, users, oauth2_introspection_url)
        if stack.root.exists() and any(stack.root.iterdir()):
            # An old instance may still be shutting down in a reused root (pitfall 5).
            raise ServerError(f"{stack.root} is not empty; every stack needs a fresh root")
        stack._prepare()
        _LIVE.add(stack)
        try:
            stack.start_imap()
            stack._start_postfix()
        except BaseException:
            stack.stop()
            raise
        return stack

    def _prepare(self) -> None:
        self._mail_uid = _ensure_mail_user().pw_uid
        for d in ("run", "state", "mail", "postfix/etc", "postfix/queue", "postfix/data"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        # Dovecot's auth process runs as user dovecot and must traverse root (pitfall 6).
        self.root.chmod(0o755)
        shutil.chown(self.root / "mail", MAIL_UID_USER, MAIL_UID_USER)
        shutil.chown(self.root / "postfix" / "data", "postfix", "postfix")
        self._write_users()

    def _write_users(self) -> None:
        """passwd-file for Dovecot and the texthash recipient map for Postfix, atomically."""
        lines = "".join(f"{u}:{{PLAIN}}{self.password(u)}::::::\n" for u in self.users)
        self._atomic_write(self.root / "users", lines, 0o644)
        vmailbox = self.postfix_dir / "vmailbox"
        accepted = self.users + self.undeliverable
        self._atomic_write(vmailbox, "".join(f"{u} OK\n" for u in accepted))
        # Postfix waits until a just-written table "cools down" (~2 s, pitfall 2): backdate it.
        # (Not the passwd-file: Dovecot notices changes by mtime and size, new lines suffice.)
        _backdate(vmailbox)

    @staticmethod
    def _atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        tmp.replace(path)  # Dovecot/Postfix never see a half-written user list

    def start_imap(self) -> None:
        """Start Dovecot (again), keeping its mail; on a port clash retry on fresh ports.

        The first start picks the IMAP and LMTP ports; a restart keeps them, because
        Postfix delivers to that LMTP port and clients remember the IMAP one.
        """
        if self._dovecot is not None:
            raise ServerError("Dovecot is already running")
        keep_ports = self.imap_port != 0
        for attempt in range(1, _START_ATTEMPTS + 1):
            if not keep_ports:
                oauth = bool(self.oauth2_introspection_url)
                self.imap_port, self.lmtp_port, *auth = _free_ports(2 + oauth)
                self.auth_port = auth[0] if auth else 0
            self._token = uuid.uuid4().hex[:12]
            self._write_dovecot_conf()
            t0 = time.perf_counter()
            try:
                self._spawn_dovecot()
            except ServerError:
                if keep_ports or attempt == _START_ATTEMPTS:
                    raise
                continue
            self.timings["dovecot_start"] = time.perf_counter() - t0
            return

    def _spawn_dovecot(self) -> None:
        # Foreground (-F) child of ours: we reap it ourselves, so no zombie keeps
        # master.pid "alive" and blocks a restart (pitfall 5: PID 1 reaps late here).
        self._dovecot_stderr = open(self.root / "dovecot.stderr", "ab")  # noqa: SIM115
        self._dovecot = subprocess.Popen(
            [_which("dovecot") or "dovecot", "-F", "-c", str(self.dovecot_conf)],
            stdin=subprocess.DEVNULL,
            stdout=self._dovecot_stderr,
            stderr=self._dovecot_stderr,
            cwd=self.root,
            start_new_session=True,  # Ctrl-C in pytest must not kill it before teardown
        )
        expected = f"introloop-{self._token}".encode()

        def ready() -> bool:
            if self._dovecot is None or self._dovecot.poll() is not None:
                raise ServerError(
                    "dovecot exited at start (port taken?)\n"
                    + _tail(self.dovecot_log)
                    + "\n"
                    + _tail(self.root / "dovecot.stderr")
                )
            # Our own greeting proves the listener is ours and not a concurrent stack's.
            line = _greeting(self.imap_port)
            return bool(line and expected in line) and _port_open(self.lmtp_port)

        try:
            _wait(ready, 10, "Dovecot to accept IMAP and LMTP", self.dovecot_log)
        except ServerError:
            self._kill_dovecot()
            raise

    def stop_imap(self) -> None:
        """Stop Dovecot and wait until it is gone; mail and ports are kept for start_imap()."""
        t0 = time.perf_counter()
        self._kill_dovecot()
        self.timings["dovecot_stop"] = time.perf_counter() - t0

    def _kill_dovecot(self) -> None:
        proc, self._dovecot = self._dovecot, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            # Dovecot removes master.pid once fully down; a leftover one must not name a
            # live process when we start again in the same root (pitfall 5).
            pidfile = self.root / "run" / "master.pid"
            with contextlib.suppress(FileNotFoundError):
                pidfile.unlink()
        if self._dovecot_stderr is not None:
            self._dovecot_stderr.close()
            self._dovecot_stderr = None

    def _write_dovecot_conf(self) -> None:
        r = self.root
        conf = f"""\
# Self-contained: `dovecot -c` reads only this file, nothing from /etc/dovecot.
instance_name = introloop-{self.imap_port}
hostname = mail.{DOMAIN}
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
info_log_path = {r}/dovecot.log
login_greeting = introloop-{self._token} ready.
protocols = imap lmtp
listen = {HOST}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login{" xoauth2 oauthbearer" if self.auth_port else ""}
auth_verbose = yes
auth_username_format = %Lu
# system users (vmail) get uids below Dovecot's default minimum of 500 (pitfall 7)
first_valid_uid = {self._mail_uid}
mail_location = maildir:~/Maildir
mail_fsync = never
# plus-addressing: user+tag@ lands in user's INBOX, Delivered-To keeps the tag
recipient_delimiter = +
lmtp_save_to_detail_mailbox = no
{self._oauth2_dovecot_conf()}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {r}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {r}/users
  default_fields = uid={MAIL_UID_USER} gid={MAIL_UID_USER} home={r}/mail/%d/%n
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {HOST}
    port = {self.lmtp_port}
  }}
}}
protocol imap {{
  # default 10 per user and IP; one test suite on 127.0.0.1 reaches that (pitfall 8)
  mail_max_userip_connections = 200
}}
"""
        self.dovecot_conf.write_text(conf)

    def _oauth2_dovecot_conf(self) -> str:
        """OAuth mode: an oauth2 passdb (tried first, bearer mechanisms only) + SASL listener."""
        if not self.auth_port:
            return ""
        args = self.root / "dovecot-oauth2.conf.ext"
        args.write_text(
            f"introspection_url = {self.oauth2_introspection_url}\n"
            "introspection_mode = post\n"
            "force_introspection = yes\n"
            "username_attribute = username\n"
            "active_attribute = active\n"
            "active_value = true\n"
        )
        return f"""\
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {args}
}}
service auth {{
  inet_listener sasl {{
    address = {HOST}
    port = {self.auth_port}
  }}
}}
"""

    def _oauth2_postfix_conf(self) -> str:
        """OAuth mode: SMTP AUTH through Dovecot's SASL (no TLS here: loopback only)."""
        if not self.auth_port:
            return ""
        return f"""\
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:{HOST}:{self.auth_port}
"""

    def _start_postfix(self) -> None:
        postfix = _which("postfix") or "postfix"
        for attempt in range(1, _START_ATTEMPTS + 1):
            (self.smtp_port,) = _free_ports(1)
            self._postfix_token = uuid.uuid4().hex[:12]
            self._write_postfix_conf()
            t0 = time.perf_counter()
            # `postfix start` waits for master's initialisation (master -w), so a port
            # clash shows up as a non-zero exit here.
            res = subprocess.run(
                [postfix, "-c", str(self.postfix_dir), "start"],
                capture_output=True,
                cwd=self.root,
                check=False,
            )
            if res.returncode == 0:
                self._postfix_running = True
                expected = f"introloop-{self._postfix_token}".encode()
                try:
                    _wait(
                        lambda banner=expected: banner in (_greeting(self.smtp_port) or b""),
                        10,
                        "Postfix to accept SMTP",
                        self.maillog,
                    )
                except ServerError:
                    self._stop_postfix()
                    if attempt == _START_ATTEMPTS:
                        raise
                    continue
                self.timings["postfix_start"] = time.perf_counter() - t0
                return
            if attempt == _START_ATTEMPTS:
                raise ServerError(
                    f"postfix start failed ({res.returncode}): "
                    f"{res.stderr.decode(errors='replace').strip()}\n" + _tail(self.maillog)
                )

    def _write_postfix_conf(self) -> None:
        p = self.root / "postfix"
        main_cf = f"""\
compatibility_level = 3.6
queue_directory = {p}/queue
data_directory = {p}/data
myhostname = mail.{DOMAIN}
mydomain = {DOMAIN}
myorigin = {DOMAIN}
mydestination =
inet_interfaces = {HOST}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_transport = error:local delivery disabled
# there is no syslog here: log to a file via postlog, or Postfix fails silently (pitfall 1)
maillog_file = {p}/maillog
maillog_file_prefixes = {p}
smtpd_banner = $myhostname ESMTP introloop-{self._postfix_token}
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
# no permit_mynetworks: foreign domains are refused at RCPT, never queued (pitfall 4)
smtpd_relay_restrictions = reject_unauth_destination
default_transport = error:outbound mail disabled
relay_transport = error:outbound mail disabled
recipient_delimiter = +
virtual_mailbox_domains = {DOMAIN}
# texthash needs no postmap; unknown users get 550 at RCPT time
virtual_mailbox_maps = texthash:{self.postfix_dir}/vmailbox
virtual_transport = lmtp:inet:{HOST}:{self.lmtp_port}
# no throttling of fast senders, and quick retries after Dovecot was down
in_flow_delay = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 5s
{self._oauth2_postfix_conf()}"""
        # chroot = n everywhere (Debian's default chroots need /etc copies); no smtp/relay
        # client at all; pickup is `unix` and only postlog is `unix-dgram` (pitfall 3).
        master_cf = f"""\
{HOST}:{self.smtp_port} inet n - n - - smtpd
pickup    unix n - n 60 1 pickup
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
lmtp      unix - - n - - lmtp
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""
        (self.postfix_dir / "main.cf").write_text(main_cf)
        (self.postfix_dir / "master.cf").write_text(master_cf)
        # Postfix start stalls ~2 s on brand-new config files: backdate them (pitfall 2).
        _backdate(self.postfix_dir / "main.cf", self.postfix_dir / "master.cf")

    def _postfix_master_pid(self) -> int | None:
        try:
            return int((self.root / "postfix/queue/pid/master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _stop_postfix(self) -> None:
        if not self._postfix_running:
            return
        self._postfix_running = False
        t0 = time.perf_counter()
        pid = self._postfix_master_pid()
        subprocess.run(
            [_which("postfix") or "postfix", "-c", str(self.postfix_dir), "stop"],
            capture_output=True,
            check=False,
        )
        # The master was re-parented to PID 1 and lingers as a zombie; that counts as gone.
        if pid is not None:
            _wait(lambda: not _pid_alive(pid), 15, "Postfix master to exit", self.maillog)
        _wait(lambda: not _port_open(self.smtp_port), 5, "Postfix to close its SMTP port")
        self.timings["postfix_stop"] = time.perf_counter() - t0

    def stop(self) -> None:
        """Stop Postfix and Dovecot and wait until both are gone. Safe to call twice."""
        try:
            self._stop_postfix()
        finally:
            self.stop_imap()
            _LIVE.discard(self)

    # ---- users
    @staticmethod
    def password(user: str) -> str:
        """Password of ``user``: local part + ``"pw"`` (``alice@example.test``: ``alicepw``)."""
        return user.partition("@")[0].lower() + "pw"

    def add_user(self, addr: str) -> str:
        """Add a mailbox while the stack runs; returns once Postfix and Dovecot both know it.

        Dovecot re-reads its passwd-file when the file changes, but checks at most once per
        second; Postfix's texthash map is read at process start, hence ``postfix reload``.
        Both are probed with RCPT (SMTP and LMTP) until the new user is accepted; a probe by
        IMAP login would cost Dovecot's 2 s auth failure delay on every miss.
        """
        addr = _check_address(addr)
        if addr in self.users:
            return addr
        self.users.append(addr)
        self._write_users()
        if self._postfix_running:
            subprocess.run(
                [_which("postfix") or "postfix", "-c", str(self.postfix_dir), "reload"],
                capture_output=True,
                check=True,
            )
            _wait(
                lambda: _rcpt_code(smtplib.SMTP, self.smtp_port, addr) == 250,
                15,
                f"Postfix to accept RCPT {addr}",
                self.maillog,
            )
        if self._dovecot is not None:
            _wait(
                lambda: _rcpt_code(smtplib.LMTP, self.lmtp_port, addr) == 250,
                15,
                f"Dovecot LMTP to accept RCPT {addr}",
                self.dovecot_log,
            )
        return addr

    def add_undeliverable(self, addr: str) -> str:
        """An address Postfix accepts at RCPT but Dovecot's LMTP refuses: mail to it is
        accepted, then bounced by Postfix with a real DSN to the envelope sender."""
        addr = _check_address(addr)
        if addr in self.undeliverable:
            return addr
        self.undeliverable.append(addr)
        self._write_users()
        subprocess.run(
            [_which("postfix") or "postfix", "-c", str(self.postfix_dir), "reload"],
            capture_output=True,
            check=True,
        )
        _wait(
            lambda: _rcpt_code(smtplib.SMTP, self.smtp_port, addr) == 250,
            15,
            f"Postfix to accept RCPT {addr}",
            self.maillog,
        )
        return addr

    # ---- mail
    def send(self, raw: bytes, mail_from: str, rcpt_to: list[str]) -> dict[str, tuple[int, bytes]]:
        """Submit ``raw`` over SMTP to Postfix; returns refused recipients (as smtplib does).

        Raises :class:`smtplib.SMTPRecipientsRefused` when every recipient is refused.
        """
        with smtplib.SMTP(self.host, self.smtp_port, timeout=30) as s:
            return s.sendmail(mail_from, rcpt_to, raw)

    @contextlib.contextmanager
    def imap(self, user: str, timeout: float = 30) -> Iterator[IMAPClient]:
        """A logged-in IMAPClient for ``user`` (plain IMAP on loopback), logged out after."""
        client = IMAPClient(self.host, port=self.imap_port, ssl=False, timeout=timeout)
        try:
            client.login(user, self.password(user))
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    def messages(self, user: str, folder: str = "INBOX") -> list[bytes]:
        """Raw bytes of every message in ``folder``, in UID order, without setting \\Seen."""
        with self.imap(user) as c:
            c.select_folder(folder, readonly=True)
            uids = sorted(c.search("ALL"))
            if not uids:
                return []
            data = c.fetch(uids, ["BODY.PEEK[]"])
            return [data[u][b"BODY[]"] for u in uids]

    def wait_for(self, user: str, count: int, timeout: float = 20) -> list[bytes]:
        """Wait until ``user``'s INBOX holds at least ``count`` messages; return them all."""
        deadline = time.monotonic() + timeout
        with self.imap(user) as c:
            while True:
                n = c.folder_status("INBOX", [b"MESSAGES"])[b"MESSAGES"]
                if n >= count:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{user}: INBOX has {n} of {count} messages after {timeout} s\n"
                        + _tail(self.maillog)
                        + "\n"
                        + _tail(self.dovecot_log)
                    )
                time.sleep(0.05)
        return self.messages(user)

    def reset(self) -> None:
        """Empty INBOX and Sent of every user and delete their other folders.

        Mail still in Postfix's queue is not touched and may arrive afterwards.
        """
        for user in self.users:
            with self.imap(user) as c:
                for _flags, _delim, name in c.list_folders():
                    if name not in ("INBOX", "Sent"):
                        c.delete_folder(name)
                for name in ("INBOX", "Sent"):
                    c.select_folder(name)
                    uids = c.search("ALL")
                    if uids:
                        c.delete_messages(uids)
                        c.expunge()
                    c.unselect_folder()


# ----------------------------------------------------------------------------- PostgreSQL


def _pg_bindir() -> Path | None:
    """Newest ``/usr/lib/postgresql/<major>/bin`` that has initdb and pg_ctl."""
    candidates = []
    for d in Path("/usr/lib/postgresql").glob("*/bin"):
        if (d / "initdb").exists() and (d / "pg_ctl").exists() and d.parent.name.isdigit():
            candidates.append((int(d.parent.name), d))
    return max(candidates)[1] if candidates else None


class PgCluster:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with trust auth for user ``postgres``.

    Durability is off (fsync, synchronous_commit, full_page_writes): the data is thrown
    away anyway, and it makes DDL in tests much faster.
    """

    host = HOST
    user = "postgres"

    def __init__(self, root: Path, bindir: Path) -> None:
        self.root = Path(root)
        self.bindir = bindir
        self.port = 0
        self.timings: dict[str, float] = {}
        self._running = False

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @staticmethod
    def missing() -> list[str]:
        """What this machine lacks to run a cluster (empty list: good to go)."""
        lacks = []
        if _pg_bindir() is None:
            lacks.append(
                "PostgreSQL server (initdb/pg_ctl under /usr/lib/postgresql/*/bin; "
                "apt-get install postgresql)"
            )
        if os.geteuid() == 0:
            if not _which("runuser"):
                lacks.append("runuser (apt-get install util-linux)")
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                lacks.append("system user postgres (apt-get install postgresql)")
        return lacks

    def _run(self, *cmd: str | Path) -> subprocess.CompletedProcess[bytes]:
        # initdb and pg_ctl refuse to run as root: run them as user postgres instead.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        # cwd = our root: runuser keeps the cwd, and postgres cannot enter /root.
        return subprocess.run(
            [*prefix, *map(str, cmd)], cwd=self.root, capture_output=True, check=False
        )

    @classmethod
    def start(cls, root: Path) -> PgCluster:
        """initdb a new cluster in ``root`` (fresh, empty or missing) and start it."""
        bindir = _pg_bindir()
        if bindir is None:
            raise ServerError("no PostgreSQL server binaries under /usr/lib/postgresql")
        cluster = cls(root, bindir)
        cluster.root.mkdir(parents=True, exist_ok=True)
        if any(cluster.root.iterdir()):
            raise ServerError(f"{cluster.root} is not empty; every cluster needs a fresh root")
        if os.geteuid() == 0:
            shutil.chown(cluster.root, "postgres", "postgres")
        t0 = time.perf_counter()
        res = cluster._run(
            bindir / "initdb",
            "-D",
            cluster.data_dir,
            "-A",
            "trust",
            "-U",
            cls.user,
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        )
        if res.returncode != 0:
            raise ServerError(f"initdb failed: {res.stderr.decode(errors='replace').strip()}")
        cluster.timings["initdb"] = time.perf_counter() - t0
        _LIVE.add(cluster)
        try:
            cluster._start_server()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start_server(self) -> None:
        for attempt in range(1, _START_ATTEMPTS + 1):
            (self.port,) = _free_ports(1)
            t0 = time.perf_counter()
            # -w waits until the server accepts connections; a taken port makes it fail.
            res = self._run(
                self.bindir / "pg_ctl",
                "-D",
                self.data_dir,
                "-l",
                self.log,
                "-w",
                "-o",
                f"-p {self.port} -k {self.root} -c listen_addresses={HOST} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off",
                "start",
            )
            if res.returncode == 0:
                self._running = True
                self.timings["start"] = time.perf_counter() - t0
                return
            if attempt == _START_ATTEMPTS:
                raise ServerError(
                    f"pg_ctl start failed: {res.stdout.decode(errors='replace')}"
                    + "\n"
                    + _tail(self.log)
                )

    def stop(self) -> None:
        """Stop the server (fast shutdown) and wait until it is gone. Safe to call twice."""
        _LIVE.discard(self)
        if not self._running:
            return
        self._running = False
        t0 = time.perf_counter()
        # pg_ctl -w returns once postmaster.pid is gone, so zombies don't matter here.
        res = self._run(self.bindir / "pg_ctl", "-D", self.data_dir, "-m", "fast", "-w", "stop")
        if res.returncode != 0:
            raise ServerError(f"pg_ctl stop failed: {res.stderr.decode(errors='replace')}")
        self.timings["stop"] = time.perf_counter() - t0

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) of database ``dbname``."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"

    def _admin(self, sql: str) -> None:
        import psycopg  # only PostgreSQL tests need the driver

        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql)  # type: ignore[arg-type]  # names are validated by callers

    @staticmethod
    def _check_name(name: str) -> str:
        if not (name.replace("_", "").isalnum() and name.isascii() and len(name) <= 63):
            raise ValueError(f"database names here are [A-Za-z0-9_]{{1,63}}, got {name!r}")
        return name

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its :meth:`url`."""
        self._admin(f'CREATE DATABASE "{self._check_name(name)}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, disconnecting whoever still uses it."""
        self._admin(f'DROP DATABASE IF EXISTS "{self._check_name(name)}" WITH (FORCE)')
