"""`ft` in a process of its own, as a user runs it, without paying for its imports on every run.

A run of `ft train` on a tiny model takes about 7 s, of which about 4 s import torch, transformers, peft,
bitsandbytes and deepspeed; the suite starts a few hundred such processes. Here each worker starts one
fork server (tests/ftproc_server.py: a fresh, single-threaded interpreter) that imports those libraries
once; every run is then a real process forked from it: its own pid, its own memory, its working folder and
environment, stdout and stderr in files, an exit status, and a SIGKILL or SIGINT that really lands. What it shares with a fresh interpreter is everything but the import phase.

A run goes to a fresh interpreter (`python -m ft`) instead whenever the fork server could differ from one:
- a command that imports no ML library (`ft validate`, `ft plan`, `ft --help`): they are fast anyway, and some
  tests check what they import;
- an environment that differs from the fork server's in a variable that a library may read at import
  (IMPORT_TIME_PREFIXES: a changed HOME, TMPDIR or PYTHONPATH, another FT_* variable); tests/inject's hooks
  (FT_TEST_INJECT) do not count: a forked run installs them as it starts, on the modules imported already;
- `--debug` (the fork server hid the libraries' import-time messages as ft does without it);
- FT_FRESH_PROCESSES=1 in the environment: every run in a fresh interpreter (for comparing).

The ranks that torchrun starts for a multi-process run come to the same server, through a Unix socket
(FT_TEST_FORK_SOCKET), from the interpreters torchrun started (tests/inject/sitecustomize.py), under the
same rules; what torchrun and ft's launcher tell a rank (RUN_TIME) is read once it runs.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Sequence

# Commands whose first step imports the ML libraries (the ones worth forking).
HEAVY = {"train", "preprocess", "merge-lora", "eval", "inference"}
SERVER = Path(__file__).resolve().parent / "ftproc_server.py"


# What a preloaded library may read when it is imported: where these differ from the fork server's, the run
# takes a fresh interpreter. Everything else is read while a run runs, and the forked run gets the caller's
# environment whole before ft starts (so the variables that the worker's own in-process runs leave behind,
# PYTORCH_NVML_BASED_CUDA_CHECK, FSDP_*, PYTEST_CURRENT_TEST..., cost nothing).
IMPORT_TIME_PREFIXES = ("HOME", "USER", "TMP", "TEMP", "PYTHON", "XDG_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_",
                        "DATASETS_", "TOKENIZERS_", "TORCH", "CUDA_", "OMP_", "MKL_", "OPENBLAS_", "BNB_", "DS_",
                        "DEEPSPEED", "ACCELERATE_", "FT_", "LD_", "LANG", "LC_")
# ...but for what ft itself sets before it imports a library, as the fork server did (launch/environment.py)
SET_BY_FT = {"HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY",
             "DATASETS_VERBOSITY", "TORCHINDUCTOR_CACHE_DIR"}


# ...nor for what is read once a run runs: what torchrun and ft's launcher tell each rank, and tests/inject's
# hooks (a forked run installs them as it starts)
RUN_TIME = {"RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
            "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "FT_RANK_ERRORS", "FT_TEST_INJECT",
            "FT_TEST_RECORD", "FT_TEST_FORK_SOCKET"}
RUN_TIME_PREFIXES = ("TORCHELASTIC_", "TORCH_NCCL_")


def _significant(env: dict[str, str]) -> dict[str, str]:
    """The variables of `env` that a library may read at import (above)."""
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES) and k not in SET_BY_FT
            and k not in RUN_TIME and not k.startswith(RUN_TIME_PREFIXES)}


def differs(env: dict[str, str], server_env: dict[str, str]) -> str:
    """Why a run in `env` cannot be forked from a server started in `server_env` ("" when it can)."""
    if env.get("FT_FRESH_PROCESSES") == "1":
        return "FT_FRESH_PROCESSES=1"
    mine, theirs = _significant(env), _significant(server_env)
    return ", ".join(sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)))


class _Server:
    """The client side: one server process, a thread reading its answers, the exit codes by pid."""

    def __init__(self) -> None:
        # where the ranks' stand-ins find this server (tests/inject/sitecustomize.py): in this process's
        # environment, so every process started from here on has it
        os.environ["FT_TEST_FORK_SOCKET"] = os.path.join(tempfile.mkdtemp(prefix="ftfork-"), "ranks")
        self.env = dict(os.environ)
        self.proc = subprocess.Popen([sys.executable, str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=self.env, cwd=str(SERVER.parent))
        self.ids = itertools.count()
        self.changed = threading.Condition()
        self.pids: dict[int, int] = {}
        self.exits: dict[int, int] = {}
        self.ready = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            message = json.loads(line)
            with self.changed:
                if "ready" in message:
                    self.ready = True
                elif "exit" in message:
                    self.exits[message["pid"]] = message["exit"]
                else:
                    self.pids[message["id"]] = message["pid"]
                self.changed.notify_all()
        with self.changed:  # the server is gone: nothing more will come
            self.ready = None  # type: ignore[assignment]
            self.changed.notify_all()

    def alive(self) -> bool:
        with self.changed:
            self.changed.wait_for(lambda: self.ready is not False, timeout=120)
            return bool(self.ready)

    def fork(self, args: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> int:
        request_id = next(self.ids)
        request = {"id": request_id, "args": args, "cwd": cwd, "env": env, "out": out, "err": err}
        with self.changed:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            self.changed.wait_for(lambda: request_id in self.pids or self.ready is None, timeout=60)
            if request_id not in self.pids:
                raise RuntimeError("the fork server of tests/ftproc.py is gone")
            return self.pids.pop(request_id)

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        with self.changed:
            self.changed.wait_for(lambda: pid in self.exits, timeout=timeout)
            return self.exits.get(pid)


_lock = threading.Lock()
_server: _Server | None = None


def _get_server() -> _Server:
    global _server
    with _lock:
        if _server is None:
            _server = _Server()
        return _server


def start_server() -> None:
    """Start the fork server now; it imports the libraries while the caller goes on (conftest: once a worker)."""
    if os.environ.get("FT_FRESH_PROCESSES") != "1":
        _get_server()


def server_pid() -> int | None:
    """The pid of this process's fork server once it has its libraries imported (None: FT_FRESH_PROCESSES=1)."""
    if os.environ.get("FT_FRESH_PROCESSES") == "1" or not _get_server().alive():
        return None
    return _get_server().proc.pid


