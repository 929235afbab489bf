"""Reading plans.yaml: the bytes of the file, then YAML with the line (from 1) of every key and item.

The YAML is read with the safe loader's resolver and constructors only, capped in size, and
aliases are refused: a billing file has no use for them and they are the door to "billion
laughs". A file is also refused past MAX_DEPTH levels of nesting and MAX_NODES nodes, checked as
the parser goes, before any of it is built: PyYAML's composer recurses once per level (a
RecursionError in Python, a crash in libyaml's C composer), and the scanner's work grows with
depth times length, so a 100 KB file nested 50,000 deep used to run for more than a minute.

The document is built in one pass over the parser's events (no node tree, no second walk for
line numbers), with libyaml's parser where PyYAML has it (its wheels do): together that reads a
1 MiB file within the 1 s that ``meterguard check`` promises. Without libyaml the pure-Python
parser is used, about twenty times slower.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from .errors import ConfigError, ConfigIssue

MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 32  # levels of mappings and lists; the deepest plans.yaml path (overage tiers) needs 7
MAX_NODES = 20_000  # scalars, mappings and lists; hundreds of plans and static customers need a few thousand

Loc = tuple[str | int, ...]

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_INT = "tag:yaml.org,2002:int"
_DECIMAL = re.compile(r"[-+]?(0|[1-9][0-9]{0,17})")  # what the int resolver reads as base 10, small enough
_NO_KEY = object()  # a mapping waits for its next key; a scalar that could not be read
_NOT_READ = object()
_BAD_KEY = object()  # a key that is not a scalar: its value is read and dropped


class _Frame:
    """An open mapping or list, where it sits, and (in a mapping) the key whose value comes next."""

    __slots__ = ("container", "loc", "line", "key")

    def __init__(self, container: dict[Any, Any] | list[Any], loc: Loc, line: int) -> None:
        self.container = container
        self.loc = loc
        self.line = line
        self.key: Any = _NO_KEY


class _Reader:
    """Builds the document from parser events, keeping the line of every mapping key and list item."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[Loc, int] = {}
        self.issues: list[ConfigIssue] = []
        self.resolver: Any = yaml.resolver.Resolver()
        self.constructor: Any = yaml.constructor.SafeConstructor()
        self.stack: list[_Frame] = []
        self.root: Any = None
        self.documents = 0
        self.nodes = 0
        self.plain: dict[str, Any] = {}

    def issue(self, line: int | None, reason: str, path: str = "") -> None:
        self.issues.append(ConfigIssue(self.source, line, path, reason))

    def fail(self, line: int | None, reason: str) -> ConfigError:
        return ConfigError([*self.issues, ConfigIssue(self.source, line, "", reason)])

    def read(self, text: str) -> Any:
        handlers: dict[type, Callable[[Any, int], None]] = {
            yaml.ScalarEvent: self.scalar,
            yaml.MappingStartEvent: self.start,
            yaml.SequenceStartEvent: self.start,
            yaml.MappingEndEvent: self.end,
            yaml.SequenceEndEvent: self.end,
            yaml.AliasEvent: self.alias,
            yaml.DocumentStartEvent: self.document,
        }
        for event in yaml.parse(text, Loader=_Loader):
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event, event.start_mark.line + 1 if event.start_mark is not None else 1)
        return self.root

    def count(self, line: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(line, f"more than {MAX_NODES} YAML nodes; a plans file needs far fewer")

    def document(self, event: Any, line: int) -> None:
        self.documents += 1
        if self.documents > 1:
            raise self.fail(line, "invalid YAML: a second document (---); a plans file is one document")

    def place(self, value: Any, line: int) -> None:
        """Put a finished value where it belongs: the root, a list item, a key, or a key's value."""
        if not self.stack:
            self.root = value
            return
        frame = self.stack[-1]
        container = frame.container
        if isinstance(container, list):
            self.lines[(*frame.loc, len(container))] = line
            container.append(value)
        elif frame.key is _NO_KEY:
            if isinstance(value, dict | list) or value is _BAD_KEY:
                self.issue(line, "mapping keys must be plain scalars", dotted(frame.loc))
                value = _BAD_KEY
            elif value in container:
                self.issue(line, "duplicate key", dotted((*frame.loc, value)))
            else:
                self.lines[(*frame.loc, value)] = line
            frame.key = value
        else:
            if frame.key is not _BAD_KEY:
                container[frame.key] = value
            frame.key = _NO_KEY

    def scalar(self, event: Any, line: int) -> None:
        self.count(line)
        tag = event.tag
        if tag is None and event.implicit[0]:
            # A plain scalar's value depends on its text alone: read each distinct text once.
            value = self.plain.get(event.value, _NOT_READ)
            if value is _NOT_READ:
                tag = self.resolver.resolve(yaml.ScalarNode, event.value, event.implicit)
                value = self.plain[event.value] = self.construct(tag, event)
        else:
            if tag is None or tag == "!":
                tag = self.resolver.resolve(yaml.ScalarNode, event.value, event.implicit)
            value = self.construct(tag, event)
        if value is _NO_KEY:
            self.issue(line, f"invalid YAML: {event.value[:40]!r} cannot be read as {tag_name(event, self.resolver)}")
            value = None
        self.place(value, line)

    def construct(self, tag: str, event: Any) -> Any:
        """The value of a scalar, as PyYAML's safe constructor makes it; _NO_KEY when it cannot."""
        text = event.value
        if tag == _STR or tag == _MERGE:
            return text  # "<<" stays a plain key: a merge needs an alias, refused anyway
        if tag == _INT and _DECIMAL.fullmatch(text):
            return int(text)
        node = yaml.ScalarNode(tag, text, event.start_mark, event.end_mark, event.style)
        build = self.constructor.yaml_constructors.get(tag, self.constructor.yaml_constructors[None])
        try:
            return build(self.constructor, node)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError):
            # e.g. 2026-13-45 (resolved as a timestamp, but no date), "!!int x", "!unknown x"
            return _NO_KEY

    def alias(self, event: Any, line: int) -> None:
        self.count(line)
        self.issue(line, "YAML aliases are not allowed")
        self.place(None, line)

    def start(self, event: Any, line: int) -> None:
        self.count(line)
        if len(self.stack) >= MAX_DEPTH:
            raise self.fail(line, f"nested deeper than {MAX_DEPTH} levels")
        mapping = isinstance(event, yaml.MappingStartEvent)
        if event.tag not in (None, "!", _MAP if mapping else _SEQ):
            self.issue(line, f"invalid YAML: tag {event.tag[:40]!r} is not allowed here")
        loc: Loc = ()
        if self.stack:
            parent = self.stack[-1]
            if isinstance(parent.container, list):
                loc = (*parent.loc, len(parent.container))
            elif parent.key is _NO_KEY or parent.key is _BAD_KEY:
                loc = (*parent.loc, "?")  # a key that is a collection, or the value of a refused key
            else:
                loc = (*parent.loc, parent.key)
        self.stack.append(_Frame({} if mapping else [], loc, line))

    def end(self, event: Any, line: int) -> None:
        frame = self.stack.pop()
        self.place(frame.container, frame.line)


