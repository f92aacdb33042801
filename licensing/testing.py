"""Local fakes of Whop and Hyper, for the relay's tests and for yours.

Each fake is a real aiohttp web server on loopback that answers like the
provider's API (paths, ``Authorization: Bearer`` check, bodies, status
codes) and counts the lookups it gets. Run one in a background thread::

    from licensing.testing import FakeWhop

    with FakeWhop(api_key="whop-test-key") as whop:
        whop.add("KEY-1", "active")
        whop.add("KEY-2", "canceled")
        # point the relay at it:
        #   RELAY_LICENSE_PROVIDER=whop  RELAY_WHOP_API_KEY=whop-test-key
        #   RELAY_WHOP_BASE_URL=whop.v1_url  (or whop.v2_url, RELAY_WHOP_API=v2)
        ...
        assert whop.calls == 1

or in the running event loop (``async with FakeHyper() as hyper:``), or in
its own process: ``python -m licensing.testing whop --port 9000
--api-key K --license KEY-1=active``, whose call count is at
``GET /_fake/calls``.

What a key answers is set per key (:meth:`FakeProvider.add`, ``slow``,
``fail``) or for everything at once (``outage``, ``rate_limit``). Keys never
added answer 404. A wrong API key answers 401.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import threading
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

WHOP_RATE_LIMIT_BODY = {"message": "You are being rate limited"}
WHOP_COOLDOWN = 60.0
"""Whop's documented cooldown after going over its rate limit, seconds."""
WHOP_VALID_STATUSES = frozenset({"trialing", "active", "past_due", "canceling"})
"""Statuses the fake's v2 endpoint calls ``valid`` (Whop does not publish
the set; these match the relay's default active statuses)."""


