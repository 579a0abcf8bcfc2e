"""The fork server of tests/ftproc.py: imports what `ft` imports, then forks one child per request.

Requests come on stdin, one JSON line each: {"id", "args", "cwd", "env", "out", "err"}. Answers go to stdout,
one JSON line each: {"id", "pid"} once the child is forked, {"pid", "exit"} once it has ended (the exit code,
or minus the signal that ended it, as subprocess gives). The server ends when its stdin closes.
"""

import json
import os
import select
import sys
import traceback

# Answers go to the original stdout; whatever the libraries print goes to stderr instead.
ANSWERS = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ftproc_preload  # noqa: E402,F401


def child(request: dict) -> None:
    """What `python -m ft ARGS` does after its imports, then the interpreter's exit."""
    code = 0
    try:
        ANSWERS.close()
        for fd, path in ((1, request["out"]), (2, request["err"])):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [sys.executable, *request["args"]]
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


def main() -> None:
    answer({"ready": True})
    stdin = sys.stdin.buffer
    pending = b""
    children: set[int] = set()
    while True:
        readable, _, _ = select.select([stdin], [], [], 0.01)
        if readable:
            chunk = os.read(stdin.fileno(), 1 << 16)
            if not chunk:
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    child(request)
                children.add(pid)
                answer({"id": request["id"], "pid": pid})
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                answer({"pid": pid, "exit": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    main()
