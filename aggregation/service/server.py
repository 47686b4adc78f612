"""The uvicorn server the service runs under: its shutdown answers the long-polls first.

uvicorn's graceful shutdown waits for in-flight requests, then cancels them. A long-poll
waits up to `long_poll_max_s`, so every silo polling at a restart held it for the whole
grace period and was then cut off: a 500 and a traceback in the log per silo. Here the
shutdown first wakes every long-poll with `Wakeup.close_polls`: each answers what its check
finds (mostly 204, no work yet), and its caller asks again once the service is back.
Without a wake-up hub (``notify`` off) polls keep uvicorn's behaviour.
"""

from __future__ import annotations

import socket

import uvicorn

from aggregation.service.wakeup import Wakeup


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, wakeup: Wakeup | None) -> None:
        super().__init__(config)
        self._wakeup = wakeup

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._wakeup is not None:
            self._wakeup.close_polls()  # before uvicorn waits for the requests in flight
        await super().shutdown(sockets=sockets)
