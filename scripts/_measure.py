"""Run a Python command (`-m module ...` or `-c code ...`) and report its CPU time and peak RSS.

Used by the benchmarks: it runs the command in a child process, waits for it with os.wait4 (which gives
that child's own resource usage), and prints one JSON line on stderr: {"cpu": s, "peak_rss_mb": MB}.
"""

import json
import os
import subprocess
import sys

proc = subprocess.Popen([sys.executable, *sys.argv[1:]])
_, status, usage = os.wait4(proc.pid, 0)
code = os.waitstatus_to_exitcode(status)
print(json.dumps({"cpu": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}), file=sys.stderr)
sys.exit(code)
