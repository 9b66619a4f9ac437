"""Stop requests (SIGTERM, SIGINT, SIGHUP) that end a run at the next epoch boundary instead of at once.

A process killed mid-step loses the epoch it was in, and under CUDA MPS a client torn down mid-kernel
can take the other clients of its GPU down with it (seen on an H200: illegal memory access in the
neighbours). A second signal stops at once (``KeyboardInterrupt``).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import ClassVar

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopRequests:
    """While active (main thread only), the first stop signal sets ``received`` to its name.

    One instance is active at a time: entering another while one is active returns the active one,
    so a caller (the runner, a sweep) and the engine see the same request.
    """

    _active: ClassVar[StopRequests | None] = None

    def __init__(self) -> None:
        self.received: str | None = None
        self._saved: dict[int, object] = {}
        self._owner = False

    def __enter__(self) -> StopRequests:
        active = StopRequests._active
        if active is not None:
            return active
        if threading.current_thread() is threading.main_thread():
            self._saved = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        StopRequests._active, self._owner = self, True
        return self

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        if not self._owner:
            return
        for sig, handler in self._saved.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        StopRequests._active, self._owner = None, False
