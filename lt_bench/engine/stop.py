"""Stop requests (SIGTERM, SIGINT) that end a run at the next epoch boundary instead of at once.

A process killed mid-step loses the epoch it was in, and under CUDA MPS a client torn down mid-kernel
can take the other clients of its GPU down with it (seen on an H200: illegal memory access in the
neighbours). A second signal stops at once (``KeyboardInterrupt``).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    """While active (main thread only), the first SIGTERM / SIGINT sets ``received`` to its name."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._saved: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._saved = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
