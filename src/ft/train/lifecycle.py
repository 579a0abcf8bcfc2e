"""A run's life beyond its steps: recognising a finished run, stopping cleanly on a signal, a full disk."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from transformers import TrainerCallback

from ft.errors import UserError

log = logging.getLogger("ft")


def finished_summary(output_dir: str, resolved_config: str) -> Optional[dict[str, Any]]:
    """The summary of a run that already finished in output_dir with this very config, else None.

    summary.json is written last, atomically, so its presence means the run ended; ft_config.yml says with
    what config. A changed config (say a larger max_steps) is not a finished run: it resumes.
    """
    out = Path(output_dir)
    summary, saved = out / "summary.json", out / "ft_config.yml"
    if summary.is_file() and saved.is_file() and saved.read_text() == resolved_config:
        return json.loads(summary.read_text())
    return None


class Interrupted(UserError):
    """SIGINT or SIGTERM stopped the run after a checkpoint was saved."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopOnSignal(TrainerCallback):
    """On SIGINT or SIGTERM: finish the current step, save a checkpoint, stop. A second signal stops at once.

    With several processes a checkpoint needs every one of them, and a launcher also sends SIGTERM when a
    process died: then the step in progress waits forever in a collective (Python's handler cannot even run
    until it returns) and the launcher kills everything a while later, after ft said it was saving. So a
    watcher thread, woken by the signal itself (signal.set_wakeup_fd), checks within seconds that every
    process answers; if one does not, this process exits at once, naming the checkpoint that stands."""

    def __init__(self, output_dir: str = "", world: int = 1) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, Any] = {}
        self.output_dir, self.world = output_dir, world
        self._wakeup: Optional[tuple[int, int, int]] = None  # (read end, write end, the previous wakeup fd)

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        if self.world > 1:
            read, write = os.pipe()
            os.set_blocking(write, False)
            self._wakeup = (read, write, signal.set_wakeup_fd(write, warn_on_full_buffer=False))
            threading.Thread(target=self._watch, args=(read,), daemon=True, name="ft-peers").start()

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._wakeup is not None:
            read, write, previous = self._wakeup
            self._wakeup = None
            signal.set_wakeup_fd(previous)
            os.close(write)  # the watcher reads end-of-file and returns

    def _watch(self, read: int) -> None:
        while True:
            try:
                data = os.read(read, 16)
            except OSError:
                return
            if not data:
                os.close(read)
                return
            signums = [b for b in data if b in (signal.SIGINT, signal.SIGTERM)]
            if signums and not peers_alive(PEER_TIMEOUT_S):
                from ft.train.checkpoints import newest_checkpoint

                last = newest_checkpoint(self.output_dir) if self.output_dir else None
                stands = f"{last.name} in {self.output_dir} stands" if last else "no checkpoint was saved yet"
                print(f"ft: error: {signal.Signals(signums[0]).name}, and another process of this run is gone: stopping "
                      f"without saving (a checkpoint needs every process); {stands}. Run the same command to resume",
                      file=sys.stderr, flush=True)
                os._exit(128 + signums[0])

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # the second one: stop now
            self.restore()
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s: finishing this step and saving a checkpoint (send it again to stop at once)", signal.Signals(signum).name)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.signum is not None:
            control.should_save = True
            control.should_training_stop = True

    def raise_if_stopped(self, step: int, output_dir: str) -> None:
        if self.signum is None:
            return
        name = signal.Signals(self.signum).name
        raise Interrupted(
            f"stopped by {name} at step {step}; checkpoint-{step} is saved in {output_dir}. Run the same command "
            "to resume from it", self.signum,
        )


PEER_TIMEOUT_S = 10.0
_checks = [0]


def peers_alive(timeout_s: float) -> bool:
    """Whether every process of the run answers within `timeout_s`, through the process group's key-value
    store (no collective: those wait for ever on a dead peer). True outside a process group."""
    from datetime import timedelta

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return True
    _checks[0] += 1
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set(f"ft/alive/{_checks[0]}/{rank}", "1")
        store.wait([f"ft/alive/{_checks[0]}/{r}" for r in range(world)], timedelta(seconds=timeout_s))
        return True
    except Exception:  # a timeout, or the store's host (rank 0) is gone
        return False


def disk_full(exc: BaseException, folder: str) -> bool:
    """Whether a failed write was for want of space (torch.save reports it only as a failed write)."""
    seen: Optional[BaseException] = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    try:  # others say only that a stream failed ("basic_ios::clear: iostream error"): look at the disk
        return shutil.disk_usage(folder).free < 64 << 20
    except OSError:
        return False
