"""The admin commands of ``descent``: users, their limits and their API tokens.

    descent users create NAME [--limit NAME=VALUE ...]   make a user
    descent users list                                   the users and their limits
    descent users limits NAME [NAME=VALUE ...]           show or change a user's limits
    descent tokens create USER [--name LABEL]            make a token; it is printed once
    descent tokens list USER                             a user's tokens (never the tokens)
    descent tokens revoke TOKEN_ID                       revoke a token

They work on the database of the settings (``DATABASE_URL``; the embedded default's SQLite
file otherwise), which must be at the latest schema (``descent migrate``). A token is only
ever shown by ``tokens create``: the database keeps its sha256.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

LIMITS_HELP = (
    "limits: active_jobs (jobs queued or running at once), epochs (per job), parameters "
    "(per model), upload_bytes (all uploads), device_hours (compute budget); "
    "VALUE 'default' takes the setting's default (DESCENT_LIMIT_<NAME>)"
)


def _pairs(values: list[str]) -> dict[str, Any]:
    from store.users import UserError

    out: dict[str, Any] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"expected NAME=VALUE, not {item!r}")
        out[name.strip()] = value.strip()
    return out


def _limits_text(overrides: dict[str, Any]) -> str:
    from descent.settings import get_settings
    from store.users import Limits

    limits = Limits.defaults(get_settings()).with_overrides(overrides)
    parts = []
    for name in Limits.names():
        value = getattr(limits, name)
        mark = "" if name in (overrides or {}) else " (default)"
        parts.append(f"{name}={'none' if value is None else value}{mark}")
    return ", ".join(parts)


def _run(action: Any) -> int:
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from store.db import session_scope
    from store.users import UserError

    try:
        with session_scope() as session:
            action(session)
    except UserError as exc:
        print(f"descent: {exc}", file=sys.stderr)
        return 1
    except (OperationalError, ProgrammingError) as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        hint = "is it at the latest schema? run `descent migrate`"
        print(f"descent: database error: {reason} ({hint})", file=sys.stderr)
        return 1
    return 0


def cmd_users_create(args: argparse.Namespace) -> int:
    from store.users import create_user

    def action(session: Any) -> None:
        user = create_user(session, args.name, _pairs(args.limit))
        print(f"user {user.name} created; limits: {_limits_text(user.limits)}")
        print(f"make a token for it with: descent tokens create {user.name}")

    return _run(action)


def cmd_users_list(args: argparse.Namespace) -> int:
    from store.users import list_users

    def action(session: Any) -> None:
        for user in list_users(session):
            print(f"{user.name}\t{_limits_text(user.limits)}")

    return _run(action)


def cmd_users_limits(args: argparse.Namespace) -> int:
    from store.users import require_user, set_limits

    def action(session: Any) -> None:
        if args.values:
            user = set_limits(session, args.name, _pairs(args.values))
        else:
            user = require_user(session, args.name)
        print(f"{user.name}: {_limits_text(user.limits)}")

    return _run(action)


def cmd_tokens_create(args: argparse.Namespace) -> int:
    from store.users import create_token

    def action(session: Any) -> None:
        row, token = create_token(session, args.user, args.name)
        print(f"token {row.id} for {args.user} (shown once; keep it secret):", file=sys.stderr)
        print(token)

    return _run(action)


def cmd_tokens_list(args: argparse.Namespace) -> int:
    from store.users import list_tokens

    def action(session: Any) -> None:
        for row in list_tokens(session, args.user):
            state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
            used = f"{row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never"
            print(f"{row.id}\t{row.name or '-'}\t{state}\tlast used {used}")

    return _run(action)


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    from store.users import revoke_token

    def action(session: Any) -> None:
        row = revoke_token(session, args.token_id)
        print(f"token {row.id} revoked (the API stops taking it within seconds)")

    return _run(action)


def add_admin_commands(sub: Any) -> None:
    users = sub.add_parser("users", help="admin: make users and set their limits")
    users_sub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    p = users_sub.add_parser("create", help="make a user", epilog=LIMITS_HELP)
    p.add_argument("name")
    p.add_argument(
        "--limit", action="append", default=[], metavar="NAME=VALUE", help="override a limit"
    )
    p.set_defaults(func=cmd_users_create)
    p = users_sub.add_parser("list", help="the users and their limits")
    p.set_defaults(func=cmd_users_list)
    p = users_sub.add_parser("limits", help="show or change a user's limits", epilog=LIMITS_HELP)
    p.add_argument("name")
    p.add_argument("values", nargs="*", metavar="NAME=VALUE")
    p.set_defaults(func=cmd_users_limits)

    tokens = sub.add_parser("tokens", help="admin: make, list and revoke API tokens")
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    p = tokens_sub.add_parser("create", help="make a token for a user; printed once")
    p.add_argument("user")
    p.add_argument("--name", default="", help="a label, to tell tokens apart")
    p.set_defaults(func=cmd_tokens_create)
    p = tokens_sub.add_parser("list", help="a user's tokens (ids and state, never the tokens)")
    p.add_argument("user")
    p.set_defaults(func=cmd_tokens_list)
    p = tokens_sub.add_parser("revoke", help="revoke a token by its id")
    p.add_argument("token_id")
    p.set_defaults(func=cmd_tokens_revoke)


def serve_token(data_dir: Any) -> str:
    """The embedded default's token: made on first start, kept in <data dir>/token (0600)."""
    from store.db import session_scope
    from store.users import ensure_local_token

    path = data_dir / "token"
    token, created = ensure_local_token(session_scope, path)
    if created:
        print(f"descent: the local user's API token (also in {path}, mode 0600): {token}")
    else:
        print(f"descent: the local user's API token is in {path}")
    print('descent: send it as -H "Authorization: Bearer $(cat ' + str(path) + ')"', flush=True)
    return token
