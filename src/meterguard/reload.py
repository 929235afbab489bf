"""Hot reload: reread plans.yaml, validate it, and swap what is built from it in one step.

Everything a gateway derives from the file (the config, the directory of static customers, the
authenticator and its cache, the metering engine's terms, the alerts) is one immutable
:class:`Runtime`. A reload builds a new one beside the old and swaps the reference in a single
synchronous step of the event loop, so no request can see half of each: a decision is made under
one version, and a request decided under the old plans finishes under them (its terms and its
ticket are its own). A file that does not validate is refused with its ``FILE:LINE`` errors and
the running plans stay.

Some settings cannot change under a running process: the store, the consistency mode, where the
admin API lives and its token variable, and the webhook target. A reload keeps their running
values and says so (``restart_required`` in the summary, a WARNING in the log).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._types import Clock
from .alerts import Alerts
from .auth import Authenticator
from .config import Config
from .customers import Directory
from .meter import MeterEngine
from .metrics import Metrics
from .store.base import Store

__all__ = ["RESTART_ONLY", "ReloadResult", "Runtime", "build_runtime", "keep_restart_only", "summary"]

#: Config fields a running process keeps until it restarts (dataclass field names).
RESTART_ONLY = ("store", "consistency", "admin_path", "admin_token_env", "webhooks")
#: The plans.yaml spelling of those fields, for the summary and the log.
_YAML_NAMES = {
    "store": "store",
    "consistency": "consistency",
    "admin_path": "admin.path",
    "admin_token_env": "admin.token_env",
    "webhooks": "webhooks",
}
RELOAD_EVENT = "reload:"  # change event published by POST /reload: "reload:<origin>"


@dataclass(frozen=True, slots=True)
class Runtime:
    """What one version of plans.yaml is, in a running gateway."""

    config: Config
    directory: Directory
    authenticator: Authenticator
    engine: MeterEngine
    alerts: Alerts | None


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    summary: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    errors: tuple[str, ...] = ()  # FILE:LINE: dotted.path: reason


def build_runtime(
    config: Config, store: Store, clock: Clock, metrics: Metrics, previous: Runtime | None = None
) -> Runtime:
    directory = Directory(config, store, clock=clock)
    authenticator = Authenticator(config, directory, clock=clock)
    authenticator.metrics = metrics
    engine = MeterEngine(config, store, clock)
    alerts = Alerts(config, store, clock=clock) if any(plan.alerts for plan in config.plans.values()) else None
    if previous is not None:
        # Whether change events arrive is a fact of the process, not of the file; so are the
        # addresses being throttled and the credentials known good.
        authenticator.adopt(previous.authenticator)
        # The fast path's leases and unflushed usage belong to the store, not to a version of the plans.
        engine.adopt(previous.engine)
    if engine.fast_path is not None:
        engine.fast_path.metrics = metrics
    return Runtime(config, directory, authenticator, engine, alerts)


def keep_restart_only(running: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` with the running values of the fields that need a restart, and which of them differ."""
    changed = [name for name in RESTART_ONLY if getattr(running, name) != getattr(new, name)]
    kept = dataclasses.replace(new, **{name: getattr(running, name) for name in changed})
    return kept, [_YAML_NAMES[name] for name in changed]


def summary(old: Config, new: Config, restart_required: list[str]) -> dict[str, Any]:
    """What a reload changed, for the endpoint's answer and the log line."""
    return {
        "status": "reloaded",
        "source": new.source,
        "plans": sorted(new.plans),
        "added": sorted(set(new.plans) - set(old.plans)),
        "removed": sorted(set(old.plans) - set(new.plans)),
        "changed": sorted(name for name in set(old.plans) & set(new.plans) if old.plans[name] != new.plans[name]),
        "routes": len(new.routes.routes),
        "customers": len(new.customers),
        "restart_required": restart_required,
    }
