"""The Sanic application: thin adapters around the relay's decisions.

Routes:

- ``GET /ws`` and ``GET /`` (websocket): a Stellar client, key in ``?key=``.
- ``POST /webhooks/restock``: a signed restock from a monitor.
- ``GET /healthz``: liveness and counts.

Behind a reverse proxy the client's address comes from the forwarding header
(``RELAY_PROXIES_COUNT``, ``RELAY_FORWARDED_FOR_HEADER``); with no proxy
configured, from the socket. Every log line about a request carries it as
``peer``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from sanic import Request, Sanic
from sanic.exceptions import SanicException
from sanic.handlers import ErrorHandler
from sanic.response import HTTPResponse, json

from licensing import LicenseProvider, LicenseStatus, is_well_formed_key, redact_key
from licensing.cache import fresh_lookup
from server.closecodes import CloseCode
from server.config import DuplicatePolicy, Settings
from server.errors import (
    NotJSONError,
    PayloadError,
    SharedStateUnavailable,
    WebhookError,
)
from server.fanout import Fanout, LocalFanout, Outcome, Publication
from server.hub import Connection, Hub, text_frame
from server.recheck import run_rechecks
from server.registry import InMemoryKeyRegistry, KeyRegistry
from server.replay import InMemoryWebhookLedger, WebhookLedger
from server.sendpool import SendPool
from server.signing import verify
from server.stellar import encode, normalise_body, parse_json
from server.websocket import Heartbeat, ListeningWebsocket

if TYPE_CHECKING:
    from server.shared import RedisNode

log = structlog.get_logger("server")

APP_NAME = "stellar_relay"
WEBHOOK_PATH = "/webhooks/restock"
MAX_WEBHOOK_BODY = 64 * 1024
LOCAL_ONLY_ERROR = "redis unavailable: sent to this node only, retry"

REFUSAL_FOR_STATUS = {
    LicenseStatus.INACTIVE: CloseCode.LICENSE_INACTIVE,
    LicenseStatus.UNKNOWN: CloseCode.BAD_KEY,
    LicenseStatus.UNAVAILABLE: CloseCode.CHECK_UNAVAILABLE,
}


@dataclass
class Relay:
    """Everything the handlers share, built once per process.

    With ``shared`` (a Redis node), the key registry and the fan-out are
    the node's, shared with every other worker and node; ``ledger`` is then
    unused: the node records webhook ids in Redis as it publishes.
    """

    settings: Settings
    licenses: LicenseProvider
    registry: KeyRegistry = field(default_factory=InMemoryKeyRegistry)
    ledger: WebhookLedger = field(default_factory=InMemoryWebhookLedger)
    wall_clock: Callable[[], float] = time.time
    shared: RedisNode | None = None
    hub: Hub = field(init=False)
    fanout: Fanout = field(init=False)

    def __post_init__(self) -> None:
        self.hub = Hub(
            client_buffer=self.settings.client_buffer,
            send_pool=SendPool(threads=self.settings.send_threads),
        )
        if self.shared is None:
            self.fanout = LocalFanout(self.hub, self.ledger)
        else:
            hub = self.hub
            self.registry, self.fanout = self.shared.attach(
                hub, lambda owner: close_displaced(hub, owner)
            )


class RelayErrorHandler(ErrorHandler):
    """JSON errors for every route, logged without the query string."""

    def default(self, request: Request, exception: Exception) -> HTTPResponse:
        self.log(request, exception)
        if isinstance(exception, SanicException):
            status = exception.status_code
            message = str(exception.message or exception).strip().rstrip(".")
        else:
            status, message = 500, "internal error"
        if request.path == WEBHOOK_PATH:
            log.info(
                "webhook.refused",
                status=status,
                error=message,
                peer=client_address(request),
            )

        return json({"error": message}, status=status)

    @staticmethod
    def log(request: Request, exception: Exception) -> None:
        if isinstance(exception, SanicException) and exception.status_code < 500:
            return
        log.error("request.crashed", path=request.path, exc_info=exception)


def create_app(relay: Relay) -> Sanic[Any, Any]:
    """The relay's Sanic app, with its websocket limits set from ``relay``."""
    settings = relay.settings
    app = Sanic(APP_NAME, error_handler=RelayErrorHandler(), configure_logging=False)
    app.config.update(
        {
            "ACCESS_LOG": False,
            "MOTD": False,
            "REQUEST_MAX_SIZE": MAX_WEBHOOK_BODY,
            "WEBSOCKET_MAX_SIZE": settings.max_client_message,
            # Pings come from the relay's own Heartbeat, not from Sanic.
            "WEBSOCKET_PING_INTERVAL": None,
            "FALLBACK_ERROR_FORMAT": "json",
            # Which forwarding header to believe, and how far from the right
            # the client's address sits in it. Sanic's other sources (RFC
            # 7239 Forwarded, a real-IP header) stay off, so SANIC_* variables
            # cannot switch them on behind the relay's config.
            "PROXIES_COUNT": settings.proxies_count or None,
            "FORWARDED_FOR_HEADER": settings.forwarded_for_header,
            "REAL_IP_HEADER": None,
            "FORWARDED_SECRET": None,
        }
    )
    app.ctx.relay = relay
    heartbeat = Heartbeat(
        relay.hub.connections,
        settings.ping_interval,
        on_timeout=lambda connection: connection.close(CloseCode.PING_TIMEOUT),
    )

    async def stellar_client(request: Request, websocket: Any) -> None:
        await serve_client(relay, request, websocket)

    app.add_websocket_route(stellar_client, "/ws", name="ws")
    app.add_websocket_route(stellar_client, "/", name="root")
    app.add_route(
        _restock_handler(relay), WEBHOOK_PATH, methods=["POST"], name="restock"
    )
    app.add_route(_health_handler(relay), "/healthz", methods=["GET"], name="healthz")
    app.exception(WebhookError)(_webhook_error)

    @app.before_server_start
    async def connect_shared_state(app: Sanic[Any, Any]) -> None:
        if relay.shared is not None:
            await relay.shared.start()

    @app.after_server_start
    async def start_heartbeat(app: Sanic[Any, Any]) -> None:
        app.add_task(heartbeat.run(), name="heartbeat")

    @app.before_server_start
    async def start_rechecks(app: Sanic[Any, Any]) -> None:
        app.ctx.rechecks = asyncio.get_running_loop().create_task(
            run_rechecks(
                relay.hub, fresh_lookup(relay.licenses), settings.licensing.recheck
            ),
            name="license-rechecks",
        )

    @app.before_server_stop
    async def shut_down(app: Sanic[Any, Any]) -> None:
        # 1. Sanic has stopped accepting; tell every client we are going
        #    away (left to Sanic, they would get a plain 1000). Their leases
        #    are freed together, at step 3.
        if relay.shared is not None:
            relay.shared.stopping()
        for connection in relay.hub.connections():
            connection.say_going_away()
        # 2. Stop re-checking, then close the provider's HTTP sessions.
        app.ctx.rechecks.cancel()
        await relay.licenses.close()
        log.info("relay.stopping", clients_closed=len(relay.hub))

    @app.after_server_stop
    async def disconnect_shared_state(app: Sanic[Any, Any]) -> None:
        # 3. Every handler has ended: free what leases are left, close Redis,
        #    and stop the send threads (nothing broadcasts any more).
        if relay.shared is not None:
            await relay.shared.stop()
        relay.hub.send_pool.close()

    return app


