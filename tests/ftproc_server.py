"""The fork server of tests/ftproc.py: imports what `ft` imports, then forks one child per request.

Requests come on stdin, one JSON line each: {"id", "args", "cwd", "env", "out", "err"}. Answers go to stdout,
one JSON line each: {"id", "pid"} once the child is forked, {"pid", "exit"} once it has ended (the exit code,
or minus the signal that ended it, as subprocess gives). The server ends when its stdin closes.

The ranks of a multi-process run come on a Unix socket (FT_TEST_FORK_SOCKET), each from its own interpreter,
which torchrun started and which stands in for the rank (tests/inject/sitecustomize.py): one message
{"args", "cwd", "env"} with that interpreter's stdin, stdout and stderr, answered {"pid"} (the forked rank, on
those three) or {"fresh": why} (the interpreter then runs the rank itself), then {"exit"} once the rank has
ended. When the stand-in is gone (torchrun killed it) the rank is killed too.
"""

import importlib.util
import json
import os
import select
import signal
import socket
import sys
import traceback

# Answers go to the original stdout; whatever the libraries print goes to stderr instead.
ANSWERS = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ftproc  # noqa: E402
import ftproc_preload  # noqa: E402,F401

SERVER_ENV = dict(os.environ)
# tests/inject's hooks, installed in a forked run whose environment asks for them (FT_TEST_INJECT)
_spec = importlib.util.spec_from_file_location("ft_test_inject", os.path.join(HERE, "inject", "sitecustomize.py"))
INJECT = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(INJECT)


def child(request: dict, stdio: tuple[int, int, int] | None = None) -> None:
    """What `python -m ft ARGS` does after its imports, then the interpreter's exit: on the request's files, or
    (a rank) on the stand-in's own stdin, stdout and stderr, unbuffered as torchrun's `python -u` is."""
    code = 0
    try:
        ANSWERS.close()
        if stdio is None:
            null = os.open(os.devnull, os.O_RDONLY)
            stdio = (null, os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
                     os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        else:
            sys.stdout.reconfigure(line_buffering=True)
        for fd, handle in enumerate(stdio):
            os.dup2(handle, fd)
            os.close(handle)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [sys.executable, *request["args"]]
        INJECT.install()
        from ft.cli import main

        main(request["args"])
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    try:
        import atexit

        atexit._run_exitfuncs()  # finalizers, temporary folders, log handlers: as at the interpreter's exit
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def answer(message: dict) -> None:
    ANSWERS.write(json.dumps(message) + "\n")
    ANSWERS.flush()


def send(conn: socket.socket, message: dict) -> None:
    try:
        conn.send(json.dumps(message).encode())
    except OSError:  # the stand-in is gone
        pass


class Ranks:
    """The socket the stand-ins of ranks connect to, and the ranks forked for them."""

    def __init__(self, path: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(path)
        self.listener.listen(64)
        self.path = path
        self.conns: dict[socket.socket, int] = {}  # stand-in → its rank's pid

    def accept(self) -> None:
        conn, _ = self.listener.accept()
        message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        request = json.loads(message)
        why = ftproc.differs(request["env"], SERVER_ENV)
        if why or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            send(conn, {"fresh": why or "no stdio"})
            conn.close()
            return
        pid = os.fork()
        if pid == 0:
            conn.close()
            self.close_in_child()
            child(request, tuple(fds))
        for fd in fds:
            os.close(fd)
        self.conns[conn] = pid
        send(conn, {"pid": pid})

    def close_in_child(self) -> None:
        """In a forked run or rank: the server's sockets are not its own."""
        self.listener.close()
        for conn in self.conns:
            conn.close()

    def gone(self, conn: socket.socket) -> None:
        """A stand-in's socket is readable: it sends nothing after its request, so it has ended."""
        pid = self.conns.pop(conn)
        conn.close()
        try:
            os.kill(pid, signal.SIGKILL)  # SIGKILL ends a stopped process too
        except ProcessLookupError:
            pass

    def ended(self, pid: int, code: int) -> None:
        """A rank has ended: its stand-in ends with the same code."""
        for conn, rank in list(self.conns.items()):
            if rank == pid:
                send(conn, {"exit": code})
                del self.conns[conn]
                conn.close()


def main() -> None:
    ranks = Ranks(os.environ["FT_TEST_FORK_SOCKET"]) if os.environ.get("FT_TEST_FORK_SOCKET") else None
    answer({"ready": True})
    stdin = sys.stdin.buffer
    pending = b""
    children: set[int] = set()
    try:
        while True:
            watched = [stdin, *([ranks.listener, *ranks.conns] if ranks else [])]
            readable, _, _ = select.select(watched, [], [], 0.01)
            if stdin in readable:
                chunk = os.read(stdin.fileno(), 1 << 16)
                if not chunk:
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    request = json.loads(line)
                    pid = os.fork()
                    if pid == 0:
                        if ranks:
                            ranks.close_in_child()
                        child(request)
                    children.add(pid)
                    answer({"id": request["id"], "pid": pid})
            if ranks and ranks.listener in readable:
                ranks.accept()
            for conn in readable:
                if ranks and conn in ranks.conns:
                    ranks.gone(conn)
            while True:  # every child that has ended: a run's, or a rank's
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                code = os.waitstatus_to_exitcode(status)
                if pid in children:
                    children.discard(pid)
                    answer({"pid": pid, "exit": code})
                elif ranks:
                    ranks.ended(pid, code)
    finally:
        if ranks:
            os.unlink(ranks.path)


if __name__ == "__main__":
    main()
