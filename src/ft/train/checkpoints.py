"""Checkpoints a crash cannot corrupt: which to trust, which to resume from, which to delete.

The Trainer writes a checkpoint-N folder; ft then fsyncs every file in it and only then writes the marker
`ft_complete.json` (itself written to a temporary name, fsynced and renamed). A checkpoint without the
marker was cut off while being written: resume never trusts it, and removes it, saying so. A folder about
to be written again loses its marker first. Old checkpoints are deleted (save_total_limit) only after the
new one is marked, so a complete checkpoint exists at every moment once the first one is written.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Optional

from ft.errors import ConfigError
from ft.files import atomic_write_text, fsync_path

log = logging.getLogger("ft")

MARKER = "ft_complete.json"


def mark_complete(folder: Path, step: int) -> None:
    """Make everything in `folder` durable, then mark it complete."""
    for path in sorted(folder.rglob("*"), reverse=True):  # files before the folders holding them
        fsync_path(path)
    atomic_write_text(folder / MARKER, json.dumps({"step": step}))


def unmark(folder: Path) -> None:
    marker = folder / MARKER
    if marker.exists():
        marker.unlink()
        fsync_path(folder)


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / "trainer_state.json").is_file()


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The checkpoint-N folders in output_dir, oldest step first."""
    folders = [p for p in Path(output_dir).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name) and p.is_dir()]
    return sorted(folders, key=lambda p: int(p.name.split("-")[1]))


def newest_checkpoint(output_dir: str | Path) -> Optional[Path]:
    """The complete checkpoint with the largest step, skipping ones cut off mid-write."""
    return next((p for p in reversed(checkpoints(output_dir)) if is_complete(p)), None)


def remove_incomplete(output_dir: str | Path) -> list[str]:
    """Delete the checkpoints a crash cut off while they were written; returns their names."""
    removed = []
    for folder in checkpoints(output_dir):
        if not is_complete(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


def rotate(output_dir: str | Path, keep: Optional[int], best: Optional[str]) -> None:
    """Keep the newest `keep` complete checkpoints (and the best one); delete the older ones."""
    if not keep:
        return
    complete = [p for p in checkpoints(output_dir) if is_complete(p)]
    protected = {p for p in complete[-keep:]} | ({Path(best)} if best else set())
    for folder in complete:
        if folder not in protected:
            unmark(folder)  # a half-deleted folder must not look complete
            shutil.rmtree(folder, ignore_errors=True)


def resume_point(resume_from: Optional[str], auto: bool, output_dir: str) -> Optional[Path]:
    if resume_from:
        path = Path(resume_from)
        if not is_complete(path):
            raise ConfigError(f"`resume_from_checkpoint`: {path} is not a complete checkpoint folder (no {MARKER})")
        return path
    if not auto:
        return None
    removed = remove_incomplete(output_dir)
    if removed:
        log.warning("removed %s: cut off while being written (the run was stopped mid-save)", ", ".join(removed))
    return newest_checkpoint(output_dir)
