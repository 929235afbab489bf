"""The METER call's wire format: a batch of ledger work as KEYS and one MessagePack argument, and the
replies back as decisions (store/lua/meter.lua reads and writes the same fields).

Pure encoding and decoding, no I/O: store/_redis_meter.py sends the batches and reads the counters.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import msgspec

from ..plans import Window
from ..windows import wait
from ._ledger_entries import Admission, Carry, Usage, Work
from .base import AdmitRequest, Alerting, Decision, Meter, Reason, WindowState

CODE_ADMITTED, CODE_RATE, CODE_QUOTA, CODE_CAP, CODE_IN_FLIGHT, CODE_MISMATCH, CODE_EXPIRED = 0, 1, 2, 3, 4, 5, 8
FLAG_REPLAY, FLAG_CALLS, FLAG_RECORDS, FLAG_WINDOW = 1, 4, 8, 16
_REASONS: dict[int, Reason] = {CODE_RATE: "rate_limited", CODE_QUOTA: "quota", CODE_CAP: "spend_cap"}
_IDEMPOTENCY: dict[int, Literal["in_flight", "mismatch"]] = {CODE_IN_FLIGHT: "in_flight", CODE_MISMATCH: "mismatch"}


def _meter(meter: Meter) -> list[Any]:
    return [
        -1 if meter.included is None else meter.included,
        meter.unit,
        [[-1 if up_to is None else up_to, price] for up_to, price in meter.tiers],
    ]


def _field(window: Window) -> str:
    """The window's field in the customer's state hash, which holds its counts packed (store/lua/meter.lua)."""
    return "w:" + quote(window.counter, safe="")


def idempotency_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


MAX_ENCODED = 100_000  # requests (and customers) whose encoding is kept, as MeterEngine keeps requests
_K = TypeVar("_K")
_V = TypeVar("_V")


def _kept(table: dict[_K, _V], key: _K, value: _V) -> _V:
    """``table[key] = value`` in one of Encoded's tables, emptied first when full."""
    if len(table) >= MAX_ENCODED:
        table.clear()
    table[key] = value
    return value


class Encoded:
    """What one batch's encoding leaves for the next (the store keeps one): per customer, the
    names of its state hash and events stream; per terms (by their objects' identity), their
    entry in a batch's terms; per request object (the gateway reuses one
    AdmitRequest for every call of a customer, key and route within a day), what its admission's
    encoding owes that request alone: the request itself (which keeps its id from being reused),
    its period hash's name, and its fields after the first two, the only ones that depend on the
    batch (indices into its terms and KEYS)."""

    __slots__ = ("admissions", "customers", "terms")

    def __init__(self) -> None:
        self.admissions: dict[int, tuple[AdmitRequest, str, list[Any]]] = {}
        self.customers: dict[str, tuple[str, str]] = {}
        self.terms: dict[tuple[int, str, int, int], tuple[tuple[Window, ...], Meter, Meter, list[Any]]] = {}


