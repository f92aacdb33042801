"""The ``stellar-relay`` command: serve, publish a test restock, listen.

- ``stellar-relay serve [--demo]``: run the relay from RELAY_* variables.
  ``--demo`` fills in what is missing (a keys file with one demo key and a
  webhook secret, kept in ``.relay-demo/``) and prints how to try it.
- ``stellar-relay publish``: sign and post a restock, as a monitor would.
- ``stellar-relay listen``: connect like Stellar does and print each restock.
- ``stellar-relay check-key KEY``: ask the configured license provider about
  one key; exit 0 when it is active, 1 when not, 3 when no answer was had.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from server.config import SECRET_PREFIX, Settings, parse_secret
from server.errors import ConfigError
from server.signing import sign

DEMO_DIR = Path(".relay-demo")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command: Any = args.command

    return int(command(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stellar-relay", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the relay")
    serve.add_argument(
        "--demo",
        action="store_true",
        help="make a demo key and secret for whatever is not configured",
    )
    serve.set_defaults(command=_serve)

    publish = commands.add_parser("publish", help="sign and post a restock")
    publish.add_argument("--url", required=True, help="the relay's webhook URL")
    publish.add_argument(
        "--secret",
        default=os.environ.get("RELAY_PUBLISH_SECRET"),
        help="whsec_... signing secret (default: $RELAY_PUBLISH_SECRET)",
    )
    publish.add_argument("--file", type=Path, help="post this JSON file as the body")
    publish.add_argument("--site", help="e.g. amazon")
    publish.add_argument("--sku")
    publish.add_argument("--region", default="USA")
    publish.add_argument("--offer-id")
    publish.add_argument("--price")
    publish.add_argument("--title")
    publish.add_argument("--image", help="absolute http(s) URL of the product image")
    publish.set_defaults(command=_publish)

    listen = commands.add_parser(
        "listen", help="connect like Stellar and print restocks"
    )
    listen.add_argument("url", help="ws://host:port/ws?key=...")
    listen.set_defaults(command=_listen)

    check_key = commands.add_parser(
        "check-key", help="what the configured license provider says of a key"
    )
    check_key.add_argument("key", help="the license key to look up")
    check_key.set_defaults(command=_check_key)

    return parser


def _serve(args: argparse.Namespace) -> int:
    environ: dict[str, str] = dict(os.environ)
    if args.demo:
        environ = demo_environment(environ, DEMO_DIR)
    try:
        settings = Settings.from_env(environ)
        from server.runner import run

        run(settings, announce_demo=args.demo, environ=environ)
    except ConfigError as exc:
        print(f"stellar-relay: {exc}", file=sys.stderr)
        return 2

    return 0


def demo_environment(environ: Mapping[str, str], directory: Path) -> dict[str, str]:
    """``environ`` with a demo keys file and secret where none is set.

    Both are kept in ``directory`` so that a second ``make run`` prints the
    same key and secret as the first.
    """
    result = dict(environ)
    directory.mkdir(exist_ok=True)
    if not result.get("RELAY_KEYS_FILE"):
        keys_file = directory / "keys.txt"
        if not keys_file.exists():
            demo_key = "DEMO-" + secrets.token_hex(8).upper()
            keys_file.write_text(f"# demo keys for stellar-relay\n{demo_key}\n")
        result["RELAY_KEYS_FILE"] = str(keys_file)
    if not result.get("RELAY_WEBHOOK_SECRETS"):
        secret_file = directory / "webhook-secret"
        if not secret_file.exists():
            secret = SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()
            secret_file.write_text(secret + "\n")
            secret_file.chmod(0o600)
        result["RELAY_WEBHOOK_SECRETS"] = "demo=" + secret_file.read_text().strip()

    return result


def _publish(args: argparse.Namespace) -> int:
    if not args.secret:
        print("stellar-relay publish: --secret is required", file=sys.stderr)
        return 2
    if args.file:
        body = args.file.read_bytes()
    elif args.site and args.sku:
        body = json.dumps(_restock_from_args(args)).encode()
    else:
        print(
            "stellar-relay publish: give --file, or --site and --sku", file=sys.stderr
        )
        return 2
    try:
        key = parse_secret("--secret", args.secret)
    except ConfigError as exc:
        print(f"stellar-relay publish: {exc}", file=sys.stderr)
        return 2

    status, answer = post_signed(args.url, body, key)
    print(f"{status} {answer}")

    return 0 if 200 <= status < 300 else 1


def _restock_from_args(args: argparse.Namespace) -> dict[str, Any]:
    details: dict[str, Any] = {"region": args.region}
    for name, value in (
        ("productPrice", args.price),
        ("productTitle", args.title),
        ("productImage", args.image),
    ):
        if value:
            details[name] = value
    restock: dict[str, Any] = {"site": args.site, "sku": args.sku, "details": details}
    if args.offer_id:
        restock["offerId"] = args.offer_id

    return restock


def signed_headers(
    body: bytes,
    key: bytes,
    *,
    webhook_id: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    """Standard Webhooks headers for ``body`` signed with ``key``."""
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp

    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, webhook_id, timestamp, body.decode()),
    }


def post_signed(url: str, body: bytes, key: bytes) -> tuple[int, str]:
    """POST a signed body; the HTTP status and the answer's text."""
    request = urllib.request.Request(
        url, data=body, headers=signed_headers(body, key), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _listen(args: argparse.Namespace) -> int:
    import asyncio

    import aiohttp

    async def listen() -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(args.url, heartbeat=None) as websocket,
        ):
            print("connected; waiting for restocks (Ctrl-C to stop)", file=sys.stderr)
            async for message in websocket:
                if message.type is aiohttp.WSMsgType.TEXT:
                    print(message.data, flush=True)
            print(f"closed: {websocket.close_code}", file=sys.stderr)
            return 0 if websocket.close_code in (1000, 1001) else 1

    try:
        return asyncio.run(listen())
    except KeyboardInterrupt:
        return 0


def _check_key(args: argparse.Namespace) -> int:
    import asyncio

    from licensing import LicenseStatus, is_well_formed_key, redact_key
    from server.logs import configure_logging
    from server.runner import build_provider

    key: str = args.key
    try:
        settings = Settings.from_env(os.environ, need_webhook_secrets=False)
        configure_logging(settings.log_level, settings.log_format)
        provider = build_provider(settings)
    except ConfigError as exc:
        print(f"stellar-relay: {exc}", file=sys.stderr)
        return 2

    async def ask() -> Any:
        try:
            return await provider.lookup(key)
        finally:
            await provider.close()

    print(f"provider: {provider.name}")
    print(f"key:      {redact_key(key)}")
    if not is_well_formed_key(key):
        print("status:   unknown (malformed key, not sent to the provider)")
        return 1
    result = asyncio.run(ask())
    print(f"status:   {result.status.value}")
    print(f"reason:   {result.reason}")
    if result.status is LicenseStatus.ACTIVE:
        return 0

    return 3 if result.status is LicenseStatus.UNAVAILABLE else 1


if __name__ == "__main__":
    sys.exit(main())
