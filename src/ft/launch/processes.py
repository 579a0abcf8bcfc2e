"""`ft train cfg.yml --num-processes N`: the same run on N processes (and several machines), through torch's
elastic launcher (torchrun), and what a failing process said.

The launcher is torch's own (`python -m torch.distributed.run`): ft only builds its command line. Nothing a
user set up elsewhere changes what runs: accelerate's default config file is read only by `accelerate
launch`, and ACCELERATE_* variables from the shell are dropped here (said when there were some).
`accelerate launch -m ft train` and `torchrun -m ft train` keep working: each rank of those runs is the same
`ft train`.

When a process fails, each rank writes its one-line error where the launcher told it to (FT_RANK_ERRORS, a
folder; and torchrun's own TORCHELASTIC_ERROR_FILE, so that plain torchrun shows it too); the launcher then
says which rank failed and why, and exits 2 for a config or data mistake, 1 otherwise. A rank killed outright
leaves no file: torchrun's report names it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

log = logging.getLogger("ft")

ERRORS_VARIABLE = "FT_RANK_ERRORS"
DEFAULT_PORT = 29500


@dataclass(frozen=True)
class Layout:
    """Where the processes run: N per machine, on `machines` machines, this one numbered `machine_rank`."""

    processes: int
    machines: int = 1
    machine_rank: int = 0
    main_ip: Optional[str] = None
    main_port: Optional[int] = None


def torchrun_command(layout: Layout, ft_args: list[str]) -> list[str]:
    """The elastic launcher's command line running `ft <ft_args>` on every process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={layout.processes}", "--max-restarts=0",
           "--monitor-interval=0.5", "--shutdown-timeout=20"]
    if layout.machines == 1 and layout.main_ip is None and layout.main_port is None:
        cmd.append("--standalone")  # a rendezvous on localhost at a free port
    else:
        cmd += [f"--nnodes={layout.machines}", f"--node-rank={layout.machine_rank}",
                f"--master-addr={layout.main_ip or '127.0.0.1'}", f"--master-port={layout.main_port or DEFAULT_PORT}"]
    return [*cmd, "-m", "ft", *ft_args]


def record_rank_error(message: str, exit_code: int) -> None:
    """In a launched process: leave this rank's one-line error for the launcher (ft's and torchrun's)."""
    rank = os.environ.get("RANK")
    if rank is None:
        return
    folder = os.environ.get(ERRORS_VARIABLE)
    record = {"rank": int(rank), "message": message, "exit_code": exit_code, "time": time.time()}
    if folder:
        Path(folder, f"rank-{rank}.json").write_text(json.dumps(record))
    elastic = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if elastic and not Path(elastic).exists():
        payload = {"message": {"message": message, "extraInfo": {"py_callstack": "", "timestamp": str(int(time.time()))}}}
        Path(elastic).write_text(json.dumps(payload))


# each failed process in torchrun's report: its rank and exit code (negative: the signal that ended it)
FAILED_PROCESS = re.compile(r"rank\s*:\s*(\d+)[^\n]*\n\s*exitcode\s*:\s*(-?\d+)")
STOPPED_BY_LAUNCHER = (-15, -2)  # SIGTERM, SIGINT: what torchrun sends the others once one failed


def failure_line(folder: Path, launcher_output: str) -> tuple[str, int]:
    """(what to say, the exit code) for a failed run, naming the process that failed first and why.

    torchrun's own "root cause" is not reliable here: it prefers a process that wrote an error file, and the
    survivors of a killed peer write one too (a closed socket). So, in order: a config or data mistake (or a
    stop by signal) some rank reported; a rank killed outright by a signal the launcher did not send; the
    earliest error a rank reported; any failure torchrun saw."""
    records = sorted((json.loads(p.read_text()) for p in folder.glob("rank-*.json")), key=lambda r: r["time"])
    seen = [(int(rank), int(code)) for rank, code in FAILED_PROCESS.findall(launcher_output)]
    reported = {r["rank"] for r in records}
    mistakes = [r for r in records if r["exit_code"] in (2, 130, 143)]
    killed = [(rank, code) for rank, code in seen if code < 0 and code not in STOPPED_BY_LAUNCHER and rank not in reported]
    if mistakes:
        return f"rank {mistakes[0]['rank']}: {mistakes[0]['message']}", mistakes[0]["exit_code"]
    if killed:
        rank, code = killed[0]
        return (f"rank {rank} was killed by signal {-code} without a word (out of host memory? killed by hand?); the "
                "other processes were stopped"), 1
    if records:
        return f"rank {records[0]['rank']}: {records[0]['message']}", 1
    if seen:
        return f"rank {seen[0][0]} exited with code {seen[0][1]}; the other processes were stopped", 1
    return "a process of the run failed; see the lines above", 1


def _relay(stream: IO[str], seen: list[str], debug: bool) -> None:
    """Pass the processes' output through, but not torchrun's own failure report (its traceback ending in
    ChildFailedError, and the table after it): ft says what failed in one line. --debug shows everything."""
    held: list[str] = []  # a traceback, until its last line says whose it is
    dropping = False
    for line in stream:
        seen.append(line)
        if debug:
            sys.stderr.write(line)
            continue
        if dropping:
            continue
        if held or line.startswith("Traceback (most recent call last)"):
            held.append(line)
            if line[:1].isspace() or line.startswith("Traceback"):
                continue
            block, held = held, []
            if "ChildFailedError" in line or any("torch/distributed/run.py" in x for x in block):
                dropping = True
                continue
            sys.stderr.writelines(block)
        elif "ChildFailedError" in line:
            dropping = True
        else:
            sys.stderr.write(line)
        sys.stderr.flush()
    sys.stderr.writelines(held)


def launch(layout: Layout, ft_args: list[str], debug: bool = False) -> int:
    """Run `ft <ft_args>` on the layout's processes; returns the exit code for this command."""
    dropped = sorted(k for k in os.environ if k.startswith("ACCELERATE_"))
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    if dropped:
        log.info("--num-processes: ignoring %s from the environment (the config says how to run)", ", ".join(dropped))
    errors = Path(tempfile.mkdtemp(prefix="ft-ranks-"))
    env[ERRORS_VARIABLE] = str(errors)
    cmd = torchrun_command(layout, ft_args)
    log.info("launching %d processes%s: %s", layout.processes * layout.machines,
             f" on {layout.machines} machines" if layout.machines > 1 else "", " ".join(cmd[1:]))
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
    # SIGTERM (a scheduler's preemption) goes to this process alone: pass it on to the launcher, which passes it
    # to every rank (Ctrl-C's SIGINT reaches the whole terminal's process group by itself)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
    seen: list[str] = []
    relay = threading.Thread(target=_relay, args=(proc.stderr, seen, debug), daemon=True)
    relay.start()
    try:
        try:
            code = proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reached every process too; wait for their clean stop
            code = proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    relay.join(timeout=5)
    if code == 0:
        return 0
    said, exit_code = failure_line(errors, "".join(seen)[-50000:])
    print(f"ft: error: {said}", file=sys.stderr)
    return exit_code
