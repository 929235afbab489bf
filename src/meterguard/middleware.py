"""MeterGuard: a pure ASGI middleware that authenticates, meters and, past the plan, refuses.

One request (ARCHITECTURE.md): public route -> credentials -> customer status -> route
entitlement -> one atomic store decision (rate windows, quotas, spend cap) -> the app, with
``send`` wrapped (_responder.py) to add the rate limit headers and settle the response's records
before its last body chunk leaves. A decision that needs no I/O (the memory store, a fast-path
lease) is made without an ``await``. Reloads, alerts, the watcher and shutdown: _lifecycle.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from os import PathLike

from . import idempotency
from ._gc import gc_tuning_wanted
from ._lifecycle import Lifecycle, answer_lifespan
from ._refusals import idempotency_refusal, refusal, store_unavailable, unauthenticated
from ._responder import Responder
from ._types import ASGIApp, Clock, Receive, Scope, Send
from .alerts import Deliverer
from .auth import AuthFailure, Throttled
from .config import Config, load_config
from .errors import StoreError
from .logs import begin, configure_from_env, current, current_plan
from .meter import Ticket
from .metrics import Metrics
from .plans import Route
from .reload import build_runtime
from .responses import (
    CUSTOMER_SUSPENDED,
    INVALID_IDEMPOTENCY_KEY,
    PLAN_UNAVAILABLE,
    REQUEST_TOO_LARGE,
    ROUTE_NOT_IN_PLAN,
    Headers,
    problem,
    throttled,
)
from .store import store_from_url
from .store.base import Store
from .unresolved import Unresolved

log = logging.getLogger("meterguard")

MAX_LABEL_LENGTH = 120  # characters of an unmatched route's usage label; longer paths are cut


def resolve_store_url(explicit: str | None, config: Config) -> str:
    """Precedence: an explicit argument, then env MG_STORE, then the file's ``store:``, then memory."""
    return explicit or os.environ.get("MG_STORE") or config.store or "memory://"


