"""meterguard: metered, paid access in front of any ASGI app."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .config import Config, load_config, parse_config
from .errors import (
    ConfigError,
    CustomerExists,
    CustomerNotFound,
    KeyNotActive,
    KeyNotFound,
    MeterGuardError,
    PlanNotFound,
    StoreError,
    StoreUnavailable,
)
from .middleware import MeterGuard
from .store import store_from_url

try:
    __version__ = version("meterguard")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "Config",
    "ConfigError",
    "CustomerExists",
    "CustomerNotFound",
    "KeyNotActive",
    "KeyNotFound",
    "MeterGuard",
    "MeterGuardError",
    "PlanNotFound",
    "StoreError",
    "StoreUnavailable",
    "__version__",
    "load_config",
    "parse_config",
    "store_from_url",
]
