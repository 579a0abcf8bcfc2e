"""Progress of a long command other than training (`ft eval`): a tqdm bar on a terminal; in a log, a plain line
every 30 seconds and at the end, never a redraw. (Training has its own, ft.train.console.)"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO


class Progress:
    def __init__(self, total: int, what: str, stream: Optional[TextIO] = None, every_s: float = 30.0) -> None:
        self.total, self.what, self.every_s = total, what, every_s
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = self.last = time.monotonic()
        self.bar: Any = None
        if self.stream.isatty() and total:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=what, file=self.stream, ncols=100)

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            print(f"{self.what}: {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f}%), "
                  f"{self.done / max(now - self.started, 1e-9):.1f}/s", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
