"""Checkpoint, then stop, on a signal: a preempted or time-limited job loses no steps.

Schedulers warn before they kill. SLURM sends SIGTERM and SIGKILL ``KillWait`` (30 s) later, or any
signal ahead of the time limit (``--signal=USR1@300``); torchrun forwards a SIGTERM it gets to its
ranks and kills them 30 s later; our ranks are also sent SIGTERM when their launcher dies
(engine/dist.py). Without a handler each of these ends the run where it stands, and every step since
the last checkpoint is lost.

A rank sent one of ``checkpoint.stop_signals`` only notes it (a handler must not run collectives).
After each optimizer step all ranks learn whether any rank was signalled — one all-reduce of a flag
on a gloo group of its own, so no GPU sync is added to the step — and, if so, save a checkpoint
together and stop with exit status 75 (EX_TEMPFAIL: run the same command again to resume). A second
signal (more than 2 s after the first) ends the process at once, as it would have without the handler.
"""
from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist

# One event can arrive twice within milliseconds: when a launcher is killed, Linux sends the
# parent-death signal for the parent and again for a subreaper the rank is handed to. Only a
# signal that comes later is a second request.
REPEAT_AFTER_S = 2.0

class StopSignals:
    """The signals noted since ``install`` (this rank) and the collective question "did any rank get one?"."""

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self.received: str | None = None
        self._previous: dict[signal.Signals, object] = {}
        self._group = None
        self._first = 0.0

    def _note(self, signum: int, frame) -> None:
        now = time.monotonic()
        if self.received is None:
            self.received, self._first = signal.Signals(signum).name, now
        elif now - self._first > REPEAT_AFTER_S:  # asked again: die as if no handler had been installed
            self.restore()
            os.kill(os.getpid(), signum)

    @contextmanager
    def installed(self) -> Iterator["StopSignals"]:
        if self.names:
            self._group = dist.new_group(backend="gloo")  # collective: every rank installs together
            for name in self.names:
                sig = signal.Signals[name]
                self._previous[sig] = signal.signal(sig, self._note)
        try:
            yield self
        finally:
            self.restore()

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def any_rank_received(self) -> str | None:
        """Collective (every rank, after every step): the signal one rank got, or None."""
        if self._group is None:
            return None
        index = self.names.index(self.received) + 1 if self.received in self.names else 0
        flag = torch.tensor([index], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return self.names[int(flag.item()) - 1] if flag.item() else None
