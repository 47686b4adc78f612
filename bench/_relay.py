"""A byte-counting TCP relay on 127.0.0.1: how many bytes each silo really sends and receives.

Every silo of either system connects to the aggregator through its own relay port, so the
counts are per silo and include everything on the wire (HTTP or gRPC framing, headers, TLS if
any, long polls), without touching either system's code. Run as a process:

    python bench/_relay.py --control PORT  LISTEN=TARGET_PORT:NAME ...

A connection to the control port gets the counters as one JSON line
{name: {"up": bytes client->server, "down": bytes server->client, "connections": n}}.
The relay's own hop (one extra loopback copy per message) is paid by both systems alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

HOST = "127.0.0.1"
CHUNK = 1 << 16

counters: dict[str, dict[str, int]] = {}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, c: dict, key: str):
    try:
        while data := await reader.read(CHUNK):
            c[key] += len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - the peer may be gone already
            pass


def _handler(name: str, target: int):
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        c = counters[name]
        c["connections"] += 1
        try:
            server_r, server_w = await asyncio.open_connection(HOST, target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            _pipe(client_r, server_w, c, "up"), _pipe(server_r, client_w, c, "down")
        )

    return handle


async def _control(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write((json.dumps(counters) + "\n").encode())
    await w.drain()
    w.close()


async def main(control: int, routes: list[str]) -> None:
    servers = [await asyncio.start_server(_control, HOST, control)]
    for route in routes:
        listen, rest = route.split("=", 1)
        target, name = rest.split(":", 1)
        counters[name] = {"up": 0, "down": 0, "connections": 0}
        servers.append(await asyncio.start_server(_handler(name, int(target)), HOST, int(listen)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("relay ready", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--control", type=int, required=True)
    parser.add_argument("routes", nargs="+", help="LISTEN=TARGET:NAME")
    args = parser.parse_args()
    asyncio.run(main(args.control, args.routes))
