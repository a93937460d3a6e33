"""Several mailboxes (e.g. one per chapter) in one deployment.

INTROLOOP_MAILBOXES_FILE names a TOML file with one table per mailbox:

    [mailboxes.berlin]
    address = "berlin@network.example"
    imap_user = "berlin@network.example"
    timezone = "Europe/Berlin"
    templates_dir = "/etc/introloop/templates-berlin"

Each table holds settings, written as the INTROLOOP_* variable without the prefix, in lower
case. They override the shared ones (environment, .env, config/defaults.env). Secrets should
not go in the file: the variable INTROLOOP_<NAME>_<SETTING> (e.g.
INTROLOOP_BERLIN_IMAP_PASSWORD), from the environment or .env, overrides the table.

Every mailbox is a whole Introloop of its own: its own address, members, templates,
timezone and database. By default that is SQLite under INTROLOOP_DATA_DIR/<name>/; on
PostgreSQL give each its own database, or its own schema with
`?options=-csearch_path%3D<name>` in its URL. Separate databases are the design choice here:
no table needs a mailbox column, a member of one chapter is unknown to the others, and each
mailbox migrates, backs up and moves on its own. What it costs: a view across chapters
takes one query per database.

`introloop run` serves every mailbox (one thread each). Several workers spread the
mailboxes between them by their mailbox leases, and share each mailbox's claims.
`introloop --mailbox NAME <command>` runs any command against one mailbox.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from service.config import ENV_PREFIX, ConfigError, Settings, load_settings
from service.paths import config_dir

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def _table(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"INTROLOOP_MAILBOXES_FILE {path} does not exist"]) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"INTROLOOP_MAILBOXES_FILE {path}: {exc}"]) from None
    boxes = data.get("mailboxes")
    if not isinstance(boxes, dict) or not boxes:
        raise ConfigError([f"INTROLOOP_MAILBOXES_FILE {path} has no [mailboxes.NAME] tables"])
    return boxes


def _variables(env_file: Path | str | None) -> dict[str, Any]:
    """INTROLOOP_* as the settings see them: defaults.env, then .env, then the environment.
    (Read directly: the shared settings alone need not be complete, e.g. no address.)"""
    out: dict[str, Any] = dict(dotenv_values(config_dir() / "defaults.env"))
    if env_file is not None and Path(env_file).is_file():
        out.update(dotenv_values(env_file))
    out.update(os.environ)
    return out


def mailboxes_file(env_file: Path | str | None) -> Path | None:
    """INTROLOOP_MAILBOXES_FILE, or None when this deployment has one mailbox."""
    value = _variables(env_file).get(ENV_PREFIX + "MAILBOXES_FILE")
    return Path(value) if value else None


def mailbox_names(env_file: Path | str | None) -> list[str]:
    """The mailboxes of INTROLOOP_MAILBOXES_FILE, in file order ([] when it is not set)."""
    path = mailboxes_file(env_file)
    return list(_table(path)) if path else []


def mailbox_overrides(env_file: Path | str | None, name: str) -> dict[str, Any]:
    """The settings that make mailbox `name` differ from the shared ones."""
    path = mailboxes_file(env_file)
    if path is None:
        raise ConfigError([f"--mailbox {name}: INTROLOOP_MAILBOXES_FILE is not set"])
    boxes = _table(path)
    if name not in boxes:
        raise ConfigError([f"--mailbox {name}: not in {path} (it has: {', '.join(boxes)})"])
    where = f"{path} [mailboxes.{name}]"
    if not NAME.match(name):
        raise ConfigError([f"{where}: a mailbox name is lower-case letters, digits, - and _"])
    fields = Settings.model_fields
    values = dict(boxes[name])
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ConfigError([f"{where}: unknown setting {k!r} (write INTROLOOP_{k.upper()} as "
                           f"{k.lower()!r}, without the prefix)" for k in unknown])
    # secrets (and anything else) per mailbox from the environment or .env win over the file
    prefix = f"{ENV_PREFIX}{name.upper().replace('-', '_')}_"
    env = _variables(env_file)
    for field in fields:
        if prefix + field.upper() in env:
            values[field] = env[prefix + field.upper()]
    values.setdefault("data_dir", Path(env.get(ENV_PREFIX + "DATA_DIR") or "data") / name)
    return {k: (str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v)
            for k, v in values.items()}


def load_mailboxes(env_file: Path | str | None) -> dict[str, Settings]:
    """Every mailbox's settings, checked: one line per problem, naming the mailbox."""
    out: dict[str, Settings] = {}
    problems: list[str] = []
    for name in mailbox_names(env_file):
        try:
            out[name] = load_settings(env_file, mailbox_overrides(env_file, name))
        except ConfigError as exc:
            problems += [f"[mailboxes.{name}] {p}" for p in exc.problems]
    for attr, what in (("address", "INTROLOOP_ADDRESS"),
                       ("effective_database_url", "INTROLOOP_DATABASE_URL")):
        seen: dict[str, str] = {}
        for name, st in out.items():
            value = str(getattr(st, attr))
            if value in seen:
                problems.append(f"mailboxes {seen[value]} and {name} share {what} ({value}); "
                                "each mailbox needs its own")
            seen[value] = name
    if problems:
        raise ConfigError(problems)
    return out


def settings_for(env_file: Path | str | None, name: str | None,
                 overrides: dict[str, Any] | None = None) -> Settings:
    """The settings of mailbox `name` (or the shared ones when None), plus `overrides`."""
    values = mailbox_overrides(env_file, name) if name else {}
    values.update(overrides or {})
    return load_settings(env_file, values or None)
