"""Signals -> `Interrupted`: SIGINT, SIGTERM and SIGHUP end a search, a retrain or an export the same way.

A signal raises `Interrupted` (exit status 128 + the signal's number) in the main thread, or, where
it cannot be raised cleanly (inside a storage transaction, or where Python drops exceptions), is
remembered and raised by the next `checkpoint`.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from nas import storage
from nas.errors import NasError

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A search stopped by a signal; `status` is the conventional exit status, 128 + its number."""

    def __init__(self, signum: int, n_done: int = 0, best: list[dict[str, Any]] | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.n_done = signum, n_done
        self.best = best or []  # the study's best trials (or front) as it was left, for the table said at the end

    @property
    def status(self) -> int:
        return 128 + self.signum


_pending: list[int] = []  # the signal this process was asked to stop by, once one came


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise `Interrupted` in the main thread. SIGINT does so even when this
    process inherited it ignored (a shell starts background jobs so); SIGHUP and SIGTERM inherited as
    ignored stay ignored (`nohup` asks for that). Only the first: later ones are ignored while the
    running trials are recorded and the workers stop.

    Python drops an exception raised where it cannot propagate (a weakref callback, a __del__), and a
    signal inside a storage transaction is not raised there (`study.in_transaction`), so the signal
    is also remembered and `checkpoint` raises it where the search can stop cleanly."""

    def handler(signum: int, _frame: Any) -> None:
        if not _pending:
            _pending.append(signum)
            if not storage.in_transaction():  # else the next checkpoint raises it, the transaction done
                raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may handle signals: a search run from another one stops on its caller's terms
        return
    _pending.clear()
    previous = {s: signal.signal(s, handler) for s in SIGNALS
                if s == signal.SIGINT or signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    except Exception as e:
        if not isinstance(e, NasError):  # a signal raised inside an extension (its import, say) came out as this
            checkpoint()
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def checkpoint() -> None:
    """Raise the signal that came, if it was not raised or was swallowed: called between epochs and trials."""
    if _pending:
        raise Interrupted(_pending[0])