class Batch:
    """KEYS and the argument of one METER call, built up work by work."""

    def __init__(self, tag: Callable[[str], str], encoded: Encoded | None = None) -> None:
        self.tag = tag  # a customer's key prefix (RedisBase._tag)
        self.encoded = Encoded() if encoded is None else encoded
        self.keys: list[str] = []
        self.key_index: dict[str, int] = {}
        self.terms: list[Any] = []
        self.terms_index: dict[tuple[int, str, int, int], int] = {}

    def key(self, name: str) -> int:
        index = self.key_index.get(name)
        if index is None:
            self.keys.append(name)
            index = self.key_index[name] = len(self.keys)
        return index

    def term(self, request: AdmitRequest) -> int:
        return self._term(request.windows, request.strategy, request.calls, request.records)

    def _term(self, windows: tuple[Window, ...], strategy: str, calls: Meter, records: Meter) -> int:
        # By identity: the requests of one plan and route share these objects, and hashing the
        # frozen dataclasses (Python-level __hash__) cost more than the rest of the encoding.
        # Equal terms in distinct objects only repeat an entry. The batch keeps them alive, and
        # the entry kept for later batches keeps its own objects, whose ids it checks.
        ident = (id(windows), strategy, id(calls), id(records))
        index = self.terms_index.get(ident)
        if index is None:
            known = self.encoded.terms.get(ident)
            if known is None or known[0] is not windows or known[1] is not calls or known[2] is not records:
                entry = [
                    1 if strategy == "sliding" else 0,
                    [[_field(w), w.limit, w.seconds] for w in windows],
                    _meter(calls),
                    _meter(records),
                ]
                known = _kept(self.encoded.terms, ident, (windows, calls, records, entry))
            self.terms.append(known[3])
            index = self.terms_index[ident] = len(self.terms)
        return index

    def admission(self, admission: Admission) -> list[Any]:
        request = admission.request
        # Only the first two fields depend on the batch (indices into its terms and KEYS), and
        # the Idempotency-Key's index; ``served`` is the admission's, not the request's. The rest
        # is reused for the common admission. (A leased one is a new request object every time.)
        plain = request.idempotency_key is None and not request.lease and not admission.served
        if plain:
            known = self.encoded.admissions.get(id(request))
            if known is not None and known[0] is request:
                return [self.term(request), self.key(known[1]), *known[2]]
        tag = self.tag(request.customer)
        idem = 0
        if request.idempotency_key is not None:
            idem = self.key(f"{tag}:i:{idempotency_digest(request.idempotency_key)}")
        period_key = f"{tag}:p:{request.period_id}"
        fields = [
            self.term(request),
            self.key(period_key),
            request.period_id,
            request.day,
            request.weight,
            request.route,
            1 if request.listed else 0,
            request.key_id,
            request.period_end,
            -1 if request.spend_cap_cents is None else request.spend_cap_cents,
            request.lease,
            idem,
            request.idempotency_fingerprint,
            1 if admission.served else 0,
            *_alerts(request.alerting),
        ]
        _trimmed(fields, _ADMISSION_DEFAULTS)
        if plain:
            _kept(self.encoded.admissions, id(request), (request, period_key, fields[2:]))
        return fields

    def usage(self, usage: Usage) -> list[Any]:
        customer, period_id, period_end, day = usage.key
        fields = [
            self.key(f"{self.tag(customer)}:p:{period_id}"),
            period_id,
            day,
            period_end,
            [[route, 1 if listed else 0, key_id, c, r] for (route, listed, key_id), (c, r) in usage.rows.items()],
            usage.consumed,
            usage.returned,
            [[_field(w), w.seconds, slot, units] for (w, slot), units in usage.windows.items() if units > 0],
            usage.unmetered,
            usage.uncounted,
            *self._usage_alerts(usage),
        ]
        return _trimmed(fields, _USAGE_DEFAULTS)

    def _usage_alerts(self, usage: Usage) -> list[Any]:
        """The thresholds to check, {terms, cap} to price spend (or 0), and alerts acknowledged."""
        alerting = usage.alerting
        thresholds: Any = 0
        priced: Any = 0
        if alerting is not None:
            thresholds = _alerts(alerting)[0]
            if alerting.spend:
                cap = -1 if alerting.spend_cap_cents is None else alerting.spend_cap_cents
                priced = [self._term((), "sliding", alerting.calls, alerting.records), cap]
        return [thresholds, priced, usage.acks or 0]

    def carry(self, carry: Carry) -> list[Any]:
        return [carry.seq, [self.admission(a) for a in carry.admissions], [self.usage(u) for u in carry.usages]]

    def work(self, work: Work) -> list[Any]:
        customer = work.customer
        names = self.encoded.customers.get(customer)
        if names is None:
            tag = self.tag(customer)
            names = _kept(self.encoded.customers, customer, (f"{tag}:s", f"{tag}:events"))
        fields = [customer, self.key(names[0]), self.key(names[1])]
        # Trailing empty lists left out, as meter.lua reads a missing list as empty, without
        # building them first: a group is most often one admission, or one customer's usage.
        carries, usages = work.carries, work.usages
        if work.admissions or usages or carries:
            fields.append([self.admission(a) for a in work.admissions])
            if usages or carries:
                fields.append([self.usage(u) for u in usages])
                if carries:
                    fields.append([self.carry(c) for c in carries])
        return fields


# The defaults of each field of an admission and a usage entry (None: always sent); a group's
# are empty lists after its first three fields (Batch.work). Trailing fields at their default
# are left out, meter.lua reads them back as the default: Redis spends most of a microsecond
# decoding each value, and most of these are defaults.
_ADMISSION_DEFAULTS: tuple[Any, ...] = (None,) * 9 + (-1, 0, 0, "", 0, 0, 0)
_USAGE_DEFAULTS: tuple[Any, ...] = (None,) * 5 + (0, 0, [], 0, 0, 0, 0, 0)


def _trimmed(fields: list[Any], defaults: tuple[Any, ...]) -> list[Any]:
    end = len(fields)
    while end and defaults[end - 1] is not None and fields[end - 1] == defaults[end - 1]:
        end -= 1
    del fields[end:]
    return fields


_pack = msgspec.msgpack.Encoder().encode
_encode = msgspec.json.Encoder().encode  # MessagePack's fallback; cjson reads big integers as doubles


