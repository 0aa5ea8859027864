"""`debm keys add|list|revoke`: API keys of a service's data directory, no restart needed.

    debm keys add ci --scope use          # prints the new secret once
    debm keys list
    debm keys revoke ci

Works on the job store the service uses (DEBM_DATA_DIR's jobs.sqlite in embedded mode, Redis
when REDIS_URL is set), the same place ``POST /keys`` writes, so a running server accepts an
added key at its next request and refuses a revoked one at its next request (core.keys)."""

from __future__ import annotations

import argparse
import json
import sys

from model.formats.errors import UserError


class KeysError(UserError):
    """A `debm keys` failure the user can fix (printed as one line, exit 2)."""


def _settings(args: argparse.Namespace):
    from core.settings import Settings

    overrides = {"data_dir": args.data_dir} if args.data_dir else {}
    try:
        return Settings(**overrides)
    except ValueError as exc:
        raise KeysError(f"bad DEBM_ settings: {exc}") from None


def _admin(settings):
    from core.jobs import StoreUnavailable, open_store
    from core.keys import KeyAdmin
    from core.settings import parse_api_keys

    try:
        store = open_store(settings)
    except StoreUnavailable as exc:
        raise KeysError(str(exc)) from None
    configured = [key_id for key_id, _ in parse_api_keys(settings.api_keys)
                  + parse_api_keys(settings.admin_keys)]
    return KeyAdmin(store, reserved=[*configured, *(["local"] if settings.local_key else [])])


def _run(call):
    from core.jobs import StoreUnavailable

    try:
        return call()
    except StoreUnavailable as exc:
        raise KeysError(str(exc)) from None


def cmd_add(args: argparse.Namespace) -> int:
    admin = _admin(_settings(args))
    record, secret = _run(lambda: admin.add(args.name, args.scope))
    print(json.dumps({**record.public(), "key": secret}))
    print(f"key {record.id!r} ({record.scope}) added; its secret is shown only here. Send it "
          "as 'X-API-Key: <key>'.", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from core.datadir import DataDir
    from core.settings import parse_api_keys

    settings = _settings(args)
    rows = []
    if settings.local_key and DataDir(settings.data_root).api_key_file.exists():
        rows.append({"id": "local", "scope": "admin", "created": None, "source": "generated"})
    rows += [{"id": key_id, "scope": scope, "created": None, "source": "env"}
             for spec, scope in ((settings.api_keys, "use"), (settings.admin_keys, "admin"))
             for key_id, _ in parse_api_keys(spec)]
    rows += [k.public() for k in _run(_admin(settings).list)]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'id':24}  {'scope':5}  source")
    for row in rows:
        print(f"{row['id']:24}  {row['scope']:5}  {row['source']}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    admin = _admin(_settings(args))
    if args.name in admin.reserved:
        raise KeysError(f"key {args.name!r} is configured (DATA/api-key or DEBM_API_KEYS / "
                        "DEBM_ADMIN_KEYS), not stored: change it there and restart")
    _run(lambda: admin.revoke(args.name))
    print(json.dumps({"id": args.name, "revoked": True}))
    return 0


def add_parser(subparsers) -> None:
    """`debm keys ...` (registered by debm.cli.build_parser)."""
    keys = subparsers.add_parser(
        "keys", help="add, list and revoke API keys (no restart needed)",
        description="API keys kept hashed in the service's job store; a running server "
                    "sees a change at its next request. The generated key `local` and "
                    "DEBM_API_KEYS / DEBM_ADMIN_KEYS keys are listed, not changed.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="the service's data directory (default "
                                           "$DEBM_DATA_DIR or var/debm); with REDIS_URL set "
                                           "the keys are in Redis")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    p = ksub.add_parser("add", parents=[common], help="add a key and print its secret once")
    p.add_argument("name", help="the key's id (letters, digits, _.-): it owns its jobs")
    p.add_argument("--scope", choices=("use", "admin"), default="use",
                   help="use: generate, score, own jobs; admin: also train, datasets, "
                        "models, keys and every key's jobs")
    p.set_defaults(func=cmd_add)
    p = ksub.add_parser("list", parents=[common], help="every key's id, scope and source "
                                                       "(never a secret)")
    p.add_argument("--json", action="store_true", help="one JSON array")
    p.set_defaults(func=cmd_list)
    p = ksub.add_parser("revoke", parents=[common], help="revoke a stored key at once")
    p.add_argument("name", help="the key's id")
    p.set_defaults(func=cmd_revoke)
