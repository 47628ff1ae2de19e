"""``leafscout add-user`` and ``leafscout users list|remove``: the dashboard's accounts.

``register(subparsers)`` adds both commands to any ``add_subparsers()`` group (the
``leafscout`` command lists this module in its command modules). A running station
re-reads the users file when it changes, so none of these needs a restart.
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

    users = subparsers.add_parser("users", help="list or remove dashboard users",
                                  description="List the users of a station's users file, or remove one. "
                                              "A running station signs a removed user out at their next request.")
    actions = users.add_subparsers(dest="action", required=True, metavar="{list,remove}")
    listing = actions.add_parser("list", help="print each user name and role")
    listing.add_argument("--users", default=DEFAULT_USERS_FILE, help=f"users file (default: {DEFAULT_USERS_FILE})")
    listing.set_defaults(func=_list_users)
    remove = actions.add_parser("remove", help="remove a user (their sessions end too)")
    remove.add_argument("name", help="user name to remove")
    remove.add_argument("--users", default=DEFAULT_USERS_FILE, help=f"users file (default: {DEFAULT_USERS_FILE})")
    remove.set_defaults(func=_remove_user)


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


def _list_users(args: argparse.Namespace) -> int:
    import sys

    from .auth import UsersFileError, read_users

    try:
        users = read_users(args.users)
    except UsersFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not users:
        print(f"{args.users} has no users (add one with `leafscout add-user NAME --users {args.users}`)")
    for name in sorted(users):
        print(f"{name}\t{users[name]['role']}")
    return 0


def _remove_user(args: argparse.Namespace) -> int:
    import sys

    from .auth import UsersFileError, remove_user

    try:
        remove_user(args.users, args.name)
    except UsersFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.name} removed from {args.users}")
    return 0
