"""Progress bars that behave when the output is not a terminal.

On a terminal: tqdm's bar. Otherwise (a log file, a pipe, CI): no carriage-return frames; one plain
log line at most every ``PLAIN_INTERVAL_SECONDS`` (and none for work shorter than that).
"""

from __future__ import annotations

import logging
import sys
import time

logger = logging.getLogger(__name__)
PLAIN_INTERVAL_SECONDS = 30.0


class PlainProgress:
    """tqdm's ``update`` / ``set_postfix`` / ``close`` as a log line every ``interval`` seconds."""

    def __init__(self, total: int | None, desc: str, initial: int = 0,
                 interval: float = PLAIN_INTERVAL_SECONDS):
        self.total, self.desc, self.n, self.interval = total, desc, initial, interval
        self.postfix: dict = {}
        self.started = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units; write a line when ``interval`` seconds have passed since the last."""
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            of = f"/{self.total}" if self.total is not None else ""
            extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
            logger.info("%s: %d%s%s (%.0f s)", self.desc, self.n, of, extra, now - self.started)

    def set_postfix(self, **values) -> None:
        """Values shown on the next line (e.g. the loss)."""
        self.postfix = values

    def close(self) -> None:
        """Nothing to clear: plain lines stay."""


def progress_bar(total: int | None, desc: str, enabled: bool = True, initial: int = 0, stream=None):
    """A tqdm bar on a terminal, :class:`PlainProgress` otherwise, a disabled bar when not ``enabled``."""
    from tqdm.auto import tqdm

    stream = stream if stream is not None else sys.stderr
    if enabled and not getattr(stream, "isatty", lambda: False)():
        return PlainProgress(total, desc, initial)
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, leave=False, file=stream)
