"""Slow clients against a running service: do they starve a normal client? (slowloris)

    python -m bench.slow_clients --url http://127.0.0.1:8000 --connections 500 --seconds 60

Opens ``--connections`` connections that each send a /predict request's headers, then trickle its
body a byte every ``--trickle-s`` seconds for ``--seconds``, never finishing it. Meanwhile a normal
client calls GET /health and POST /predict (a cached text) one after the other, each with a 10 s
timeout. Prints, as JSON, the normal client's latencies and errors and what became of the slow
connections (still open at the end, answered, closed by the server, refused).

The slow connections come from ``--addresses`` loopback source addresses (127.0.0.2, 127.0.0.3, ...),
as from that many machines, so a per-address connection limit alone cannot turn them away.
Loopback only, bounded in connections and time.
"""

import argparse
import asyncio
import http.client
import ipaddress
import json
import threading
import time
from urllib.parse import urlsplit

NORMAL_CLIENT_TIMEOUT_S = 10
MAX_CONNECTIONS = 2000
MAX_SECONDS = 600
CACHED_TEXT = "A normal client's cached sentence, scored before the slow clients arrive."
# The body the slow clients announce: far more than they send in the run, under the body limit.
ANNOUNCED_BODY_BYTES = 100_000


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class NormalClient:
    """Calls /health and /predict in turn on one keep-alive connection until stopped; records each call."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.latencies_ms: dict[str, list[float]] = {"health": [], "predict": []}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="normal-client", daemon=True)
        self._connection: http.client.HTTPConnection | None = None

    def call(self, name: str) -> tuple[int, bytes]:
        if self._connection is None:
            self._connection = http.client.HTTPConnection(self.host, self.port, timeout=NORMAL_CLIENT_TIMEOUT_S)
        if name == "health":
            self._connection.request("GET", "/health")
        else:
            body = json.dumps({"text": [CACHED_TEXT]})
            self._connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
        response = self._connection.getresponse()
        return response.status, response.read()

    def prime_cache(self, timeout_s: float = 60) -> None:
        """POST the cached text until it answers 200, so every later /predict is a cache hit."""
        give_up_at = time.monotonic() + timeout_s
        while self.call("predict")[0] != 200:
            if time.monotonic() > give_up_at:
                raise TimeoutError("the normal client's text was not scored in time")
            time.sleep(0.5)

    def _run(self) -> None:
        names = ("health", "predict")
        turn = 0
        while not self._stop.is_set():
            name = names[turn % 2]
            turn += 1
            started = time.perf_counter()
            try:
                status, _ = self.call(name)
                if status != 200:
                    self.errors.append(f"{name}: HTTP {status}")
            except (OSError, http.client.HTTPException) as error:
                self.errors.append(f"{name}: {type(error).__name__}: {error}")
                self._connection.close()
                self._connection = None
            self.latencies_ms[name].append((time.perf_counter() - started) * 1000)
            self._stop.wait(0.05)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(NORMAL_CLIENT_TIMEOUT_S + 5)

    def report(self) -> dict:
        report = {"errors": len(self.errors), "first_errors": self.errors[:5]}
        for name, values in self.latencies_ms.items():
            report[name] = {
                "calls": len(values),
                "p50_ms": round(percentile(values, 0.5) or 0, 1),
                "p99_ms": round(percentile(values, 0.99) or 0, 1),
                "max_ms": round(max(values, default=0), 1),
            }
        return report


async def slow_connection(host: str, port: int, source: str, until: float, trickle_s: float) -> str:
    """One slow client; what became of it: held, answered <status>, closed or refused."""
    try:
        reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    except OSError:
        return "refused"
    try:
        writer.write(
            f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {ANNOUNCED_BODY_BYTES}\r\n\r\n".encode()
        )
        await writer.drain()
        while time.monotonic() < until:
            try:
                answer = await asyncio.wait_for(reader.readline(), timeout=min(trickle_s, max(0.01, until - time.monotonic())))
            except TimeoutError:
                writer.write(b" ")  # JSON allows leading whitespace: a body that is valid so far
                await writer.drain()
                continue
            if not answer:
                return "closed"
            return f"answered {answer.split()[1].decode()}" if answer.startswith(b"HTTP/") else "closed"
        return "held"
    except OSError:
        return "closed"
    finally:
        writer.close()


async def slow_clients(host: str, port: int, connections: int, addresses: int, seconds: float, trickle_s: float) -> dict:
    until = time.monotonic() + seconds
    sources = [str(ipaddress.IPv4Address("127.0.0.2") + index % addresses) for index in range(connections)]
    outcomes = await asyncio.gather(*(slow_connection(host, port, source, until, trickle_s) for source in sources))
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def run(url: str, connections: int, seconds: float, addresses: int = 10, trickle_s: float = 2.0) -> dict:
    """Slow clients and one normal client against ``url`` (loopback only); the report."""
    parts = urlsplit(url)
    if not ipaddress.ip_address(parts.hostname).is_loopback:
        raise ValueError(f"{url}: slow clients target loopback only")
    if not 0 < connections <= MAX_CONNECTIONS or not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"at most {MAX_CONNECTIONS} connections for at most {MAX_SECONDS} s")
    normal = NormalClient(parts.hostname, parts.port or 80)
    normal.prime_cache()
    normal.start()
    started = time.monotonic()
    try:
        slow = asyncio.run(slow_clients(parts.hostname, parts.port or 80, connections, addresses, seconds, trickle_s))
    finally:
        normal.stop()
    return {
        "url": url,
        "slow_connections": connections,
        "source_addresses": addresses,
        "seconds": round(time.monotonic() - started, 1),
        "slow_outcomes": slow,
        "normal_client": normal.report(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--addresses", type=int, default=10, help="loopback source addresses the slow clients use")
    parser.add_argument("--trickle-s", type=float, default=2.0, help="seconds between the bytes of a slow body")
    args = parser.parse_args()
    print(json.dumps(run(args.url, args.connections, args.seconds, args.addresses, args.trickle_s), indent=2))


if __name__ == "__main__":
    main()
