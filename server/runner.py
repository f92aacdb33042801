"""Start-up: settings in, a serving relay out.

Steps, in order:

1. configure logging (nothing may print before it, or it escapes the policy);
2. build the license provider and check it can answer (a keys file that
   does not exist stops start-up here, with one line; Whop and Hyper open
   their HTTP session on the first lookup, inside the running loop);
3. raise the open-files limit to its hard maximum (every client is a file
   descriptor) and tune the garbage collector for many long-lived objects;
4. build the app and serve until SIGINT/SIGTERM. Sanic then stops
   accepting, closes every websocket with 1001, and runs the app's
   ``before_server_stop`` hooks, which close the provider.
"""

from __future__ import annotations

import gc
import resource
import sys

import structlog

from licensing import KeysFileProvider, LicenseProvider
from licensing.cache import CachedProvider
from licensing.http import ProviderClient
from licensing.hyper import HyperProvider
from licensing.whop import WhopLegacyProvider, WhopProvider
from server.app import Relay, create_app
from server.config import LicensingSettings, ProviderKind, Settings, WhopApi
from server.errors import ConfigError
from server.logs import configure_logging
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


def run(settings: Settings, *, announce_demo: bool = False) -> None:
    configure_logging(settings.log_level, settings.log_format)
    provider = build_provider(settings)
    relay = Relay(settings=settings, licenses=provider)
    app = create_app(relay)
    files = raise_open_files_limit()
    tune_garbage_collector()
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
    )
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


def tune_garbage_collector() -> None:
    """Fewer collections while thousands of clients connect at once.

    Each connection leaves ~150 long-lived objects, and with the default
    threshold (700) young collections keep rescanning them during a
    reconnect storm: on the bench, 10,000 connects took 6-9 s by default and
    3.5-6.5 s with this setting (noisy 2-core machine). Objects made at
    start-up are frozen out of collection altogether. Cycles among
    connection objects are still collected, in larger batches.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def _print_demo_instructions(settings: Settings, provider: KeysFileProvider) -> None:
    keys = [
        line.strip()
        for line in provider.path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    secret_file = provider.path.parent / "webhook-secret"
    secret = secret_file.read_text().strip() if secret_file.exists() else "whsec_..."
    base = f"{settings.host}:{settings.port}"
    key = keys[0] if keys else "YOUR-KEY"
    print(
        f"""
stellar-relay is starting in demo mode.
  keys file:      {provider.path}  ({len(keys)} key(s))
  webhook secret: {secret_file}

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
