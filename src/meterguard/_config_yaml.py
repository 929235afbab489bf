"""Reading plans.yaml: the bytes of the file, then YAML with the line (from 1) of every key and item.

The YAML is read with the safe loader only, capped in size, and aliases are refused: a billing
file has no use for them and they are the door to "billion laughs".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import yaml

from .errors import ConfigError, ConfigIssue

MAX_FILE_BYTES = 1024 * 1024

Loc = tuple[str | int, ...]


def read_yaml(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    """Parse YAML safely, returning the data and the line (from 1) of every mapping key and item."""
    lines: dict[Loc, int] = {}
    issues: list[ConfigIssue] = []
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                line = event.start_mark.line + 1 if event.start_mark is not None else None
                issues.append(ConfigIssue(source, line, "", "YAML aliases are not allowed"))
        if issues:
            raise ConfigError(issues)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise ConfigError([ConfigIssue(source, 1, "", "the file is empty")])
            _walk(node, (), lines, issues, source)
            data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([ConfigIssue(source, line, "", f"invalid YAML: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(source, None, "", f"invalid YAML: {exc}")]) from None
    if issues:
        raise ConfigError(issues)
    return data, lines


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int], issues: list[ConfigIssue], source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = (*loc, key)
            if key in seen:
                issues.append(ConfigIssue(source, key_node.start_mark.line + 1, dotted(child), "duplicate key"))
            seen.add(key)
            lines[child] = key_node.start_mark.line + 1
            _walk(value_node, child, lines, issues, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*loc, index)] = item.start_mark.line + 1
            _walk(item, (*loc, index), lines, issues, source)


def dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc)


def line_of(loc: Loc, lines: Mapping[Loc, int]) -> int | None:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1 if lines else None


def read_file(path: str | os.PathLike[str]) -> str:
    """The text of a plans file: at most MAX_FILE_BYTES of UTF-8, else ConfigError."""
    source = str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([ConfigIssue(source, None, "", f"cannot read the file: {exc.strerror}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError([ConfigIssue(source, None, "", f"the file is larger than {MAX_FILE_BYTES} bytes")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([ConfigIssue(source, line, "", "the file is not UTF-8")]) from None
    return text
