"""Failed authentications per client address (CONTRACT section 11), counted in this process.

At most ``auth.failed_limit`` failed authentications (default 60 a minute) per client address;
past it, the address is blocked until the window has room again. Counting uses the ``limits``
library's moving window in memory: exact ("at most N in any window"), kept per process (N
workers allow N times the limit; the point is to make guessing slow and to spare the store, not
to account), and forgotten at restart.

The client address is the peer's. ``X-Forwarded-For`` is believed only when the peer is one of
``auth.trusted_proxies``: then the client is the rightmost address that is not a trusted proxy
(each proxy appends the address it received the request from; what is left of that is whatever
the client chose to send). IPv6 clients are counted per /64, the block a single host is
usually given, so that one machine cannot walk its own prefix to start afresh.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import limits
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

log = logging.getLogger("meterguard.auth")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_HOPS = 32  # X-Forwarded-For entries looked at, from the right; more is no deployment anyone runs
MAX_BLOCKED = 100_000  # addresses remembered as blocked; when more, those whose block lapsed go first
_UNKNOWN = "unknown"  # a request without a peer address (a Unix socket): all such requests count together


class FailedAuthThrottle:
    def __init__(self, limit: str | None, trusted_proxies: Sequence[Network] = ()) -> None:
        self.limit = limit
        self._item = limits.parse(limit) if limit is not None else None
        self._limiter = MovingWindowRateLimiter(MemoryStorage()) if limit is not None else None
        self._trusted = tuple(trusted_proxies)
        # Addresses known to be blocked, and until when (epoch seconds). The request path looks at
        # this dict only, and at an address only while the dict is not empty: a gateway that is
        # not being guessed at pays one truth test per request.
        self.blocked: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        return self._limiter is not None

    def same_settings(self, other: FailedAuthThrottle) -> bool:
        return self.limit == other.limit and self._trusted == other._trusted

    def address(self, scope: Any) -> str:
        """The client address a request is counted under (see the module docstring)."""
        client = scope.get("client")
        peer = _ip(str(client[0])) if client else None
        if peer is None:
            return str(client[0])[:64] if client and client[0] else _UNKNOWN
        if self._trusted and self._is_trusted(peer):
            peer = self._forwarded(scope.get("headers", ()), peer)
        return _key(peer)

    def wait(self, address: str) -> int:
        """Seconds (whole, at least 1) until ``address`` may fail again; 0 when it is not blocked."""
        until = self.blocked.get(address)
        if until is None:
            return 0
        now = time.time()
        if until <= now:
            assert self._limiter is not None and self._item is not None
            if self._limiter.test(self._item, address):
                del self.blocked[address]
                return 0
            until = self.blocked[address] = self._reset(address, now)
        return max(1, math.ceil(until - now))

    def failed(self, address: str) -> None:
        """Count one failed authentication from ``address``; block it when the limit is reached."""
        if self._limiter is None or self._item is None:
            return
        self._limiter.hit(self._item, address)
        if self._limiter.test(self._item, address):
            return
        if address not in self.blocked:
            # The address, never a credential: keys are not logged (CONTRACT 10).
            log.warning("%s: %s failed authentications; refusing it until the window has room", address, self.limit)
            if len(self.blocked) >= MAX_BLOCKED:
                self._forget_lapsed()
        self.blocked[address] = self._reset(address, time.time())

    def _reset(self, address: str, now: float) -> float:
        assert self._limiter is not None and self._item is not None
        reset: float = self._limiter.get_window_stats(self._item, address).reset_time
        return max(reset, now + 1.0)

    def _forget_lapsed(self) -> None:
        now = time.time()
        for address in [address for address, until in self.blocked.items() if until <= now]:
            del self.blocked[address]
        while len(self.blocked) >= MAX_BLOCKED:  # all still blocked: the oldest block goes first
            del self.blocked[next(iter(self.blocked))]

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self._trusted)

    def _forwarded(self, headers: Iterable[tuple[bytes, bytes]], peer: IPAddress) -> IPAddress:
        values = [value for name, value in headers if name == b"x-forwarded-for"]
        if not values:
            return peer
        # Several X-Forwarded-For fields are one comma-separated list, in order (RFC 9110 5.3).
        hops = b",".join(values).rsplit(b",", MAX_HOPS)[-MAX_HOPS:]
        client = peer
        for hop in reversed(hops):
            address = _ip(hop.decode("latin-1"))
            if address is None:
                break  # written by a trusted proxy, so not the client's to choose: count the proxy's hop
            client = address
            if not self._is_trusted(address):
                break
        return client


def _ip(text: str) -> IPAddress | None:
    text = text.strip()[:64]
    if text.startswith("["):  # [2001:db8::1]:443
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # 192.0.2.1:443
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _key(address: IPAddress) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
