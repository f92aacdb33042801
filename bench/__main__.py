"""``make bench``: start a relay, load it with real websocket clients, print.

What it measures, for each client count N (default 1,000, 5,000, 10,000):

- connect: seconds for all N clients to finish the websocket upgrade (keys
  come from a keys file, so every lookup is a cache hit), handshakes/s;
- per restock: latency from just before the webhook POST is sent to the
  moment each client's socket delivered the frame; p50, p99 and the last
  client, medians over the restocks of a run and over runs;
- relay RSS per idle connection (RSS with N clients minus RSS before);
- a stall run: 10% of the clients connected but never reading. The others'
  p99 is compared with the normal run; then bulky batches push the stalled
  ones over their buffer until the relay closes them with 4008, and every
  healthy client's frames are counted;
- webhook ingest: signed posts per second with no client connected.

The load generator (``bench/loadclient.py``) runs in its own process; its
own cost per frame is measured too and printed, so a reader can see it is
not the bottleneck. Results go to ``bench/results/`` as JSON and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from server.cli import signed_headers
from tests.harness import RelayProcess, secret_key
from tests.redis_harness import RedisServer

RESULTS = Path(__file__).parent / "results"
STALLED_SHARE = 0.10
STALL_RUN_BUFFER = 64 * 1024
TARGET_LAST_MS = 120  # the fastest uWebSockets server, 10,000 clients, 2 cores
RESTOCK_GAP = 0.25  # seconds between measured restocks: all deliveries land in it


def restock(sku: str, title_length: int = 60) -> dict[str, Any]:
    return {
        "site": "amazon",
        "sku": sku,
        "offerId": f"offer-{sku}",
        "details": {
            "region": "USA",
            "productPrice": "129.99",
            "productTitle": ("Restock " + "x" * title_length)[:title_length],
            "productImage": "https://images.example.com/product/" + sku + ".jpg",
        },
    }


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


LOAD_CLIENT_SOURCE = Path(__file__).parent / "loadclient.c"
LOAD_CLIENT_BINARY = RESULTS / "loadclient"


def build_c_load_client(binary: Path = LOAD_CLIENT_BINARY) -> Path | None:
    """Compile ``bench/loadclient.c`` (with $CC, else cc); None if that fails.

    Rebuilt only when the source is newer than the binary.
    """
    source = LOAD_CLIENT_SOURCE
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    compiler = os.environ.get("CC", "cc")
    try:
        subprocess.run(
            [compiler, "-O2", "-Wall", "-o", str(binary), str(source)],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or error
        print(f"could not build the C load client ({detail}); using the Python one")
        return None
    return binary


class LoadClient:
    """The load generator process, one command line in, one JSON line out.

    ``binary`` is the C load client; None runs ``bench/loadclient.py``,
    which takes its commands as JSON.
    """

    def __init__(self, binary: Path | None, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        command = (
            [str(binary)] if binary else [sys.executable, "-m", "bench.loadclient"]
        )
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _line(self, command: dict[str, Any]) -> str:
        if self.binary is None:
            return json.dumps(command)
        if command["cmd"] == "connect":
            url = urlsplit(command["url"])
            keys = self.workdir / "load-client-keys.txt"
            keys.write_text("\n".join(command["keys"]) + "\n")
            return (
                f"connect {url.hostname} {url.port} {url.path} "
                f"{command.get('stalled', 0)} {keys}"
            )
        if command["cmd"] == "drain":
            return f"drain {command['expect']}"
        return str(command["cmd"])

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(self._line(command) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        if "error" in answer:
            raise RuntimeError(f"load client: {answer['error']}")
        return dict(answer)

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError, RuntimeError):
            self.ask(cmd="quit")
        self.process.wait(10)


class Poster:
    """Signed webhook posts over one keep-alive HTTP connection."""

    def __init__(self, relay: RelayProcess) -> None:
        self.key = secret_key(relay.secret)
        self.connection = http.client.HTTPConnection(
            "127.0.0.1", relay.port, timeout=30
        )

    def post(self, body: Any) -> tuple[float, int]:
        data = json.dumps(body).encode()
        headers = signed_headers(data, self.key)
        sent_at = time.monotonic()
        self.connection.request("POST", "/webhooks/restock", data, headers)
        answer = self.connection.getresponse()
        answer.read()
        return sent_at, answer.status


@dataclass
class RunResult:
    clients: int
    connect_seconds: float
    rss_per_connection: float
    drain_ms: float = 0.0
    fanout_ms: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    missing: int = 0


def percentile(sorted_values: list[float], share: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(share * len(sorted_values)) - 1))
    return sorted_values[index]


def latencies(
    sent: list[float], arrivals: list[list[float]]
) -> tuple[list[list[float]], int]:
    """Per restock, every client's latency; and how many frames never came."""
    per_restock: list[list[float]] = [[] for _ in sent]
    missing = 0
    for times in arrivals:
        missing += max(0, len(sent) - len(times))
        for index, arrived in enumerate(times[: len(sent)]):
            per_restock[index].append(arrived - sent[index])
    return [sorted(values) for values in per_restock], missing