def server_env() -> dict[str, str]:
    """The environment this process's fork server started in: a run whose environment differs from it where a
    library reads one at import (`differs`) runs in a fresh interpreter instead."""
    return _get_server().env


def _forkable(args: Sequence[str], env: dict[str, str]) -> bool:
    if os.environ.get("FT_FRESH_PROCESSES") == "1" or not args or args[0] not in HEAVY or "--debug" in args:
        return False
    server = _get_server()
    return not differs(env, server.env) and server.alive()


class FtProcess:
    """One running `ft`: forked from the worker's fork server, or a fresh interpreter. The interface of
    subprocess.Popen that the tests use: pid, poll, wait, send_signal, kill, returncode; and the output."""

    def __init__(self, args: Sequence[str], cwd: Path | str, env: dict[str, str] | None = None) -> None:
        env = {k: str(v) for k, v in (env if env is not None else os.environ).items()}
        self._dir = tempfile.mkdtemp(prefix="ftproc-")
        self._out, self._err = os.path.join(self._dir, "stdout"), os.path.join(self._dir, "stderr")
        self.args = [str(a) for a in args]
        self.forked = _forkable(self.args, env)
        self.returncode: int | None = None
        if self.forked:
            self.pid = _get_server().fork(self.args, str(Path(cwd).resolve()), env, self._out, self._err)
        else:
            with open(self._out, "wb") as out, open(self._err, "wb") as err:
                self._popen = subprocess.Popen([sys.executable, "-m", "ft", *self.args], cwd=cwd, env=env,
                                               stdin=subprocess.DEVNULL, stdout=out, stderr=err)
            self.pid = self._popen.pid

    def poll(self) -> int | None:
        return self._finish(0)

    def _finish(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            if self.forked:
                self.returncode = _get_server().exit_code(self.pid, timeout)
            else:
                try:
                    self.returncode = self._popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self._finish(timeout) is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:  # it ended (and was reaped) between the poll and the signal
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def output(self) -> tuple[str, str]:
        """(stdout, stderr) as text, read from the files the process wrote (which are then removed)."""
        texts = [Path(p).read_text(errors="replace") if os.path.exists(p) else "" for p in (self._out, self._err)]
        for p in (self._out, self._err):
            if os.path.exists(p):
                os.unlink(p)
        os.rmdir(self._dir)
        return texts[0], texts[1]


def run(args: Sequence[str], cwd: Path | str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`ft ARGS` in `cwd` to its end: a CompletedProcess with text stdout and stderr, as subprocess.run gives."""
    proc = FtProcess(args, cwd, env)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    stdout, stderr = proc.output()
    return subprocess.CompletedProcess([sys.executable, "-m", "ft", *proc.args], proc.returncode, stdout, stderr)
