"""docs/cli.md against the command itself: every command and option is in its synopsis, every
``--json`` in its table, so that the page cannot fall behind the CLI unnoticed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click

from meterguard import cli

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
COMMON = {"--help", "--config", "--store"}  # every state command's: "Config and store"


def commands(group: click.Group, path: tuple[str, ...] = ("meterguard",)) -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


def synopsis() -> dict[str, str]:
    """``meterguard <command>`` -> its synopsis entry (continuation lines joined)."""
    block = DOC.read_text().split("```", 2)[1]
    entries: dict[str, str] = {}
    current = ""
    for line in block.splitlines():
        if line.startswith("meterguard "):
            current = line
            words = line.split()
            name = " ".join(words[:3] if words[1] in ("customers", "keys") else words[:2])
            entries[name] = line
        elif line.startswith(" ") and current:
            entries[name] += " " + line.strip()
    return entries


def test_every_command_and_option_is_in_the_synopsis() -> None:
    entries = synopsis()
    for name, command in commands(cli.main):
        assert name in entries, f"{name} is missing from the synopsis of docs/cli.md"
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            names = [option for option in (*param.opts, *param.secondary_opts) if option.startswith("--")]
            if set(names) & COMMON:
                continue
            assert any(re.search(rf"{re.escape(option)}\b", entries[name]) for option in names), (
                f"{name}: {names[0]} is not in its synopsis"
            )


def test_every_json_flag_is_in_the_output_table() -> None:
    table = DOC.read_text().split("## Output", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z ,`]+)` \|", table, flags=re.M))
    listed = {part.strip(" `") for row in documented for part in row.split(",")}
    for name, command in commands(cli.main):
        if any(isinstance(p, click.Option) and "--json" in p.opts for p in command.params):
            assert name.removeprefix("meterguard ") in listed, f"{name} --json is not in the Output table"