def measure_restocks(
    relay: RelayProcess, load: LoadClient, count: int, result: RunResult
) -> None:
    poster = Poster(relay)
    sent = []
    for number in range(count):
        sent_at, status = poster.post(restock(f"B0BENCH{number:04d}"))
        if status != 202:
            raise RuntimeError(f"webhook answered {status}")
        sent.append(sent_at)
        time.sleep(RESTOCK_GAP)
    report = load.ask(cmd="report")
    per_restock, result.missing = latencies(sent, report["arrivals"])
    for values in per_restock:
        if values:
            result.p50.append(percentile(values, 0.50))
            result.p99.append(percentile(values, 0.99))
            result.last.append(values[-1])


def relay_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The relay as deployed: default settings, INFO logs to a file."""
    return {**(extra or {})}


def fanout_ms(relay: RelayProcess) -> list[float]:
    """The relay's own time in its broadcast loop, per accepted webhook.

    With workers every worker logs its own ``restock.sent`` line; the
    slowest worker of each webhook counts.
    """
    per_webhook: dict[str, float] = {}
    for event in relay.log_events():
        if (
            event.get("event") in ("webhook.accepted", "restock.sent")
            and "fanout_ms" in event
        ):
            webhook = str(event.get("webhook_id"))
            per_webhook[webhook] = max(
                per_webhook.get(webhook, 0.0), float(event["fanout_ms"])
            )
    return list(per_webhook.values())


def fan_out_run(
    clients: int,
    restocks: int,
    workdir: Path,
    *,
    workers: int = 1,
    load_client: Path | None = None,
) -> RunResult:
    """One relay, ``clients`` connections, ``restocks`` measured restocks.

    With ``workers`` > 1 the relay runs that many Sanic workers sharing state
    through a redis-server of its own, and RSS is summed over its processes.
    """
    keys = [f"BENCH-{n:06d}" for n in range(clients)]
    with contextlib.ExitStack() as stack:
        env = relay_env()
        if workers > 1:
            redis = stack.enter_context(RedisServer(workdir / "redis"))
            env.update(RELAY_REDIS_URL=redis.url, RELAY_WORKERS=str(workers))
        relay = stack.enter_context(RelayProcess(workdir, keys=keys, env=env))
        assert relay.process is not None
        load = LoadClient(load_client, workdir)
        stack.callback(load.close)
        _wait_for(relay, 0, workers=workers)
        before = tree_rss_bytes(relay.process.pid)
        connected = load.ask(
            cmd="connect", url=f"ws://127.0.0.1:{relay.port}/ws", keys=keys
        )
        _wait_for(relay, clients, workers=workers)
        time.sleep(0.5)
        after = tree_rss_bytes(relay.process.pid)
        result = RunResult(clients, connected["seconds"], (after - before) / clients)
        measure_restocks(relay, load, restocks, result)
        result.fanout_ms = fanout_ms(relay)
        result.drain_ms = client_drain(relay, load, restocks + 1) * 1e3
    return result


def tree_rss_bytes(pid: int) -> int:
    """RSS of ``pid`` and every process below it (Sanic's workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            total += rss_bytes(current)
        todo.extend(children.get(current, []))
    return total


def client_drain(relay: RelayProcess, load: LoadClient, expect: int) -> float:
    """Seconds the load generator needs to read one frame on every socket."""
    load.ask(cmd="pause")
    Poster(relay).post(restock("B0DRAIN"))
    time.sleep(1.0)
    return float(load.ask(cmd="drain", expect=expect)["seconds"])


@dataclass
class StallResult:
    healthy: int
    stalled: int
    p99: list[float]
    slow_consumers_closed: int
    relay_sent_4008: int
    stalled_close_codes: dict[str, int]
    healthy_frames_expected: int
    healthy_frames_missing: int


def stall_run(
    clients: int, restocks: int, workdir: Path, *, load_client: Path | None = None
) -> StallResult:
    """10% stalled: p99 for the rest, then push the stalled ones to 4008."""
    keys = [f"BENCH-{n:06d}" for n in range(clients)]
    stalled = int(clients * STALLED_SHARE)
    env = relay_env({"RELAY_CLIENT_BUFFER": str(STALL_RUN_BUFFER)})
    with RelayProcess(workdir, keys=keys, env=env) as relay:
        load = LoadClient(load_client, workdir)
        try:
            load.ask(
                cmd="connect",
                url=f"ws://127.0.0.1:{relay.port}/ws",
                keys=keys,
                stalled=stalled,
            )
            _wait_for(relay, clients)
            result = RunResult(clients, 0.0, 0.0)
            measure_restocks(relay, load, restocks, result)
            # Bulky batches until every stalled client is over its buffer.
            poster = Poster(relay)
            batches = 0
            while relay.health()["slow_consumers_closed"] < stalled and batches < 50:
                batch = [
                    restock(f"B0FILL{batches:03d}{n:02d}", 2000) for n in range(25)
                ]
                poster.post(batch)
                batches += 1
            closed = relay.health()["slow_consumers_closed"]
            load.ask(cmd="resume")
            time.sleep(2.0)
            report = load.ask(cmd="report")
            relay_4008 = sum(
                1
                for event in relay.log_events()
                if event.get("event") == "client.disconnected"
                and event.get("code") == 4008
            )
        finally:
            load.close()
    expected = restocks + 25 * batches
    codes: dict[str, int] = {}
    for code in report["stalled_codes"]:
        codes[str(code)] = codes.get(str(code), 0) + 1
    missing = sum(max(0, expected - len(times)) for times in report["arrivals"])
    return StallResult(
        healthy=clients - stalled,
        stalled=stalled,
        p99=result.p99,
        slow_consumers_closed=closed,
        relay_sent_4008=relay_4008,
        stalled_close_codes=codes,
        healthy_frames_expected=expected * (clients - stalled),
        healthy_frames_missing=missing,
    )


def ingest_run(seconds: float, concurrency: int, workdir: Path) -> float:
    """Signed posts per second with no client connected."""
    with RelayProcess(workdir, env=relay_env()) as relay:
        key = secret_key(relay.secret)
        bodies = [json.dumps(restock(f"B0ING{n:06d}")).encode() for n in range(200)]
        return asyncio.run(_ingest(relay.port, key, bodies, seconds, concurrency))


async def _ingest(
    port: int, key: bytes, bodies: list[bytes], seconds: float, concurrency: int
) -> float:
    import aiohttp

    url = f"http://127.0.0.1:{port}/webhooks/restock"
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession, offset: int) -> None:
        nonlocal done
        index = offset
        while time.monotonic() < deadline:
            body = bodies[index % len(bodies)]
            async with session.post(
                url, data=body, headers=signed_headers(body, key)
            ) as answer:
                await answer.read()
                if answer.status != 202:
                    raise RuntimeError(f"ingest answered {answer.status}")
            done += 1
            index += concurrency

    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session, n) for n in range(concurrency)))
    return done / (time.monotonic() - started)


