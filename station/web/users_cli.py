"""``leafscout add-user``: create viewers, admins and robot accounts for the dashboard.

``register(subparsers)`` adds the ``add-user`` command to any ``add_subparsers()`` group
(the ``leafscout`` command lists this module in its command modules).
"""
from __future__ import annotations

import argparse

DEFAULT_USERS_FILE = "station_users.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "add-user",
        help="add or replace a dashboard user (hashed password or generated token)",
        description="Add a user to the station's users file. The secret is stored as a salted scrypt hash; "
                    "without --password a random token is generated and printed once.",
    )
    p.add_argument("name", help="user name (for robots: the robot id, so it may post only its own records)")
    p.add_argument("--role", choices=("viewer", "robot", "admin"), default="viewer",
                   help="viewer: read pages and exports; robot: also post its own records; admin: everything "
                        "(default: viewer)")
    p.add_argument("--users", default=DEFAULT_USERS_FILE,
                   help=f"users file to create or update (default: {DEFAULT_USERS_FILE})")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from standard input instead of generating a token")
    p.set_defaults(func=_add_user)


def _add_user(args: argparse.Namespace) -> int:
    import sys

    from .auth import UsersFileError, add_user

    password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else None
    try:
        secret = add_user(args.users, args.name, args.role, password)
    except UsersFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.name} ({args.role}) saved in {args.users}")
    if password is None:
        print(f"token (shown once, store it now): {secret}")
    return 0
