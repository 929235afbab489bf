"""``meterguard keys``: issue, list, revoke and hash API keys."""

from __future__ import annotations

import json
import sys

import click

from .admin._documents import key_json
from .cli import State, _errors, _fail, _state_options, _table, main
from .keys import hash_key, is_well_formed


@main.group()
def keys() -> None:
    """Issue, list, revoke and hash API keys."""


@keys.command("create")
@click.argument("customer")
@_state_options
def keys_create(customer: str, config_path: str, store_url: str | None) -> None:
    """Issue a key: printed once on stdout (only its hash is stored)."""
    with _errors():
        state = State(config_path, store_url)
        record, key = state.run(lambda s: s.directory.issue_key(customer))
    click.echo(key)
    click.echo(f"key {record.key_id} for {customer}: shown this once, store it now", err=True)


@keys.command("list")
@click.argument("customer")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@_state_options
def keys_list(customer: str, as_json: bool, config_path: str, store_url: str | None) -> None:
    """A customer's keys: ids and prefixes, never the keys."""
    with _errors():
        state = State(config_path, store_url)
        records = state.run(lambda s: s.directory.list_keys(customer))
    documents = [key_json(record) for record in records]
    if as_json:
        click.echo(json.dumps({"keys": documents}, indent=2))
        return
    rows = [
        [d["key_id"], d["prefix"], d["created"], d["last_used"] or "never", "revoked" if d["revoked"] else "active"]
        for d in documents
    ]
    click.echo(_table(["KEY_ID", "PREFIX", "CREATED", "LAST_USED", "STATE"], rows))


@keys.command("revoke")
@click.argument("key_id")
@_state_options
def keys_revoke(key_id: str, config_path: str, store_url: str | None) -> None:
    """Revoke a key; every gateway refuses it within a second."""
    with _errors():
        state = State(config_path, store_url)
        state.run(lambda s: s.directory.revoke_key(key_id))
    click.echo(f"revoked {key_id}")


@keys.command("hash")
@click.argument("key", required=False)
def keys_hash(key: str | None) -> None:
    """Print the sha256:<hex> form of KEY for plans.yaml (KEY from stdin when omitted)."""
    if key is None:
        # Reading from stdin keeps the key out of shell history and the process list.
        key = sys.stdin.readline().strip()
    if not is_well_formed(key):
        _fail("not a well-formed meterguard key (mg_live_ + 32 characters + checksum)")
    click.echo(hash_key(key))