def _wait_for(
    relay: RelayProcess, count: int, *, workers: int = 1, timeout: float = 60.0
) -> None:
    """Until the relay (every worker of it, summed) holds ``count`` clients."""
    deadline = time.monotonic() + timeout
    latest: dict[str, int] = {}
    while True:
        health = relay.health()
        latest[str(health.get("node", "single"))] = health["connections"]
        if len(latest) >= workers and sum(latest.values()) == count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{latest} connected, waiting for {count}")
        time.sleep(0.05)


def client_cost(frames: int = 200_000) -> float:
    """Microseconds the load generator spends parsing one restock frame."""
    from bench.loadclient import BenchClient

    class Sink:
        def write(self, data: bytes) -> None: ...
        def pause_reading(self) -> None: ...

    loop = asyncio.new_event_loop()
    client = BenchClient(b"", loop.create_future(), False)
    client.transport = Sink()
    client.upgraded = True
    from server.hub import text_frame
    from server.stellar import encode, normalise_item

    frame = text_frame(encode(normalise_item(0, restock("B0COST"))[0]))
    started = time.perf_counter()
    for _ in range(frames):
        client.data_received(frame)
    loop.close()
    return (time.perf_counter() - started) / frames * 1e6


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(clients: int, workers: int, runs: list[RunResult]) -> dict[str, Any]:
    """Medians over runs (each run's own value is its median over restocks)."""
    connect = med([r.connect_seconds for r in runs])
    return {
        "clients": clients,
        "workers": workers,
        "connect_seconds": connect,
        "handshakes_per_second": clients / connect,
        "p50_ms": med([med(r.p50) for r in runs]) * 1e3,
        "p99_ms": med([med(r.p99) for r in runs]) * 1e3,
        "last_ms": med([med(r.last) for r in runs]) * 1e3,
        "rss_per_connection_kb": med([r.rss_per_connection for r in runs]) / 1024,
        "relay_fanout_ms": med([med(r.fanout_ms) for r in runs]),
        "client_drain_ms": med([r.drain_ms for r in runs]),
        "missing_frames": sum(r.missing for r in runs),
        "runs": [vars(r) for r in runs],
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--clients", default="1000,5000,10000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--restocks", type=int, default=20)
    parser.add_argument("--no-stall", action="store_true")
    parser.add_argument("--no-ingest", action="store_true")
    parser.add_argument(
        "--workers", type=int, default=2, help="workers for the Redis rows; 1: none"
    )
    parser.add_argument("--workers-clients", default="10000")
    parser.add_argument(
        "--load-client",
        choices=("c", "python"),
        default="c",
        help="the load generator: bench/loadclient.c (built with cc) or .py",
    )
    args = parser.parse_args()
    load_client = build_c_load_client() if args.load_client == "c" else None
    counts = [int(n) for n in args.clients.split(",")]
    RESULTS.mkdir(exist_ok=True)
    workroot = Path(tempfile.mkdtemp(prefix="relay-bench-"))

    shapes = [(clients, 1) for clients in counts]
    if args.workers > 1:
        shapes += [(int(n), args.workers) for n in args.workers_clients.split(",")]
    rows = []
    for clients, workers in shapes:
        runs = [
            fan_out_run(
                clients,
                args.restocks,
                workroot / f"fan-{clients}-w{workers}-{run}",
                workers=workers,
                load_client=load_client,
            )
            for run in range(args.runs)
        ]
        row = summarise(clients, workers, runs)
        rows.append(row)
        print(_row_line(row), flush=True)

    stall = None
    if not args.no_stall:
        stall_clients = max(counts)
        stall_runs = [
            stall_run(
                stall_clients,
                args.restocks,
                workroot / f"stall-{run}",
                load_client=load_client,
            )
            for run in range(args.runs)
        ]
        stall = {
            "clients": stall_clients,
            "p99_ms": med([med(s.p99) for s in stall_runs]) * 1e3,
            "runs": [vars(s) for s in stall_runs],
        }
        print(_stall_line(stall, single_process_row(rows, stall_clients)), flush=True)

    ingest = None if args.no_ingest else ingest_run(5.0, 16, workroot / "ingest")
    cost = None if load_client else client_cost()
    summary = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "load_client": "c" if load_client else "python",
        "fan_out": rows,
        "stall": stall,
        "ingest_posts_per_second": ingest,
        "load_client_us_per_frame": cost,
    }
    print_table(summary)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    out = RESULTS / f"bench-{stamp}.json"
    out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    plot(summary, RESULTS / "latency.png")
    return 0