class FakeProvider:
    """What every fake shares: licenses, failure modes, counting, running.

    Subclasses add the provider's routes and its record and error shapes.
    """

    name = "fake"

    def __init__(
        self,
        *,
        api_key: str = "fake-api-key",
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}
        self._aliases: dict[str, str] = {}
        self._delays: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._outage: int | None = None
        self._limited_until = float("-inf")
        self._retry_after: int | None = None
        self._cooldown = WHOP_COOLDOWN
        self._window: tuple[int, float] | None = None
        self._recent: collections.deque[float] = collections.deque()
        self._calls: collections.Counter[str] = collections.Counter()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, licenses={len(self._records)})"

    # -- what the fake knows --------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def add(self, key: str, status: str = "active", **fields: Any) -> None:
        """A license for ``key``; ``fields`` override the record's defaults."""
        record = self.new_record(key, status)
        record.update(fields)
        with self._lock:
            self._records[key] = record
            self._aliases[str(record.get("id", key))] = key

    def set_status(self, key: str, status: str, **fields: Any) -> None:
        """Change a license at the provider (cancel it, let it expire)."""
        with self._lock:
            self._records[key].update(status=status, **fields)

    def remove(self, key: str) -> None:
        """Forget ``key``: it answers 404 from now on."""
        with self._lock:
            self._records.pop(key, None)

    def slow(self, key: str, seconds: float) -> None:
        """Answer lookups of ``key`` only after ``seconds``."""
        with self._lock:
            self._delays[key] = seconds

    def fail(self, key: str, status: int = 500) -> None:
        """Answer lookups of ``key`` with ``status`` (a 5xx, say)."""
        with self._lock:
            self._failures[key] = status

    def outage(self, status: int = 503) -> None:
        """Answer every lookup with ``status`` until :meth:`recover`."""
        with self._lock:
            self._outage = status

    def recover(self) -> None:
        """End an :meth:`outage` and a :meth:`rate_limit`."""
        with self._lock:
            self._outage = None
            self._limited_until = float("-inf")

    def rate_limit(
        self, cooldown: float = WHOP_COOLDOWN, *, retry_after: int | None = None
    ) -> None:
        """Answer 429 to everything for ``cooldown`` seconds from now.

        ``retry_after`` adds a ``Retry-After`` header (Whop documents none).
        """
        with self._lock:
            self._limited_until = self._clock() + cooldown
            self._retry_after = retry_after

    def limit_rate(
        self, requests: int, per_seconds: float, *, cooldown: float = WHOP_COOLDOWN
    ) -> None:
        """Go over ``requests`` per ``per_seconds`` and get 429 for
        ``cooldown`` seconds, like Whop's /v2 (100 per 10 s, 60 s)."""
        with self._lock:
            self._window = (requests, per_seconds)
            self._cooldown = cooldown

    # -- what the fake was asked ---------------------------------------------

    @property
    def calls(self) -> int:
        """Lookups received, answered or not."""
        with self._lock:
            return sum(self._calls.values())

    def calls_for(self, key: str) -> int:
        with self._lock:
            return self._calls[key]

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    # -- running --------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/_fake/calls", self._calls_handler)
        self.add_routes(app)

        return app

    async def start_async(self) -> FakeProvider:
        """Serve in the running event loop; :attr:`port` is then known."""
        self._runner = web.AppRunner(
            self.make_app(),
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=0.5,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=2048)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

        return self

    async def stop_async(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeProvider:
        return await self.start_async()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_async()

    def start(self) -> FakeProvider:
        """Serve from a background thread with its own event loop."""
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            self._stopping = asyncio.Event()
            try:
                await self.start_async()
            except BaseException as exc:
                failure.append(exc)
                raise
            finally:
                ready.set()
            await self._stopping.wait()
            await self.stop_async()

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(serve())
            self._loop.close()

        self._thread = threading.Thread(target=main, name=f"fake-{self.name}")
        self._thread.daemon = True
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]

        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None or self._stopping is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()
        self._thread = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- for subclasses -------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def new_record(self, key: str, status: str) -> dict[str, Any]:
        raise NotImplementedError

    def error(self, status: int, message: str) -> web.Response:
        return web.json_response({"error": {"message": message}}, status=status)

    def rate_limited(self) -> web.Response:
        return self.error(429, "rate limited")

    async def gate(self, request: web.Request, key: str) -> web.Response | None:
        """Count the lookup, then everything that answers before the record:
        auth, rate limit, outage, delay, per-key failure; None to go on."""
        with self._lock:
            self._calls[self._aliases.get(key, key)] += 1
            delay = self._delays.get(key, 0.0)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self.error(401, "invalid api key")
        refusal = self._limit_or_outage()
        if refusal is not None:
            return refusal
        if delay:
            await asyncio.sleep(delay)
        with self._lock:
            failure = self._failures.get(key)
        if failure is not None:
            return self.error(failure, "internal error")

        return None

    def record(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._records.get(self._aliases.get(key, key))
            return dict(found) if found is not None else None

    async def looked_up(
        self, request: web.Request, missing: str
    ) -> dict[str, Any] | web.Response:
        """The record the request's key names, or the answer to send instead
        (the gate's refusal, or a 404 saying ``missing``)."""
        key = request.match_info["key"]
        refusal = await self.gate(request, key)
        if refusal is not None:
            return refusal
        record = self.record(key)

        return self.error(404, missing) if record is None else record

    def _limit_or_outage(self) -> web.Response | None:
        with self._lock:
            now = self._clock()
            if self._window is not None and now >= self._limited_until:
                requests, per_seconds = self._window
                self._recent.append(now)
                while self._recent and self._recent[0] <= now - per_seconds:
                    self._recent.popleft()
                if len(self._recent) > requests:
                    self._limited_until = now + self._cooldown
                    self._retry_after = None
            limited = now < self._limited_until
            retry_after, outage = self._retry_after, self._outage
        if limited:
            response = self.rate_limited()
            if retry_after is not None:
                response.headers["Retry-After"] = str(retry_after)
            return response
        if outage is not None:
            return self.error(outage, "service unavailable")

        return None

    async def _calls_handler(self, request: web.Request) -> web.Response:
        with self._lock:
            calls = dict(self._calls)

        return web.json_response({"calls": sum(calls.values()), "by_key": calls})


class FakeWhop(FakeProvider):
    """Whop, both APIs at once.

    - v1 at :attr:`v1_url`: ``GET /memberships/{key or mem_ id}``, 200 with
      a Membership, 404 unknown.
    - v2 at :attr:`v2_url`: ``POST /v2/memberships/{key}/validate_license``,
      201 with a Membership plus ``valid``; 400 if the posted metadata
      differs from the stored one; 404 unknown.
    - 429 ``{"message": "You are being rate limited"}``; errors
      ``{"error": {"status": N, "message": ...}}``.
    """

    name = "whop"

    @property
    def v1_url(self) -> str:
        return f"{self.url}/api/v1"

    @property
    def v2_url(self) -> str:
        return f"{self.url}/api"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/memberships/{key}", self._membership)
        app.router.add_post(
            "/api/v2/memberships/{key}/validate_license", self._validate_license
        )

    def new_record(self, key: str, status: str) -> dict[str, Any]:
        serial = zlib.crc32(key.encode())
        now = _iso(time.time())

        return {
            "id": f"mem_{serial:010d}",
            "status": status,
            "license_key": key,
            "metadata": {},
            "renewal_period_end": None,
            "cancel_at_period_end": status == "canceling",
            "user": {"id": f"user_{serial:010d}", "username": f"user{serial}"},
            "product": {"id": "prod_fake", "title": "Fake cook group"},
            "plan": {"id": "plan_fake"},
            "created_at": now,
            "updated_at": now,
        }

    def error(self, status: int, message: str) -> web.Response:
        body = {"error": {"status": status, "message": message}}

        return web.json_response(body, status=status)

    def rate_limited(self) -> web.Response:
        return web.json_response(WHOP_RATE_LIMIT_BODY, status=429)

    async def _membership(self, request: web.Request) -> web.Response:
        found = await self.looked_up(request, "membership not found")
        if isinstance(found, web.Response):
            return found

        return web.json_response(found)

    async def _validate_license(self, request: web.Request) -> web.Response:
        record = await self.looked_up(request, "license not found")
        if isinstance(record, web.Response):
            return record
        try:
            posted = (await request.json()).get("metadata") or {}
        except (ValueError, AttributeError):
            return self.error(400, "invalid body")
        stored = record["metadata"]
        if any(k in stored and stored[k] != v for k, v in posted.items()):
            return self.error(400, "metadata does not match")
        valid = record["status"] in WHOP_VALID_STATUSES

        return web.json_response({**record, "valid": valid}, status=201)


class FakeHyper(FakeProvider):
    """Hyper: ``GET /v6/licenses/{key}`` (and /v4, /v5), 200 with a License,
    404 unknown, errors ``{"error": {"message": ...}}``. Hyper publishes no
    rate limit; the fake's 429 uses the same error shape.

    ``cancel_at`` in :meth:`add` is milliseconds since the epoch.
    """

    name = "hyper"

    @property
    def v6_url(self) -> str:
        return f"{self.url}/v6"

    def add_routes(self, app: web.Application) -> None:
        for version in ("v4", "v5", "v6"):
            app.router.add_get(f"/{version}/licenses/{{key}}", self._license)

    def new_record(self, key: str, status: str) -> dict[str, Any]:
        serial = zlib.crc32(key.encode())

        return {
            "id": f"lic_{serial:010d}",
            "key": key,
            "status": status,
            "cancel_at": None,
            "canceled_at": None,
            "created": int(time.time() * 1000),
            "metadata": {},
            "user": None,
            "plan": {"id": "plan_fake", "name": "Monthly", "type": "recurring"},
        }

    async def _license(self, request: web.Request) -> web.Response:
        found = await self.looked_up(request, "license not found")
        if isinstance(found, web.Response):
            return found

        return web.json_response(found)


FAKES: dict[str, type[FakeProvider]] = {"whop": FakeWhop, "hyper": FakeHyper}


def main(argv: list[str] | None = None) -> int:
    """Serve one fake from the command line until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m licensing.testing", description=main.__doc__
    )
    parser.add_argument("provider", choices=sorted(FAKES))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="fake-api-key")
    parser.add_argument(
        "--license",
        action="append",
        default=[],
        metavar="KEY=STATUS",
        help="a license to know (repeatable)",
    )
    args = parser.parse_args(argv)
    fake = FAKES[args.provider](api_key=args.api_key, host=args.host, port=args.port)
    for entry in args.license:
        key, _, status = entry.partition("=")
        fake.add(key, status or "active")

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await fake.start_async()
        print(f"{fake.name} fake listening on {fake.url}", flush=True)
        await stop.wait()
        await fake.stop_async()

    asyncio.run(serve())

    return 0


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=UTC).isoformat().replace("+00:00", "Z")


if __name__ == "__main__":
    raise SystemExit(main())