def batch_payload(document: Any) -> bytes | str:
    """The batch as MessagePack, which meter.lua decodes in about 80% of the instructions JSON
    takes (integers and strings are read, not parsed); JSON for an integer past 64 bits, which
    MessagePack cannot carry (meter.lua tells them apart by the first byte).

    A string no UTF-8 can carry (a lone surrogate, from an ASGI server that decodes paths with
    ``surrogateescape``) is sent with U+FFFD in its place: Redis keeps UTF-8, and neither cjson
    (which refuses the escape) nor a reader decoding UTF-8 could take it. Before, such a batch
    failed in the script on every retry, and blocked its group's ledger."""
    try:
        return _pack(document)
    except UnicodeEncodeError:
        return batch_payload(_replace_surrogates(document))
    except OverflowError:
        return _encode(document)


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [_replace_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {key: _replace_surrogates(item) for key, item in value.items()}
    return value


def _alerts(alerting: Alerting | None) -> list[Any]:
    """An admission's last two fields: the thresholds ({meter, level, name}, by meter then level)
    and whether they price spend."""
    if alerting is None or not alerting.thresholds:
        return [0, 0]
    return [[[t.meter, t.units, t.name] for t in alerting.thresholds], 1 if alerting.spend else 0]


def recorded_reply(entry: list[Any]) -> list[Any]:
    """A recorded decision ``[code, granted, flags]`` in the shape of a reply: the counts of that
    moment are not kept (a repeat is rare: a retry after a lost reply), so the windows read as
    full and the totals as zero; the decision itself is exact."""
    code, granted, flags = (int(x) for x in entry)
    return [code, 0, 0, 0, granted, flags] if code != CODE_EXPIRED else [code]


def decision(request: AdmitRequest, reply: list[Any], now: float) -> Decision:
    """A Decision from an admission's reply: the script returns counts, the rest is windows.py.

    Once per admission, so the window arithmetic of windows.estimate/remaining/reset_after is
    written out here (the same expressions, so the same floats) and computed once per window,
    and ``max()`` is written as a test (a builtin's call costs more than the comparison).
    """
    code, calls_used, records_used, spend, granted, flags = reply[:6]
    sliding = request.strategy == "sliding"
    admitted = code == CODE_ADMITTED
    weight = request.weight
    states: list[WindowState] = []
    slots: list[int] = []
    violated: list[str] = []
    retry_after = 0.0
    known = len(reply) >= 6 + 2 * len(request.windows)
    for i, window in enumerate(request.windows):
        seconds, limit = window.seconds, window.limit
        if known:
            previous, current = reply[6 + 2 * i], reply[7 + 2 * i]
        else:
            previous, current = 0, limit
        index = int(now // seconds)
        elapsed = now - index * seconds
        if flags & (FLAG_WINDOW << i):
            violated.append(window.name)
            before = current - weight - granted if admitted else current
            waited = wait(previous, before, elapsed, seconds, limit, weight, sliding)
            if waited > retry_after:
                retry_after = waited
        used = previous * (seconds - elapsed) / seconds + current if sliding else current
        if used + weight > limit:  # windows.reset_after
            reset = wait(previous, current, elapsed, seconds, limit, weight, sliding)
        else:
            reset = seconds - elapsed
        left = math.floor(limit - used + 1e-9)
        states.append(WindowState(window, left if left > 0 else 0, reset))
        slots.append(index)
    if admitted and not violated:
        # The common case, built positionally (a keyword call costs more): admitted, reason,
        # violated, retry_after, windows, calls_used, records_used, spend_cents, now, granted,
        # replay, slots
        replay = bool(flags & FLAG_REPLAY)
        return Decision(True, None, (), 0.0, tuple(states), calls_used, records_used, spend, now, granted, replay,
                        tuple(slots))  # fmt: skip
    if code == CODE_QUOTA:
        if flags & FLAG_CALLS:
            violated.append("calls-period")
        if flags & FLAG_RECORDS:
            violated.append("records-period")
    if code in (CODE_QUOTA, CODE_CAP):
        retry_after = request.period_end - now
    return Decision(
        admitted=admitted,
        reason=_REASONS.get(code),
        violated=tuple(violated),
        retry_after=retry_after,
        windows=tuple(states),
        calls_used=calls_used,
        records_used=records_used,
        spend_cents=spend,
        now=now,
        granted=granted,
        replay=bool(flags & FLAG_REPLAY),
        slots=tuple(slots),
        idempotency=_IDEMPOTENCY.get(code),
    )


__all__ = ["Batch", "batch_payload", "decision", "idempotency_digest", "recorded_reply"]