def _machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def _row_line(row: dict[str, Any]) -> str:
    return (
        f"  {row['clients']:>6} clients, {row['workers']} worker(s): "
        f"connect {row['connect_seconds']:.2f} s, "
        f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
        f"last {row['last_ms']:.1f} ms, {row['rss_per_connection_kb']:.1f} KB/conn"
    )


def _stall_line(stall: dict[str, Any], normal: dict[str, Any]) -> str:
    change = (stall["p99_ms"] / normal["p99_ms"] - 1) * 100
    return (
        f"  stall run: healthy p99 {stall['p99_ms']:.1f} ms ({change:+.0f}% vs normal)"
    )


TABLE_COLUMNS = (
    "clients",
    "connect (s)",
    "handshakes/s",
    "p50 (ms)",
    "p99 (ms)",
    "last client (ms)",
    "relay fan-out loop (ms)",
    "load client drain (ms)",
    "RSS/conn (KB)",
    "frames lost",
)


def print_table(summary: dict[str, Any]) -> None:
    print()
    print(
        f"stellar-relay bench, {summary['date']}, {summary['machine']}, "
        f"{summary['load_client']} load client"
    )
    print()
    print("| " + " | ".join(TABLE_COLUMNS) + " |")
    print("|" + " ---: |" * len(TABLE_COLUMNS))
    for row in summary["fan_out"]:
        shape = "" if row["workers"] == 1 else f" ({row['workers']} workers, Redis)"
        cells = (
            f"{row['clients']:,}{shape}",
            f"{row['connect_seconds']:.2f}",
            f"{row['handshakes_per_second']:,.0f}",
            f"{row['p50_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            f"{row['last_ms']:.1f}",
            f"{row['relay_fanout_ms']:.1f}",
            f"{row['client_drain_ms']:.1f}",
            f"{row['rss_per_connection_kb']:.1f}",
            str(row["missing_frames"]),
        )
        print("| " + " | ".join(cells) + " |")
    if summary["stall"]:
        print()
        print(_stall_summary(summary["stall"], summary["fan_out"]))
    ingest = summary["ingest_posts_per_second"]
    if ingest is not None:
        print(f"webhook ingest, no clients: {ingest:,.0f} signed posts/s")
    cost = summary["load_client_us_per_frame"]
    if cost is not None:
        print(f"Python load generator's parsing cost: {cost:.2f} µs per frame")


