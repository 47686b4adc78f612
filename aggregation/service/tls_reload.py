"""Certificate renewal without downtime: the service reloads its TLS files while it runs.

The live `ssl.SSLContext` is kept and its certificate chain replaced in place: handshakes
after the reload present the new certificate, connections already open keep theirs (an
`SSLContext` change does not touch established sessions). A reload happens when the
certificate, key or client-CA file changes on disk (polled every few seconds) or on SIGHUP
(`systemctl reload`). The files are read once into a private folder and the pair is checked
in a scratch context first, so a half-written renewal (new certificate, old key) is refused
and logged, the old certificate stays in use, and the next poll tries again.
"""

from __future__ import annotations

import logging
import signal
import ssl
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("fedsilo.service.tls")

Stamp = tuple[tuple[int, int, int], ...]


def _stamp(paths: tuple[Path, ...]) -> Stamp:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((0, 0, 0))
    return tuple(out)


class CertificateReloader:
    """Keeps `context` serving the current contents of `cert`, `key` and `client_ca`."""

    def __init__(self, context: ssl.SSLContext, cert: Path, key: Path, client_ca: Path) -> None:
        self.context = context
        self.paths = (cert, key, client_ca)
        self._stamp = _stamp(self.paths)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.reloads = 0  # successful reloads since start (tests and logs read it)

    def reload(self) -> bool:
        """Load the files now if they form a valid pair; False (and the old ones kept) if not."""
        with self._lock:
            stamp = _stamp(self.paths)
            cert, key, client_ca = self.paths
            with tempfile.TemporaryDirectory(prefix="fedsilo-tls-") as tmp:
                copies: list[Path] = []
                for path in self.paths:  # one consistent read of each file
                    copy = Path(tmp) / f"{len(copies)}.pem"
                    copy.write_bytes(path.read_bytes())
                    copies.append(copy)
                try:
                    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                    scratch.load_cert_chain(str(copies[0]), str(copies[1]))
                    scratch.load_verify_locations(cafile=str(copies[2]))
                except (ssl.SSLError, OSError) as exc:
                    log.warning(
                        "TLS files %s / %s not reloaded (%s); still serving the previous "
                        "certificate; write the certificate and key, then reload again",
                        cert,
                        key,
                        exc,
                    )
                    return False
                self.context.load_cert_chain(str(copies[0]), str(copies[1]))
                # adds the (renewed) client CA; certificates the old one signed still verify
                self.context.load_verify_locations(cafile=str(copies[2]))
            self._stamp = stamp
            self.reloads += 1
        log.warning("TLS certificate reloaded from %s (reload %d)", cert, self.reloads)
        return True

    def changed(self) -> bool:
        return _stamp(self.paths) != self._stamp

    def watch(self, interval_s: float) -> threading.Thread:
        """Poll the files every `interval_s` in a daemon thread; reload when they change."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                if self.changed():
                    try:
                        self.reload()
                    except OSError as exc:  # a file replaced mid-read: the next poll retries
                        log.warning("TLS reload failed: %s", exc)

        thread = threading.Thread(target=loop, name="tls-reload", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def on_sighup(self) -> Callable[[int, object], None] | None:
        """Make SIGHUP reload now (main thread only); returns the previous handler."""
        if threading.current_thread() is not threading.main_thread():
            return None
        previous = signal.getsignal(signal.SIGHUP)

        def handler(_signum: int, _frame: object) -> None:
            # not in the handler itself: it could interrupt a reload holding the lock
            threading.Thread(target=self.reload, name="tls-reload-hup", daemon=True).start()

        signal.signal(signal.SIGHUP, handler)
        return previous  # type: ignore[return-value]
