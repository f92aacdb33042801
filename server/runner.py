"""Start-up: settings in, a serving relay out.

Steps, in order:

1. configure logging (nothing may print before it, or it escapes the policy);
2. build the license provider and check it can answer (a keys file that
   does not exist stops start-up here, with one line; Whop and Hyper open
   their HTTP session on the first lookup, inside the running loop);
3. with ``RELAY_REDIS_URL``, PING Redis once (unreachable stops start-up
   here, with one line);
4. raise the open-files limit to its hard maximum (every client is a file
   descriptor) and tune the garbage collector for many long-lived objects;
5. build the app and serve until SIGINT/SIGTERM. Sanic then stops
   accepting, closes every websocket with 1001, and runs the app's
   ``before_server_stop`` hooks, which close the provider, then the
   ``after_server_stop`` ones, which free this node's leases.

With ``RELAY_WORKERS=N`` (N > 1) step 5 is Sanic's worker manager: this
process binds the listening socket (with ``RELAY_BACKLOG``) and starts N
worker processes that share it. Each worker reads its settings again from
the same environment, builds its own app through :func:`worker_app` (GC
tuning included: it is per process), and connects to Redis from its own
event loop: each worker is one node.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Mapping
from functools import partial
from typing import Any

import structlog
from sanic import Sanic
from sanic.mixins import startup as sanic_startup
from sanic.worker.loader import AppLoader
from sanic.worker.manager import WorkerManager

from licensing import KeysFileProvider, LicenseProvider
from licensing.cache import CachedProvider
from licensing.http import ProviderClient
from licensing.hyper import HyperProvider
from licensing.whop import WhopLegacyProvider, WhopProvider
from server.app import Relay, create_app
from server.cli import DEMO_DIR
from server.collector import tune_garbage_collector
from server.config import LicensingSettings, ProviderKind, Settings, WhopApi
from server.errors import ConfigError
from server.logs import configure_logging
from server.shared import RedisNode, check_reachable
from server.websocket import RelayWebSocketProtocol

log = structlog.get_logger("server")


def build_provider(settings: Settings) -> LicenseProvider:
    """The configured provider; Whop and Hyper come wrapped in the cache."""
    licensing = settings.licensing
    if licensing.provider is not ProviderKind.STATIC:
        return CachedProvider(
            _remote_provider(licensing),
            ttl=licensing.ttl,
            negative_ttl=licensing.negative_ttl,
            grace=licensing.grace,
        )
    try:
        return KeysFileProvider(settings.keys_file)
    except OSError as exc:
        raise ConfigError(
            "RELAY_KEYS_FILE",
            f"cannot read {str(settings.keys_file)!r}: {exc.strerror}",
        ) from None


def _remote_provider(licensing: LicensingSettings) -> LicenseProvider:
    if licensing.provider is ProviderKind.HYPER:
        client = ProviderClient(
            provider="hyper",
            api_key=licensing.hyper_api_key.value,
            key_variable="RELAY_HYPER_API_KEY",
            timeout=licensing.timeout,
        )
        return HyperProvider(
            client,
            base_url=licensing.hyper_base_url,
            active_statuses=licensing.hyper_active_statuses,
        )
    client = ProviderClient(
        provider="whop",
        api_key=licensing.whop_api_key.value,
        key_variable="RELAY_WHOP_API_KEY",
        timeout=licensing.timeout,
    )
    if licensing.whop_api is WhopApi.V2:
        return WhopLegacyProvider(client, base_url=licensing.whop_base_url)

    return WhopProvider(
        client,
        base_url=licensing.whop_base_url,
        active_statuses=licensing.whop_active_statuses,
    )


def build_relay(settings: Settings, provider: LicenseProvider) -> Relay:
    """In-memory state, or a Redis node when ``RELAY_REDIS_URL`` is set."""
    shared = RedisNode(settings) if settings.redis_url else None

    return Relay(settings=settings, licenses=provider, shared=shared)


def worker_app(environ: Mapping[str, str]) -> Sanic[Any, Any]:
    """The app of one worker process, built from the environment again."""
    settings = Settings.from_env(environ)
    configure_logging(settings.log_level, settings.log_format)
    tune_garbage_collector()

    return create_app(build_relay(settings, build_provider(settings)))


def run(
    settings: Settings,
    *,
    announce_demo: bool = False,
    environ: Mapping[str, str] | None = None,
) -> None:
    configure_logging(settings.log_level, settings.log_format)
    provider = build_provider(settings)
    if settings.redis_url:
        check_reachable(settings.redis_url)
    files = raise_open_files_limit()
    if announce_demo and isinstance(provider, KeysFileProvider):
        _print_demo_instructions(settings, provider)
    log.info(
        "relay.starting",
        host=settings.host,
        port=settings.port,
        provider=provider.name,
        recheck=settings.licensing.recheck,
        policy=settings.duplicate_policy.value,
        secrets=[secret.name for secret in settings.webhook_secrets],
        proxies=settings.proxies_count,
        open_files=files,
        workers=settings.workers,
        send_threads=settings.send_threads,
        redis=settings.redis_location or None,
    )
    if settings.workers > 1:
        _serve_workers(settings, dict(os.environ if environ is None else environ))
    else:
        app = create_app(build_relay(settings, provider))
        tune_garbage_collector()
        app.run(
            host=settings.host,
            port=settings.port,
            single_process=True,
            access_log=False,
            motd=False,
            backlog=settings.backlog,
            protocol=RelayWebSocketProtocol,
        )
    log.info("relay.stopped")


def raise_open_files_limit() -> int:
    """Lift the soft limit on open files to the hard one; the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass

    return int(soft)