def client_address(request: Request) -> str:
    """The client's address: forwarded by a trusted proxy, else the socket's."""
    return str(request.remote_addr or request.ip)


async def serve_client(
    relay: Relay, request: Request, websocket: ListeningWebsocket
) -> None:
    """One Stellar connection, from key check to close."""
    key = request.args.get("key", "")
    owner = uuid.uuid4().hex
    peer = client_address(request)
    client_log = log.bind(key=redact_key(key), peer=peer)
    if not is_well_formed_key(key):
        await _refuse(websocket, client_log, CloseCode.BAD_KEY, "malformed key")
        return

    replace = relay.settings.duplicate_policy is DuplicatePolicy.REPLACE
    try:
        claim = await relay.registry.claim(key, owner, replace=replace)
    except SharedStateUnavailable:
        # Without Redis the key cannot be leased safely: try again later.
        await _refuse(
            websocket, client_log, CloseCode.CHECK_UNAVAILABLE, "redis unavailable"
        )
        return
    if not claim.granted:
        await _refuse(websocket, client_log, CloseCode.KEY_IN_USE, "key in use")
        return

    hub = relay.hub
    hub.hold(owner, websocket)
    try:
        if claim.previous_owner is not None:
            _close_replaced(hub, claim.previous_owner, client_log)
        license = await relay.licenses.lookup(key)
        if not hub.unhold(owner):
            return  # replaced by a newer connection while its license was looked up
        refusal = REFUSAL_FOR_STATUS.get(license.status)
        if refusal is not None:
            await _refuse(websocket, client_log, refusal, license.reason)
            return
        await _stay_connected(relay, owner, key, peer, websocket, client_log)
    finally:
        hub.unhold(owner)
        await relay.registry.release(key, owner)


