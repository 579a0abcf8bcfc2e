"""A run's life beyond its steps: recognising a finished run, stopping cleanly on a signal, a full disk."""

from __future__ import annotations

import errno
import json
import logging
import shutil
import signal
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
    """On SIGINT or SIGTERM: finish the current step, save a checkpoint, stop. A second signal stops at once."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

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
