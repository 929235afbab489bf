"""The METER call's encoding: what one batch leaves for the next (store/_redis_meter_wire.Encoded)
must never change what a batch says. Each batch here is compared, KEYS and decoded argument,
with the same work encoded by a batch that starts from nothing."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import msgspec
import pytest

from meterguard.plans import Window
from meterguard.store import _redis_meter_wire as wire
from meterguard.store._ledger_entries import Admission, Work
from meterguard.store._redis_meter_wire import Batch, Encoded, batch_payload
from meterguard.store.base import Meter

from .test_store_behaviour import request

WINDOWS = (Window("1m", 60, 60), Window("1h", 1000, 3600))
BILLED = Meter(1000, 10, tiers=((None, 50),))


def tag(customer: str) -> str:
    return f"t:{{c:{customer}}}"


def encoded(works: list[Work], encoded: Encoded | None) -> tuple[list[str], Any]:
    batch = Batch(tag, encoded)
    groups = [batch.work(work) for work in works]
    payload = batch_payload({"t": batch.terms, "g": groups})
    return batch.keys, msgspec.msgpack.decode(payload)


def one(*admissions: Admission) -> list[Work]:
    return [Work(a.request.customer, admissions=[a]) for a in admissions]


def test_batches_sharing_what_they_encoded_say_what_fresh_batches_say() -> None:
    plain = request("acme", windows=WINDOWS, calls=BILLED)
    other_key = replace(plain, key_id="key2")
    next_period = replace(plain, period_id="2026-12", period_end=plain.period_end + 86_400)
    bob = request("bob", windows=WINDOWS)
    idempotent = replace(plain, idempotency_key="k-1", idempotency_fingerprint="fp")
    batches = [
        one(Admission(plain, False), Admission(bob, False)),
        one(Admission(plain, False)),  # the same request object again: reused
        one(Admission(plain, True)),  # served on loss: a field of its own
        one(Admission(replace(plain, lease=5), False)),  # a lease: likewise
        one(Admission(idempotent, False)),  # its key's KEYS index is the batch's: never reused
        one(Admission(bob, False), Admission(idempotent, False)),
        one(Admission(plain, False), Admission(other_key, False)),
        one(Admission(next_period, False)),  # a new period: a new period hash
        one(Admission(plain, False)),
        [Work("acme", admissions=[Admission(plain, False), Admission(next_period, False)])],
    ]
    shared = Encoded()
    for works in batches:
        assert encoded(works, shared) == encoded(works, None)
    assert id(plain) in shared.admissions and id(bob) in shared.admissions
    assert encoded(batches[7], shared)[0] == ["t:{c:acme}:s", "t:{c:acme}:events", "t:{c:acme}:p:2026-12"]


def test_a_kept_encoding_serves_only_the_objects_it_was_made_for() -> None:
    """Kept by id(): an entry whose objects are not the ones asked about (an id reused after the
    first object was freed) is made again, not read."""
    plain = request("acme", windows=WINDOWS, calls=BILLED)
    stranger = request("zed", windows=(Window("1s", 1, 1),))
    shared = Encoded()
    shared.admissions[id(plain)] = (stranger, "t:{c:zed}:p:old", ["not", "this"])
    ident = (id(plain.windows), plain.strategy, id(plain.calls), id(plain.records))
    shared.terms[ident] = (stranger.windows, plain.calls, plain.records, ["not this"])
    works = one(Admission(plain, False))
    assert encoded(works, shared) == encoded(works, None)


def test_what_is_kept_stays_bounded_and_still_says_what_fresh_batches_say(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each table of Encoded is emptied when full (MAX_ENCODED; 2 here): a gateway meeting new
    customers and request objects all day keeps at most that many of each."""
    monkeypatch.setattr(wire, "MAX_ENCODED", 2)
    shared = Encoded()
    for n in range(5):
        works = one(Admission(request(f"c{n}", windows=(Window(f"{n}s", 10, n + 1),)), False))
        assert encoded(works, shared) == encoded(works, None)
        assert len(shared.customers) <= 2 and len(shared.admissions) <= 2 and len(shared.terms) <= 2
