"""``meterguard keys``: issue, list, revoke and hash API keys."""

from __future__ import annotations

import sys
import time

import click

from ._timespec import parse_duration, parse_expiry
from .admin._documents import key_json, timestamp
from .cli import State, _errors, _fail, _json, _read_options, _state_options, _table, main
from .customers import check_expiry
from .keys import hash_key, is_well_formed
from .store.base import KeyRecord


@main.group()
def keys() -> None:
    """Issue, rotate, list, revoke and hash API keys."""


def _expiry(text: str | None) -> float | None:
    if text is None:
        return None
    now = time.time()
    try:
        expires_at = parse_expiry(text, now)
        check_expiry(expires_at, now)  # before any store is opened; the directory checks again
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires") from None
    return expires_at


EXPIRES_HELP = "When the key stops working: an RFC 3339 time (2027-01-01T00:00:00Z) or a duration from now (30d)."


@keys.command("create")
@click.argument("customer")
@click.option("--expires", metavar="TIME|DURATION", help=EXPIRES_HELP)
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout: the key and its record.")
@_state_options
def keys_create(customer: str, expires: str | None, as_json: bool, config_path: str, store_url: str | None) -> None:
    """Issue a key: printed once on stdout (only its hash is stored)."""
    expires_at = _expiry(expires)
    with _errors():
        state = State(config_path, store_url)
        try:
            record, key = state.run(lambda s: s.directory.issue_key(customer, expires_at))
        except ValueError as exc:  # an expiry in the past, or a century away
            raise click.BadParameter(str(exc), param_hint="--expires") from None
    if as_json:
        _json({"key": key, **key_json(record, time.time())})
    else:
        click.echo(key)
    until = f", works until {timestamp(record.expires_at)}" if record.expires_at is not None else ""
    click.echo(f"key {record.key_id} for {customer}{until}: shown this once, store it now", err=True)


@keys.command("rotate")
@click.argument("key_id")
@click.option(
    "--grace",
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="How long the old key keeps working (0 for not at all), e.g. 90m, 24h, 7d; at most 90d.",
)
@click.option("--expires", metavar="TIME|DURATION", help="Expiry of the new key. " + EXPIRES_HELP)
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout: the new key, its record and the old one's.")
@_state_options
def keys_rotate(
    key_id: str, grace: str, expires: str | None, as_json: bool, config_path: str, store_url: str | None
) -> None:
    """Replace a key: the new one (printed once) works at once, the old one until the grace ends."""
    try:
        grace_seconds = parse_duration(grace)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--grace") from None
    expires_at = _expiry(expires)
    with _errors():
        state = State(config_path, store_url)
        try:
            record, key, old = state.run(lambda s: s.directory.rotate_key(key_id, grace_seconds, expires_at))
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    if as_json:
        now = time.time()
        _json({"key": key, **key_json(record, now), "replaces": key_json(old, now)})
    else:
        click.echo(key)
    click.echo(
        f"key {record.key_id} for {record.customer} replaces {key_id}, which works until "
        f"{timestamp(old.expires_at) or 'now'}: the new key is shown this once, store it now",
        err=True,
    )


@keys.command("list")
@click.argument("customer")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@_read_options
def keys_list(customer: str, as_json: bool, config_path: str | None, store_url: str | None) -> None:
    """A customer's keys: ids, prefixes, expiry and state (active, expiring, expired, revoked); never the keys."""
    with _errors():
        state = State(config_path, store_url)
        records = state.run(lambda s: s.directory.list_keys(customer))
    now = time.time()
    documents = [key_json(record, now) for record in records]
    if as_json:
        _json({"keys": documents})
        return
    rows = [
        [d["key_id"], d["prefix"], d["created"], d["last_used"] or "never", d["expires_at"] or "never", d["state"]]
        for d in documents
    ]
    click.echo(_table(["KEY_ID", "PREFIX", "CREATED", "LAST_USED", "EXPIRES", "STATE"], rows))


@keys.command("revoke")
@click.argument("key_id")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout: the revoked key's record.")
@_state_options
def keys_revoke(key_id: str, as_json: bool, config_path: str, store_url: str | None) -> None:
    """Revoke a key; every gateway refuses it within a second."""

    async def revoke(s: State) -> KeyRecord | None:
        await s.directory.revoke_key(key_id)
        return await s.store.get_key(key_id)

    with _errors():
        state = State(config_path, store_url)
        record = state.run(revoke)
    if not as_json:
        click.echo(f"revoked {key_id}")
    elif record is not None:
        _json(key_json(record, time.time()))
    else:  # revoked, then gone (a store that drops revoked keys): still what happened
        _json({"key_id": key_id, "revoked": True, "state": "revoked"})


@keys.command("hash")
@click.argument("key", required=False)
@click.option("--json", "as_json", is_flag=True, help='JSON on stdout: {"hash": "sha256:..."}.')
def keys_hash(key: str | None, as_json: bool) -> None:
    """Print the sha256:<hex> form of KEY for plans.yaml (KEY from stdin when omitted)."""
    if key is None:
        # Reading from stdin keeps the key out of shell history and the process list.
        key = sys.stdin.readline().strip()
    if not is_well_formed(key):
        _fail("not a well-formed meterguard key (mg_live_ + 32 characters + checksum)")
    if as_json:
        _json({"hash": hash_key(key)})
    else:
        click.echo(hash_key(key))