def read_yaml(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    """Parse YAML safely, returning the data and the line (from 1) of every mapping key and item."""
    reader = _Reader(source)
    try:
        data = reader.read(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise reader.fail(line, f"invalid YAML: {_problem(exc, text)}") from None
    except yaml.YAMLError as exc:
        raise reader.fail(None, f"invalid YAML: {exc}") from None
    if reader.issues:
        raise ConfigError(reader.issues)
    if reader.documents == 0:
        raise ConfigError([ConfigIssue(source, 1, "", "the file is empty")])
    return data, reader.lines


def _problem(exc: yaml.MarkedYAMLError, text: str) -> str:
    problem = exc.problem or str(exc)
    mark = exc.problem_mark
    if problem == "found character that cannot start any token" and mark is not None:
        # libyaml leaves out which character; the pure-Python scanner names it, and so do we.
        lines = text.split("\n", mark.line + 1)
        if mark.line < len(lines) and mark.column < len(lines[mark.line]):
            return f"found character {lines[mark.line][mark.column]!r} that cannot start any token"
    return problem


def tag_name(event: Any, resolver: Any) -> str:
    tag = event.tag
    if tag is None or tag == "!":
        tag = resolver.resolve(yaml.ScalarNode, event.value, event.implicit)
    return str(tag)[:60]


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
