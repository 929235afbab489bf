"""Count the Redis commands a process sends, as the client packs them (pipelines count each command).

``INFO commandstats`` on the server also counts every ``redis.call`` inside a Lua script, so an
EVALSHA that increments twelve fields shows up as thirteen commands there. BENCHMARKS.md's
"Redis commands per admitted request" is about what crosses the wire (one script call per tick
carrying many decisions), so that figure is counted here, in the clients themselves: every
command passes through ``pack_command`` (redis-py asyncio, also for pipelines), ``send_command``/
``pack_commands`` (redis-py sync, slowapi's client) or store/_resp.py's ``pack_command`` (the
thin client of exact mode's METER call). The server's own count is reported beside it.
"""

from __future__ import annotations

from typing import Any

_sent: dict[Any, int] = {}
_installed = [False]


def sent() -> dict[str, int]:
    """Commands sent so far, by command name (upper case)."""
    table: dict[str, int] = {}
    for name, count in list(_sent.items()):
        text = (name.decode() if isinstance(name, bytes) else str(name)).split(" ", 1)[0].upper()
        table[text] = table.get(text, 0) + count
    return table


def difference(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """The commands counted between two readings of ``sent()``."""
    return {name: count - before.get(name, 0) for name, count in after.items() if count > before.get(name, 0)}


def since(before: dict[str, int]) -> dict[str, int]:
    return difference(sent(), before)


def install() -> None:
    if _installed[0]:
        return
    _installed[0] = True
    import redis.asyncio.connection as async_connection
    import redis.connection as sync_connection

    async_pack = async_connection.AbstractConnection.pack_command

    def counted_async_pack(self: Any, *args: Any) -> Any:
        if args:
            _sent[args[0]] = _sent.get(args[0], 0) + 1
        return async_pack(self, *args)

    # asyncio's pack_commands calls pack_command once per command: counting there is enough.
    async_connection.AbstractConnection.pack_command = counted_async_pack  # type: ignore[method-assign]

    sync_send = sync_connection.AbstractConnection.send_command
    sync_pack_many = sync_connection.AbstractConnection.pack_commands

    def counted_sync_send(self: Any, *args: Any, **kwargs: Any) -> Any:
        # the sync send_command packs through the command packer directly, not pack_command
        if args:
            _sent[args[0]] = _sent.get(args[0], 0) + 1
        return sync_send(self, *args, **kwargs)

    def counted_sync_pack_many(self: Any, commands: Any) -> Any:
        commands = [tuple(command) for command in commands]
        for command in commands:
            if command:
                _sent[command[0]] = _sent.get(command[0], 0) + 1
        return sync_pack_many(self, commands)

    sync_connection.AbstractConnection.send_command = counted_sync_send  # type: ignore[method-assign]
    sync_connection.AbstractConnection.pack_commands = counted_sync_pack_many  # type: ignore[method-assign]

    # the METER call of exact mode goes through meterguard's thin client, not redis-py
    from meterguard.store import _resp

    thin_pack = _resp.pack_command

    def counted_thin_pack(args: Any) -> Any:
        if args:
            _sent[args[0]] = _sent.get(args[0], 0) + 1
        return thin_pack(args)

    _resp.pack_command = counted_thin_pack
