"""Real websocket clients for tests, built on the ``websockets`` package."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

TIMEOUT = 10.0


async def open_client(url: str, **options: Any) -> ClientConnection:
    """A connected client that does not ping on its own (the relay pings)."""
    options.setdefault("ping_interval", None)
    options.setdefault("open_timeout", TIMEOUT)

    return await connect(url, **options)


async def close_code(client: ClientConnection, timeout: float = TIMEOUT) -> int | None:
    """Wait until the server closes ``client``; the code it sent."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await client.recv()
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


async def first_closes(
    clients: list[ClientConnection], count: int, timeout: float = TIMEOUT
) -> list[int | None]:
    """The close codes of the first ``count`` clients the server closes."""
    tasks = [asyncio.create_task(close_code(c, timeout)) for c in clients]
    codes = []
    try:
        for next_done in asyncio.as_completed(tasks):
            codes.append(await next_done)
            if len(codes) == count:
                break
    finally:
        for task in tasks:
            task.cancel()

    return codes


async def refusal_code(url: str) -> int | None:
    """Connect and report the close code the relay answers with."""
    client = await open_client(url)

    return await close_code(client)


async def next_restock(client: ClientConnection, timeout: float = TIMEOUT) -> Any:
    async with asyncio.timeout(timeout):
        message = await client.recv()
    assert isinstance(message, str), "restocks are text frames"

    return json.loads(message)


async def wait_for_connections(
    relay: Any, count: int, timeout: float = TIMEOUT
) -> None:
    """Until the relay's /healthz reports ``count`` connections."""
    async with asyncio.timeout(timeout):
        while (await asyncio.to_thread(relay.health))["connections"] != count:
            await asyncio.sleep(0.02)
