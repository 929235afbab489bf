"""MeterGuard: a pure ASGI middleware that authenticates, meters and, past the plan, refuses.

One request (ARCHITECTURE.md): public route -> credentials -> customer status -> route
entitlement -> one atomic store decision (rate windows, quotas, spend cap) -> the app, with
``send`` wrapped to add the rate limit headers and settle the response's records before its
last body chunk leaves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Coroutine
from os import PathLike
from typing import Any

from . import idempotency
from ._types import ASGIApp, Clock, Message, Receive, Scope, Send
from .alerts import Alerts, Deliverer
from .auth import Authenticator, AuthFailure, Principal, Throttled
from .config import Config, load_config
from .customers import Directory
from .errors import ConfigError, StoreError
from .logs import begin, configure_from_env, current, current_plan
from .meter import MeterEngine, Terms, Ticket
from .metrics import Metrics
from .periods import rfc3339
from .plans import Route
from .records import Counter, StreamCounter, counter, is_json, parse_header
from .reload import RELOAD_EVENT, ReloadResult, Runtime, build_runtime, keep_restart_only, summary
from .responses import (
    CUSTOMER_SUSPENDED,
    IDEMPOTENCY_KEY_IN_FLIGHT,
    IDEMPOTENCY_KEY_REUSED,
    INVALID_IDEMPOTENCY_KEY,
    PLAN_UNAVAILABLE,
    QUOTA_EXCEEDED,
    REQUEST_TOO_LARGE,
    ROUTE_NOT_IN_PLAN,
    SPEND_CAP_REACHED,
    STORE_UNAVAILABLE,
    UNAUTHENTICATED,
    Headers,
    metered_headers,
    problem,
    retry_seconds,
    throttled,
)
from .store import store_from_url
from .store.base import Decision, Fired, Store
from .unresolved import Entry, Unresolved

log = logging.getLogger("meterguard")

STORE_RETRY_AFTER = 5
MAX_LABEL_LENGTH = 120  # characters of an unmatched route's usage label; longer paths are cut
_WWW_AUTHENTICATE = b'Bearer realm="meterguard"'


def resolve_store_url(explicit: str | None, config: Config) -> str:
    """Precedence: an explicit argument, then env MG_STORE, then the file's ``store:``, then memory."""
    return explicit or os.environ.get("MG_STORE") or config.store or "memory://"


class MeterGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        config: Config | str | PathLike[str],
        store: Store | str | None = None,
        clock: Clock | None = None,
    ) -> None:
        configure_from_env()
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
                send = self._on_shutdown(send)
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
                *_unauthenticated(
                    f"No API key: send it in the {self.config.api_key_header} header or as a Bearer token."
                ),
            )
            return
        if isinstance(principal, Throttled):
            await self._refuse(send, *throttled(principal.retry_after))
            return
        if isinstance(principal, AuthFailure):
            await self._refuse(send, *_unauthenticated(principal.detail, invalid=True))
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
        try:
            decision, terms, ticket = await self.engine.admit(
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
        except StoreError as exc:
            if self._fail_open:
                # Served without a decision: the store counts its call once (AdmitRequest.served_on_loss);
                # its records are settled as any other's, and wait in the ledger for the store.
                ticket = self.engine.ticket(principal.customer, principal.key_id, principal.anchor_day, route, label)
                billable = self.engine.terms(principal.plan, route).billable
                await self._serve_unmetered(exc, scope, receive, send, ticket, billable)
            else:
                await self._store_failed(exc, scope, receive, send)
            return
        if decision.idempotency is not None:
            await self._refuse(send, *_idempotency_refusal(decision.idempotency))
            return
        self.metrics.decided(principal.plan, decision)
        period_end = ticket.period.end_ts
        metered = metered_headers(decision, terms.policy, terms.calls, terms.records, period_end, terms.weight)
        if not decision.admitted:
            await self._refuse(send, *_refusal(decision, principal, terms, ticket, metered))
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
        responder = _Responder(self, send, ticket, metered, capture, billable=terms.billable, head=method == "HEAD")
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
            await self._refuse(send, *_idempotency_refusal("in_flight"))
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

    # ------------------------------------------------------------------------------------------
    # plans.yaml, one version at a time (reload.py)
    # ------------------------------------------------------------------------------------------

    def _use(self, runtime: Runtime) -> None:
        """Swap in a version of plans.yaml. Synchronous: no request runs while the references change."""
        self._runtime = runtime
        self.config: Config = runtime.config
        self.directory: Directory = runtime.directory
        self.authenticator: Authenticator = runtime.authenticator
        self.engine: MeterEngine = runtime.engine
        if hasattr(self, "_unresolved"):
            self._unresolved.directory = runtime.directory
        self._alerts: Alerts | None = runtime.alerts
        self._routes = runtime.config.routes
        self._records_header = runtime.config.records_header.encode("latin-1")
        field = runtime.config.records_json_field
        self._json_field = field
        self._count_json: Counter | None = counter(field) if field is not None else None
        self._max_body = runtime.config.records_max_body_bytes
        self._fail_open = runtime.config.on_store_error == "fail_open"
        admin = getattr(self, "admin", None)
        if admin is not None:
            admin.use(runtime.config, runtime.directory, runtime.authenticator)

    def reload(self) -> ReloadResult:
        """Reread the plans file this gateway was built from; swap it in, or keep the running one.

        Never raises for a bad file: the errors come back as ``FILE:LINE: path: reason`` lines,
        and are logged at ERROR (what a SIGHUP leaves behind).
        """
        source = self.config.source
        if not os.path.isfile(source):
            log.error("cannot reload: the plans were not read from a file (%s)", source)
            self.metrics.reloaded(False)
            return ReloadResult(False, errors=(f"{source}: not a file; nothing to reload",))
        try:
            loaded = load_config(source)
        except ConfigError as exc:
            errors = tuple(str(issue) for issue in exc.issues)
            log.error("plans.yaml reload refused, the running plans stay:\n%s", "\n".join(errors))
            self.metrics.reloaded(False)
            return ReloadResult(False, errors=errors)
        loaded, restart_required = keep_restart_only(self.config, loaded)
        changes = summary(self.config, loaded, restart_required)
        self._use(build_runtime(loaded, self.store, self.clock, self.metrics, self._runtime))
        self.metrics.reloaded(True)
        log.info(
            "plans.yaml reloaded from %s: plans %s (added %s, removed %s, changed %s)",
            source, changes["plans"], changes["added"], changes["removed"], changes["changed"],
        )  # fmt: skip
        if restart_required:
            log.warning("plans.yaml: %s changed; kept until the process restarts", ", ".join(restart_required))
        return ReloadResult(True, changes)

    async def reload_everywhere(self) -> ReloadResult:
        """``POST {admin.path}/reload``: reload here, then tell every other process on the store."""
        result = self.reload()
        if result.ok:
            try:
                await self.store.notify(RELOAD_EVENT + self._origin)
            except StoreError as exc:
                log.warning("reloaded here, but could not tell the other processes: %s", exc)
                return ReloadResult(True, {**result.summary, "notified": False}, result.errors)
        return ReloadResult(result.ok, {**result.summary, "notified": result.ok}, result.errors)

    def _started(self) -> None:
        """In the serving loop (lifespan startup or the first request): SIGHUP, the metrics sync."""
        self.metrics.start()
        if self._sighup or threading.current_thread() is not threading.main_thread():
            return
        # Only where nobody else handles SIGHUP: its default action ends the process, never what
        # an operator who edited plans.yaml wants; a framework with its own meaning for it wins.
        if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, None):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)
            self._sighup = True

    async def settle(self, ticket: Ticket, records: int, *, refund: bool = False, uncounted: int = 0) -> None:
        """Settle records (``refund``: give the call back instead, its status is not billed). A
        client disconnect cancels the request, not the write: every store completes a settlement
        once handed to it (the Redis store runs it in a batch task of its own; the memory store
        and the fast path never yield), so no shield task is needed."""
        if not refund:
            self.metrics.billed(current_plan(), records)
        try:
            await self.engine.settle(ticket, records, refund=refund, uncounted=uncounted)
        except StoreError:
            log.exception("could not settle %d records of customer %s", records, ticket.customer)

    async def _refuse(self, send: Send, status: int, headers: Headers, body: bytes) -> None:
        self.metrics.refused(current(), status)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _serve_unmetered(
        self, exc: StoreError, scope: Scope, receive: Receive, send: Send, ticket: Ticket, billable: frozenset[int]
    ) -> None:
        self.metrics.count(current_plan(), "unmetered")
        log.warning("store unavailable, serving (on_store_error: fail_open; usage kept for the store): %s", exc)
        responder = _Responder(self, send, ticket, [], None, billable=billable, head=scope["method"] == "HEAD")
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
        responder = _Responder(self, send, None, [], None, entry, head=scope["method"] == "HEAD")
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
        await self._refuse(
            send,
            *problem(
                503,
                STORE_UNAVAILABLE,
                "The metering store is unavailable; please retry.",
                headers=[(b"retry-after", str(STORE_RETRY_AFTER).encode())],
            ),
        )

    def _alerted(self, fired: list[Fired]) -> None:
        """The store's report of thresholds crossed, made in the step that changed usage; every
        process of the gateway may hear one, until one of them has delivered and acknowledged it."""
        if self._alerts is not None:
            self._in_background(self._deliver_alerts(self._alerts, fired))

    async def _deliver_alerts(self, alerts: Alerts, fired: list[Fired]) -> None:
        delivered: dict[tuple[str, str], list[str]] = {}
        for item in fired:
            try:
                record = await self.directory.get(item.customer)
                if record is not None:
                    await alerts.fire(item, record)  # claimed and queued once, whoever hears it
            except StoreError as exc:
                log.warning("could not queue alert %s of %s (it is reported again): %s", item.name, item.customer, exc)
                continue
            delivered.setdefault((item.customer, item.period_id), []).append(item.name)
        for (customer, period_id), names in delivered.items():
            try:
                await self.store.ack_alerts(customer, period_id, names)
            except StoreError as exc:
                log.warning("could not acknowledge alerts of %s (they are queued once all the same): %s", customer, exc)

    def _in_background(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _watch(self) -> None:
        """Background work of a gateway process: replay what a spool kept, warn about a lossy
        store, then follow changes."""
        await self.store.start()
        try:
            for warning in await self.store.diagnose():
                log.warning("%s", warning)
        except StoreError:
            pass  # an unreachable store shows in every request; nothing to add here
        await self.store.watch(self._on_change)

    def _on_change(self, event: str) -> None:
        # "*": (re)subscribed, "-": subscription lost, anything else: a key or customer changed.
        # Changes are rare, and dropping every cached lookup cannot miss one a finer drop would.
        if event.startswith(RELOAD_EVENT):
            if event != RELOAD_EVENT + self._origin:  # another process's POST /reload
                self.reload()
        elif event == "*":
            self.authenticator.follow(True)
        elif event == "-":
            self.authenticator.follow(False)
        else:
            self.authenticator.invalidate()

    def _on_shutdown(self, send: Send) -> Send:
        async def send_then_close(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self._started()
            elif message["type"] == "lifespan.shutdown.complete":
                await self.aclose()
            await send(message)

        return send_then_close

    async def aclose(self) -> None:
        """Settle and flush what is pending, close the store, then stop watching for changes."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._deliverer is not None:
            await self._deliverer.aclose()
        await self._unresolved.aclose()
        await self.engine.aclose()
        await self.metrics.aclose()
        if self._sighup:
            self._sighup = False
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        # Closing the store ends its change-event subscription from inside (a cancelled pub/sub
        # reader can leave redis-py waiting on its socket); the watcher task then just finishes.
        await self.store.aclose()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None


def unmatched_label(method: str, path: str) -> str:
    """The usage label of a request no route matches: ``METHOD /path``, bounded in length and
    free of control characters (a label is kept for a year in the audit counters)."""
    label = f"{method[:16]} {path}"
    if len(label) > MAX_LABEL_LENGTH or not label.isprintable():
        label = "".join(ch if ch.isprintable() else "?" for ch in label[:MAX_LABEL_LENGTH])
        if len(f"{method} {path}") > MAX_LABEL_LENGTH:
            label = label[: MAX_LABEL_LENGTH - 1] + "…"
    return label


def _idempotency_refusal(state: str) -> tuple[int, Headers, bytes]:
    if state == "mismatch":
        return problem(422, IDEMPOTENCY_KEY_REUSED, "This Idempotency-Key was used with another request.")
    return problem(
        409,
        IDEMPOTENCY_KEY_IN_FLIGHT,
        "The first request with this Idempotency-Key is still running; retry once it has finished.",
        headers=[(b"retry-after", b"1")],
    )


def _unauthenticated(detail: str, *, invalid: bool = False) -> tuple[int, Headers, bytes]:
    challenge = _WWW_AUTHENTICATE + (b', error="invalid_token"' if invalid else b"")
    return problem(401, UNAUTHENTICATED, detail, headers=[(b"www-authenticate", challenge)])


def _refusal(
    decision: Decision, principal: Principal, terms: Terms, ticket: Ticket, metered: Headers
) -> tuple[int, Headers, bytes]:
    retry = [(b"retry-after", str(retry_seconds(decision.retry_after)).encode())]
    if decision.reason == "spend_cap":
        return problem(
            402,
            SPEND_CAP_REACHED,
            f"Overage spend has reached the spend cap of plan {principal.plan!r} for this period.",
            extra={"plan": principal.plan, "resets_at": rfc3339(ticket.period.end)},
            headers=metered + retry,
        )
    extra: dict[str, Any] = {"violated-policies": list(decision.violated), "plan": principal.plan}
    if decision.reason == "rate_limited":
        extra["scope"] = "window"
        detail = f"Rate limit {', '.join(decision.violated)} of plan {principal.plan!r} is full."
    else:
        extra["scope"] = "period"
        if decision.violated[0] == "calls-period":
            limit, used = terms.calls.included, decision.calls_used
        else:
            limit, used = terms.records.included, decision.records_used
        resets_at = rfc3339(ticket.period.end)
        extra.update(limit=limit, used=used, resets_at=resets_at)
        detail = f"The {decision.violated[0]} quota of plan {principal.plan!r} is used up until {resets_at}."
    return problem(429, QUOTA_EXCEEDED, detail, extra=extra, headers=metered + retry)


class _Responder:
    """Wraps ``send`` for one admitted request: adds headers, counts records, settles before the end.

    Bodies are passed through untouched unless they must be read to count a JSON array, and then
    held only up to ``records.max_body_bytes`` (starlette's GZipMiddleware pattern); a larger one
    is counted as it passes (records.StreamCounter). A response whose records could not be
    counted (labelled JSON and not JSON, or cut short) is reported, never skipped silently: a
    log line with customer and route, the uncounted metric, and ``uncounted`` in the usage
    document (CONTRACT 11). A response whose status the plan does not bill (``billable_status``)
    gives its call back and bills no records.
    """

    __slots__ = (
        "guard", "_send", "ticket", "metered", "records", "settled", "_buffer", "_buffered", "_capture", "_unresolved",
        "_billable", "refund", "uncounted", "started", "_head", "_stream",
    )  # fmt: skip

    def __init__(
        self,
        guard: MeterGuard,
        send: Send,
        ticket: Ticket | None,
        metered: Headers,
        capture: idempotency.Capture | None,
        unresolved: Entry | None = None,
        *,
        billable: frozenset[int] | None = None,
        head: bool = False,
    ) -> None:
        self.guard = guard
        self._unresolved = unresolved  # no ticket: the records wait with the request's usage
        self._capture = capture
        self._send = send
        self.ticket = ticket
        self.metered = metered
        self._billable = billable  # None: every status is billed (no plan known yet)
        self._head = head
        self.records = 0
        self.refund = False
        self.uncounted = ""  # why the records could not be counted, once they could not
        self.started = False
        self.settled = False
        self._buffer: list[bytes] | None = None
        self._buffered = 0
        self._stream: StreamCounter | None = None  # a body over records.max_body_bytes, counted as it passes

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            await self._start(message)
        elif kind == "http.response.body":
            await self._body(message)
        else:
            await self._send(message)

    async def _start(self, message: Message) -> None:
        guard = self.guard
        self.started = True
        status: int = message["status"]
        headers: list[tuple[bytes, bytes]] = []
        counted: int | None = None
        content_type = b""
        length: int | None = None
        for name, value in message.get("headers", ()):
            lower = name.lower()
            if lower == guard._records_header:
                counted = parse_header(value)
                continue  # the app's count is between the app and meterguard
            if lower == b"content-type":
                content_type = value
            elif lower == b"content-length" and value.isdigit():
                length = int(value)
            headers.append((name, value))
        if self._capture is not None:
            self._capture.start(status, headers)
        if self._billable is not None and status not in self._billable:
            self.refund = True  # not billed: neither the call nor any records
        elif counted is not None:
            self.records = counted
        elif (
            guard._count_json is not None
            and is_json(content_type)
            and not self._head
            and status not in _NO_BODY
            and length != 0
        ):
            if length is not None and length > guard._max_body:
                self._stream = StreamCounter(guard._json_field or "")
            else:
                self._buffer = []
        message = dict(message)
        message["headers"] = headers + self.metered
        await self._send(message)

    async def _body(self, message: Message) -> None:
        more = message.get("more_body", False)
        if self._capture is not None:
            self._capture.body(message.get("body", b""), more)
        if self._buffer is not None:
            chunk = message.get("body", b"")
            self._buffer.append(chunk)
            self._buffered += len(chunk)
            if self._buffered > self.guard._max_body:
                # Too large to hold: count the rest as it streams past, holding nothing back.
                body, self._buffer = b"".join(self._buffer), None
                self._stream = StreamCounter(self.guard._json_field or "")
                await self._streamed(body, more)
                return
            if more:
                return
            body, self._buffer = b"".join(self._buffer), None
            count = self.guard._count_json(body) if body and self.guard._count_json is not None else 0
            if count is None:
                self.uncounted = "a body labelled JSON that is not valid JSON"
            else:
                self.records = count
            await self._finish()
            await self._send({"type": "http.response.body", "body": body, "more_body": False})
            return
        if self._stream is not None:
            await self._streamed(message.get("body", b""), more)
            return
        if not more:
            await self._finish()
        await self._send(message)

    async def _streamed(self, chunk: bytes, more: bool) -> None:
        stream = self._stream
        assert stream is not None
        stream.feed(chunk)
        if not more:
            self._stream = None
            count = stream.end()
            if count is None:
                self.uncounted = "a JSON body over records.max_body_bytes whose structure is not JSON's"
            else:
                self.records = count
            await self._finish()
        await self._send({"type": "http.response.body", "body": chunk, "more_body": more})

    def failed(self) -> None:
        """The app raised. Before its response started, the client gets a 500 from the server (or
        an outer error middleware): billed only where the plan bills 500."""
        if not self.started and self._billable is not None and 500 not in self._billable:
            self.refund = True

    async def close(self) -> None:
        """After the app returned or raised: settle what the last body chunk did not."""
        if self.settled:
            return
        if (self._buffer is not None and self._buffered) or self._stream is not None:
            # The app stopped or the client left mid-body: what was read cannot be counted.
            self._buffer = self._stream = None
            self.uncounted = "a JSON body that never ended"
        if self.records or self.refund or self.uncounted:
            # The records header came (or the app failed, or the client left) before the last
            # chunk: records produced are billed, a refund is given, and an uncounted body shown.
            await self._finish()

    async def _finish(self) -> None:
        if self.settled:
            return
        self.settled = True
        if self._unresolved is not None:
            self._unresolved.records = self.records
            return
        if self.ticket is None:
            return
        uncounted = 0
        if self.uncounted and not self.refund:
            uncounted = 1
            ticket = self.ticket
            log.warning(
                "records not counted for customer %s on route %s: %s (shown as uncounted in the usage; "
                "an app that knows its count can send it in the %s header)",
                ticket.customer, ticket.route, self.uncounted, self.guard._records_header.decode(),
            )  # fmt: skip
            self.guard.metrics.not_counted(current_plan())
        if self.records or self.refund or uncounted:
            await self.guard.settle(self.ticket, self.records, refund=self.refund, uncounted=uncounted)


#: Responses that never have a body (RFC 9110 section 6.4.1): nothing to count, nothing uncounted.
_NO_BODY = frozenset({204, 304})
