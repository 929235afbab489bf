"""A gateway process's life beside its requests: plans.yaml versions (reload), alerts heard from
the store, the change-event watcher, SIGHUP, and shutdown.

:class:`Lifecycle` is MeterGuard's base: what it keeps (store, metrics, the running
:class:`~meterguard.reload.Runtime`) is set up by ``MeterGuard.__init__``; the request path is
middleware.py's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Coroutine
from typing import Any

from ._gc import tune_for_serving
from ._responder import Counting
from ._types import ASGIApp, Clock, Message, Receive, Scope, Send
from .alerts import Alerts, Deliverer
from .auth import Authenticator
from .config import Config, load_config
from .customers import Directory
from .errors import ConfigError, StoreError
from .meter import MeterEngine
from .metrics import Metrics
from .plans import RouteTable
from .records import counter
from .reload import RELOAD_EVENT, ReloadResult, Runtime, build_runtime, keep_restart_only, summary
from .store.base import Fired, Store
from .unresolved import Unresolved

log = logging.getLogger("meterguard")


class Lifecycle:
    """Everything of MeterGuard but its requests (see the module docstring)."""

    store: Store
    metrics: Metrics
    clock: Clock
    admin: ASGIApp | None
    _unresolved: Unresolved
    _origin: str  # this process's reload events are not answered by itself
    _sighup: bool
    _background: set[asyncio.Task[None]]
    _watcher: asyncio.Future[None] | None  # started by the first request, in its loop
    _deliverer: Deliverer | None
    _tune_gc: bool

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
        self._routes: RouteTable = runtime.config.routes
        field = runtime.config.records_json_field
        self._counting = Counting(
            runtime.config.records_header.encode("latin-1"),
            counter(field) if field is not None else None,
            field or "",
            runtime.config.records_max_body_bytes,
        )
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
        """In the serving loop (lifespan startup or the first request): SIGHUP, the metrics sync,
        the garbage collector's settings (_gc.py)."""
        self.metrics.start()
        if self._tune_gc:
            tune_for_serving()
        if self._sighup or threading.current_thread() is not threading.main_thread():
            return
        # Only where nobody else handles SIGHUP: its default action ends the process, never what
        # an operator who edited plans.yaml wants; a framework with its own meaning for it wins.
        if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, None):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)
            self._sighup = True

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


async def answer_lifespan(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run the lifespan through ``app``, or answer it for an app that does not speak it.

    MeterGuard settles, flushes and closes its store when the lifespan shuts down (``send``
    tells it). An app that does not speak lifespan (it raises on, or returns from, a lifespan
    scope without reading a message: Django's ASGI handler, most hand-written apps) would leave
    that unsaid, and a process stopped by SIGTERM would exit with the usage it still holds. So
    the lifespan is answered here for such an app; an app that speaks it is left to do so.
    (Here rather than in a wrapper around the app: a wrapper is a coroutine more on every request.)
    """
    spoken = False

    async def receive_noted() -> Message:
        nonlocal spoken
        spoken = True
        return await receive()

    try:
        await app(scope, receive_noted, send)
    except Exception:
        if spoken:
            raise  # a lifespan the app speaks, and that failed: the server reports it
    if spoken:
        return
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