def single_process_row(rows: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    return next(r for r in rows if r["clients"] == clients and r["workers"] == 1)


def _stall_summary(stall: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    normal = single_process_row(rows, stall["clients"])
    runs = stall["runs"]
    change = (stall["p99_ms"] / normal["p99_ms"] - 1) * 100
    lost = sum(r["healthy_frames_missing"] for r in runs)
    expected = sum(r["healthy_frames_expected"] for r in runs)
    codes = ", ".join(
        f"{code}: {count}"
        for code, count in sorted(runs[0]["stalled_close_codes"].items())
    )
    return "\n".join(
        (
            f"10% stalled ({runs[0]['stalled']:,} of {stall['clients']:,} clients "
            "never read):",
            f"  healthy p99 {stall['p99_ms']:.1f} ms vs {normal['p99_ms']:.1f} ms "
            f"with none stalled ({change:+.0f}%)",
            f"  relay closed as slow consumers, per run: "
            f"{[r['slow_consumers_closed'] for r in runs]}; "
            f"disconnects logged with 4008: {[r['relay_sent_4008'] for r in runs]}",
            f"  close codes the stalled clients read (run 1): {codes}",
            f"  healthy clients' frames lost: {lost} of {expected:,}",
        )
    )


def plot(summary: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    rows = [r for r in summary["fan_out"] if r["workers"] == 1]
    counts = [r["clients"] for r in rows]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, label in (
        ("p50_ms", "p50"),
        ("p99_ms", "p99"),
        ("last_ms", "last client"),
    ):
        axes.plot(counts, [r[name] for r in rows], marker="o", label=label)
    for row in (r for r in summary["fan_out"] if r["workers"] > 1):
        axes.scatter(
            [row["clients"]] * 2,
            [row["p99_ms"], row["last_ms"]],
            marker="x",
            color="black",
            label=f"p99 and last, {row['workers']} workers + Redis",
        )
    axes.axhline(
        TARGET_LAST_MS,
        color="grey",
        linestyle="--",
        linewidth=1,
        label=f"target: last of 10,000 within {TARGET_LAST_MS} ms",
    )
    axes.set_xlabel("connected clients")
    axes.set_ylabel("delivery latency (ms)")
    axes.set_title(f"stellar-relay fan-out, {summary['date'][:10]}")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