class _StartUpSafeWorkerManager(WorkerManager):
    """Sanic's worker manager, holding back a stop signal until every worker
    has acknowledged its start.

    In Sanic 25.12, SIGTERM or SIGINT arriving before all workers have
    acknowledged makes ``WorkerManager.wait_for_ack`` read its own shutdown
    message and send it back to itself, forever: the relay spins and never
    exits (sanic-org/sanic#2997; fix proposed in sanic-org/sanic#3063). Here
    it hung from 1 in 8 to several in 12 stops sent just after start-up. This
    class can go once a Sanic release within our pin ships that fix.
    """

    _starting = True
    _held_signal: tuple[int, Any] | None = None

    def wait_for_ack(self) -> None:
        try:
            super().wait_for_ack()  # type: ignore[no-untyped-call]
        finally:
            self._starting = False
        if self._held_signal is not None:
            super().shutdown_signal(*self._held_signal)  # type: ignore[no-untyped-call]

    def shutdown_signal(self, signal: int, frame: Any) -> None:
        if self._starting:
            self._held_signal = (signal, frame)
            return
        super().shutdown_signal(signal, frame)  # type: ignore[no-untyped-call]


def _serve_workers(settings: Settings, environ: dict[str, str]) -> None:
    sanic_startup.WorkerManager = _StartUpSafeWorkerManager  # type: ignore[attr-defined]
    loader = AppLoader(factory=partial(worker_app, environ))
    app = loader.load()
    app.prepare(
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        access_log=False,
        motd=False,
        backlog=settings.backlog,
        protocol=RelayWebSocketProtocol,
    )
    Sanic.serve(primary=app, app_loader=loader)


def _print_demo_instructions(settings: Settings, provider: KeysFileProvider) -> None:
    # Only what demo mode made itself is printed in clear: never a key from
    # the operator's own keys file, never one of their secrets.
    demo_keys = DEMO_DIR / "keys.txt"
    keys = (
        [
            line.strip()
            for line in demo_keys.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        if provider.path == demo_keys
        else []
    )
    secret_file = DEMO_DIR / "webhook-secret"
    uses_demo_secret = [s.name for s in settings.webhook_secrets] == ["demo"]
    secret = (
        secret_file.read_text().strip()
        if uses_demo_secret and secret_file.exists()
        else "<one of your RELAY_WEBHOOK_SECRETS>"
    )
    base = f"{settings.host}:{settings.port}"
    key = keys[0] if keys else "YOUR-KEY"
    print(
        f"""
stellar-relay is starting in demo mode.
  keys file:      {provider.path}  ({provider.key_count} key(s))
  webhook secret: {secret_file if uses_demo_secret else "from RELAY_WEBHOOK_SECRETS"}

Connect a Stellar client (websocket settings tab) to:
  ws://{base}/ws?key={key}

Or watch from a terminal:
  .venv/bin/stellar-relay listen 'ws://{base}/ws?key={key}'

Post a test restock from another terminal:
  .venv/bin/stellar-relay publish --url http://{base}/webhooks/restock \\
    --secret {secret} \\
    --site amazon --sku B0DEMO0001 --offer-id demo-offer --region USA \\
    --price 19.99 --title 'Demo restock'
""",
        file=sys.stderr,
        flush=True,
    )