async def _stay_connected(
    relay: Relay,
    owner: str,
    key: str,
    peer: str,
    websocket: ListeningWebsocket,
    client_log: Any,
) -> None:
    hub = relay.hub
    connection = Connection(
        owner=owner, key=key, peer=peer, websocket=websocket, opened_at=hub.clock()
    )
    hub.add(connection)
    client_log.info("client.connected", clients=len(hub))
    try:
        # Stellar sends nothing; whatever arrives is dropped as it is read,
        # and a message over the limit closes with 1009.
        await websocket.wait_closed()
    finally:
        hub.remove(owner)
        code = websocket.close_code()
        client_log.info(
            "client.disconnected",
            code=code,
            seconds=round(hub.clock() - connection.opened_at, 3),
            clients=len(hub),
        )


def _close_replaced(hub: Hub, previous_owner: str, client_log: Any) -> None:
    if hub.evict(previous_owner, CloseCode.KEY_IN_USE):
        client_log.info("client.replaced")


def close_displaced(hub: Hub, owner: str) -> None:
    """Close ``owner``'s connection: its key is now held on another node."""
    connection = hub.get(owner)
    if hub.evict(owner, CloseCode.KEY_IN_USE) and connection is not None:
        log.info(
            "client.displaced", key=redact_key(connection.key), peer=connection.peer
        )


async def _refuse(
    websocket: ListeningWebsocket, client_log: Any, code: CloseCode, why: str
) -> None:
    client_log.info("client.refused", code=int(code), why=why)
    websocket.end_connection(int(code), code.reason)


def _restock_handler(relay: Relay) -> Callable[[Request], Any]:
    async def restock(request: Request) -> HTTPResponse:
        verified = verify(
            request.body or b"",
            request.headers,
            relay.settings.webhook_secrets,
            now=relay.wall_clock(),
        )
        try:
            body = parse_json(verified.text)
        except ValueError as exc:
            raise NotJSONError(f"body is not JSON: {exc}") from None
        payloads, problems = normalise_body(body)
        if problems:
            raise PayloadError(
                "invalid restock payload", details=[p.as_dict() for p in problems]
            )

        webhook_log = log.bind(
            source=verified.source,
            webhook_id=verified.webhook_id,
            peer=client_address(request),
        )
        ledger_id = f"{verified.source}:{verified.webhook_id}"
        frames = b"".join(text_frame(encode(payload)) for payload in payloads)
        publication = await relay.fanout.publish(ledger_id, frames, count=len(payloads))

        return _answer(publication, len(payloads), webhook_log)

    return restock


def _answer(publication: Publication, items: int, webhook_log: Any) -> HTTPResponse:
    """A published (or not) webhook's answer, and its one log line."""
    report = publication.report
    fields: dict[str, float] = {"items": items}
    if report is not None:
        fields.update(report.log_fields())
    if publication.outcome is Outcome.DUPLICATE:
        webhook_log.info("webhook.duplicate", **fields)
        return json({"duplicate": True}, status=200)
    if publication.outcome is Outcome.LOCAL_ONLY:
        # Sent to this node's clients only: the monitor's retry reaches the
        # other nodes, and is not sent here twice.
        webhook_log.warning("webhook.local_only", **fields)
        return json({"error": LOCAL_ONLY_ERROR}, status=503)
    webhook_log.info("webhook.accepted", **fields)

    return json({"accepted": items}, status=202)


def _health_handler(relay: Relay) -> Callable[[Request], Any]:
    async def healthz(request: Request) -> HTTPResponse:
        hub = relay.hub
        return json(
            {
                "status": "ok",
                "connections": len(hub),
                "restocks_sent": hub.restocks_sent,
                "slow_consumers_closed": hub.slow_consumers_closed,
                **({} if relay.shared is None else relay.shared.health()),
            }
        )

    return healthz


async def _webhook_error(request: Request, error: WebhookError) -> HTTPResponse:
    log.info(
        "webhook.refused",
        status=error.status,
        error=error.message,
        peer=client_address(request),
    )

    return json(error.body(), status=error.status)
