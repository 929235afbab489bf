"""Exceptions raised by meterguard.

Hierarchy::

    MeterGuardError
    ├── ConfigError            an invalid plans file or argument; carries every issue found
    ├── StoreError             the store failed; backend exceptions are wrapped once, at the store boundary
    │   └── StoreUnavailable   the store cannot be reached at all (connection refused, timeout)
    ├── CustomerExists         creating a customer whose id is taken
    ├── CustomerNotFound
    ├── KeyNotFound
    ├── KeyNotActive           rotating a key that is revoked or expired
    └── PlanNotFound
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class MeterGuardError(Exception):
    """Root of every exception meterguard raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a configuration file, located as an editor would (lines from 1)."""

    file: str
    line: int | None
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"


class ConfigError(MeterGuardError):
    """The configuration is invalid; ``issues`` holds one entry per problem."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


class StoreError(MeterGuardError):
    """The store failed to answer or refused an operation."""


class StoreUnavailable(StoreError):
    """The store cannot be reached."""


class CustomerExists(MeterGuardError):
    pass


class CustomerNotFound(MeterGuardError):
    pass


class KeyNotFound(MeterGuardError):
    pass


class KeyNotActive(MeterGuardError):
    pass


class PlanNotFound(MeterGuardError):
    pass