class MeterGuard(Lifecycle):
    def __init__(
        self,
        app: ASGIApp,
        *,
        config: Config | str | PathLike[str],
        store: Store | str | None = None,
        clock: Clock | None = None,
    ) -> None:
        configure_from_env()
        self._tune_gc = gc_tuning_wanted()
        self.app = app
        loaded = config if isinstance(config, Config) else load_config(config)
        self.clock: Clock = clock or time.time
        if store is None or isinstance(store, str):
            store = store_from_url(resolve_store_url(store, loaded), clock=clock)
        self.store: Store = store
        self.store.configure_ledger(loaded.ledger)
        self.store.set_alert_sink(self._alerted)
        self.metrics = Metrics()
        if hasattr(store, "metrics"):
            store.metrics = self.metrics
        self._use(build_runtime(loaded, self.store, self.clock, self.metrics))
        self._unresolved = Unresolved(self.directory, self.store)
        self._origin = uuid.uuid4().hex  # this process's reload events are not answered by itself
        self._sighup = False
        self._background: set[asyncio.Task[None]] = set()
        self._watcher: asyncio.Future[None] | None = None  # started by the first request, in its loop
        self._admin_prefix = self.config.admin_path
        # Alerts are checked at most once a second per customer, off the request path.
        self._deliverer = Deliverer.from_config(self.config, self.store)
        if self._deliverer is not None:
            self._deliverer.metrics = self.metrics
        self.admin: ASGIApp | None = None
        token = os.environ.get(self.config.admin_token_env)
        if token:
            from .admin import AdminApp

            self.admin = AdminApp(
                config=self.config,
                store=self.store,
                directory=self.directory,
                authenticator=self.authenticator,
                token=token,
                clock=self.clock,
                metrics=self.metrics,
                reload=self.reload_everywhere,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await answer_lifespan(self.app, scope, receive, self._on_shutdown(send))
            else:
                await self.app(scope, receive, send)
            return
        if self._watcher is None:
            self._watcher = asyncio.ensure_future(self._watch())
            self._started()
            if self._deliverer is not None:
                self._deliverer.start()
        path: str = scope["path"]
        if self.admin is not None and path.startswith(self._admin_prefix):
            rest = path[len(self._admin_prefix) :]
            if not rest or rest[0] == "/":
                admin_scope = dict(scope)
                admin_scope["path"] = rest or "/"
                admin_scope["root_path"] = scope.get("root_path", "") + self._admin_prefix
                await self.admin(admin_scope, receive, send)
                return
        method: str = scope["method"]
        route = self._routes.match(method, path)
        if route is not None and route.public:
            await self.app(scope, receive, send)
            return
        runtime = self._runtime
        context = begin(method, path, route)

        headers = scope["headers"]
        try:
            # Size, ambiguity, the failed-authentication throttle, then the cache and the store.
            principal = await self.authenticator.check(scope)
        except StoreError as exc:
            credential = self.authenticator.credential(headers)
            if self._fail_open and isinstance(credential, str):
                await self._serve_unresolved(exc, scope, receive, send, credential, route)
            else:
                await self._store_failed(exc, scope, receive, send)
            return
        if principal is None:
            if method == "OPTIONS" and any(name == b"access-control-request-method" for name, _ in headers):
                await self.app(scope, receive, send)  # a CORS preflight never carries credentials
                return
            await self._refuse(
                send,
                *unauthenticated(
                    f"No API key: send it in the {self.config.api_key_header} header or as a Bearer token."
                ),
            )
            return
        if isinstance(principal, Throttled):
            await self._refuse(send, *throttled(principal.retry_after))
            return
        if isinstance(principal, AuthFailure):
            await self._refuse(send, *unauthenticated(principal.detail, invalid=True))
            return
        context.principal = principal
        if runtime is not self._runtime:  # plans.yaml was reloaded meanwhile: decide under the new one only
            route = context.route = self._routes.match(method, path)
        if principal.suspended:
            await self._refuse(
                send, *problem(403, CUSTOMER_SUSPENDED, f"Customer {principal.customer!r} is suspended.")
            )
            return
        if principal.plan not in self.config.plans:
            log.error(
                "customer %s is on plan %r, which plans.yaml does not define",
                principal.customer,
                principal.plan,
            )
            await self._refuse(send, *problem(403, PLAN_UNAVAILABLE, f"Plan {principal.plan!r} is not available."))
            return
        if route is not None and not route.allows(principal.plan):
            await self._refuse(
                send,
                *problem(
                    403,
                    ROUTE_NOT_IN_PLAN,
                    f"{route.match} is not part of plan {principal.plan!r}.",
                    extra={"plan": principal.plan},
                ),
            )
            return

        try:
            idempotency_key = idempotency.parse_key(headers)
        except ValueError:
            await self._refuse(send, *problem(400, INVALID_IDEMPOTENCY_KEY, "Idempotency-Key must be 1-255 "
                                              "printable ASCII characters."))  # fmt: skip
            return
        fingerprint = ""
        if idempotency_key is not None:
            try:
                body, receive = await idempotency.read_body(receive)
            except idempotency.TooLarge:
                detail = f"A request with an Idempotency-Key may carry at most {idempotency.MAX_REQUEST_BYTES} bytes."
                await self._refuse(send, *problem(413, REQUEST_TOO_LARGE, detail))
                return
            fingerprint = idempotency.fingerprint(scope, body)
        label = route.match if route is not None else unmatched_label(method, path)
        # The request is decided, counted and settled under the plans.yaml version in force now,
        # even if a reload swaps in another while it runs.
        engine, counting = self.engine, self._counting
        request, terms, ticket = engine.request(
            principal.customer,
            principal.key_id,
            principal.plan,
            principal.anchor_day,
            route,
            label,
            route.weight if route is not None else 1,
            idempotency_key,
            principal.spend_cap_cents,
            fingerprint,
        )
        # In memory, or from a fast-path lease: decided here, with no await; else in the store.
        decision = engine.decide_now(request)
        if decision is None:
            try:
                decision = await engine.decide(request)
            except StoreError as exc:
                if self._fail_open:
                    # Served without a decision: the store counts its call once (AdmitRequest.served_on_loss);
                    # its records are settled as any other's, and wait in the ledger for the store.
                    await self._serve_unmetered(exc, scope, receive, send, ticket, terms.billable, principal.plan)
                else:
                    await self._store_failed(exc, scope, receive, send)
                return
        if decision.idempotency is not None:
            await self._refuse(send, *idempotency_refusal(decision.idempotency))
            return
        self.metrics.decided(principal.plan, decision)
        metered = terms.headers(decision, ticket.period.end_ts)
        if not decision.admitted:
            await self._refuse(send, *refusal(decision, principal, terms, ticket, metered))
            return
        if decision.replay:
            assert idempotency_key is not None
            await self._replay(send, principal.customer, idempotency_key, metered)
            return

        calls_remaining, records_remaining = terms.remaining(
            decision, terms.spend_cap_cents if principal.spend_cap_cents is None else principal.spend_cap_cents
        )
        scope["meterguard"] = {
            "customer": principal.customer,
            "key_id": principal.key_id,
            "plan": principal.plan,
            "calls_remaining": calls_remaining,
            "records_remaining": records_remaining,
        }
        capture = idempotency.Capture() if idempotency_key is not None else None
        responder = Responder(
            send, counting, engine, self.metrics, principal.plan, ticket, metered, capture,
            billable=terms.billable, head=method == "HEAD",
        )  # fmt: skip
        try:
            await self.app(scope, receive, responder.send)
        except Exception:
            responder.failed()
            raise
        finally:
            if not responder.settled:
                await responder.close()
            if capture is not None:
                assert idempotency_key is not None
                await self._finish_idempotent(principal.customer, idempotency_key, fingerprint, capture)

    async def _replay(self, send: Send, customer: str, key: str, metered: Headers) -> None:
        """A repeat of a request already served: its stored response, the app does not run."""
        try:
            stored = await self.store.stored_response(customer, key)
        except StoreError as exc:
            log.warning("could not read the stored response of an Idempotency-Key: %s", exc)
            stored = None
        if stored is None:  # expired between the decision and now: as if the first still ran
            await self._refuse(send, *idempotency_refusal("in_flight"))
            return
        headers = [*stored.headers, *metered, (b"idempotent-replayed", b"true")]
        await send({"type": "http.response.start", "status": stored.status, "headers": headers})
        await send({"type": "http.response.body", "body": stored.body, "more_body": False})

    async def _finish_idempotent(self, customer: str, key: str, fingerprint: str, capture: idempotency.Capture) -> None:
        """Keep the first response for its repeats; or forget the key, so that a repeat runs (and
        is billed) as a new call, when the response was not complete or is too large."""
        try:
            await self.store.finish_idempotent(customer, key, fingerprint, capture.response(), idempotency.TTL_SECONDS)
        except StoreError as exc:
            log.warning("could not store the response of an Idempotency-Key (a repeat will wait, then run): %s", exc)

    async def _refuse(self, send: Send, status: int, headers: Headers, body: bytes) -> None:
        self.metrics.refused(current(), status)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _serve_unmetered(
        self,
        exc: StoreError,
        scope: Scope,
        receive: Receive,
        send: Send,
        ticket: Ticket,
        billable: frozenset[int],
        plan: str,
    ) -> None:
        self.metrics.count(plan, "unmetered")
        log.warning("store unavailable, serving (on_store_error: fail_open; usage kept for the store): %s", exc)
        responder = Responder(
            send, self._counting, self.engine, self.metrics, plan, ticket, [], billable=billable,
            head=scope["method"] == "HEAD",
        )  # fmt: skip
        try:
            await self.app(scope, receive, responder.send)
        except Exception:
            responder.failed()
            raise
        finally:
            await responder.close()

    async def _serve_unresolved(
        self, exc: StoreError, scope: Scope, receive: Receive, send: Send, credential: str, route: Route | None
    ) -> None:
        """fail_open, and the credential could not even be looked up: serve; its usage waits for
        the store to say whose it is (unresolved.py)."""
        label = route.match if route is not None else unmatched_label(scope["method"], scope["path"])
        weight = route.weight if route is not None else 1
        entry = self._unresolved.add(credential, label, route is not None, weight, self.clock())
        if entry is None:
            await self._store_failed(exc, scope, receive, send)
            return
        self.metrics.count(current_plan(), "unmetered")
        log.warning("store unavailable, serving an unknown key (on_store_error: fail_open; resolved later): %s", exc)
        responder = Responder(
            send, self._counting, self.engine, self.metrics, "", None, [], None, entry, head=scope["method"] == "HEAD"
        )
        await self.app(scope, receive, responder.send)
        if not responder.settled:
            entry.records = responder.records

    async def _store_failed(self, exc: StoreError, scope: Scope, receive: Receive, send: Send) -> None:
        if self._fail_open:
            self.metrics.count(current_plan(), "unmetered")
            log.warning("store unavailable, serving unmetered (on_store_error: fail_open): %s", exc)
            await self.app(scope, receive, send)
            return
        log.warning("store unavailable, refusing (on_store_error: fail_closed): %s", exc)
        await self._refuse(send, *store_unavailable())


def unmatched_label(method: str, path: str) -> str:
    """The usage label of a request no route matches: ``METHOD /path``, bounded in length and
    free of control characters (a label is kept for a year in the audit counters)."""
    label = f"{method[:16]} {path}"
    if len(label) > MAX_LABEL_LENGTH or not label.isprintable():
        label = "".join(ch if ch.isprintable() else "?" for ch in label[:MAX_LABEL_LENGTH])
        if len(f"{method} {path}") > MAX_LABEL_LENGTH:
            label = label[: MAX_LABEL_LENGTH - 1] + "…"
    return label
