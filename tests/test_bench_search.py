"""scripts/bench_context.py's search and scripts/plan_accuracy.py's sharing of the GPU: GPU time to rerun them
is scarce, so their arithmetic is checked here with thresholds standing in for the GPU's memory."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench_context import TrialFailed, probes, search  # noqa: E402


def test_probes_lie_strictly_inside_the_open_interval():
    assert probes(0, 130, 4) == [26, 52, 78, 104]
    assert probes(3, 6, 4) == [4, 5]
    assert probes(5, 6, 3) == []
    for fits, fails, k in [(0, 2, 1), (7, 100, 3), (40, 45, 9)]:
        assert all(fits < p < fails for p in probes(fits, fails, k)) and len(probes(fits, fails, k)) <= k


@pytest.mark.parametrize("memory", [25.0, 60.0, 139.0])
def test_every_pair_gets_its_longest_fitting_length_within_the_memory(memory):
    limits = {("ft", 24.0): 37, ("baseline", 24.0): 6, ("ft-offload", 24.0): 128, ("ft", 16.0): 0, ("ft-offload", 16.0): 1}
    lock, running, most = threading.Lock(), [0.0], [0.0]
    trials = []

    def run(kind, units, cap):
        with lock:
            running[0] += cap + 1
            most[0] = max(most[0], running[0])
            trials.append((kind, cap, units))
        time.sleep(0.002)
        with lock:
            running[0] -= cap + 1
        return units <= limits[(kind, cap)]

    assert search(list(limits), run, high=128, memory_gb=memory, log=lambda line: None) == limits
    assert most[0] <= max(memory, 25.0)  # one trial always runs, even when its cap alone exceeds the memory
    assert len(set(trials)) == len(trials)  # no length is tried twice
    assert len(trials) <= 8 * len(limits)  # a search, not a sweep of 128 lengths
    for (kind, cap), longest in limits.items():  # each answer was tried and fitted; one unit more was tried and did not
        assert longest == 0 or (kind, cap, longest) in trials
        assert longest == 128 or (kind, cap, longest + 1) in trials


def test_a_trial_failing_for_another_reason_stops_the_search():
    def run(kind, units, cap):
        raise TrialFailed("a bug, not memory")

    with pytest.raises(TrialFailed):
        search([("ft", 24.0)], run, high=16, memory_gb=25.0, log=lambda line: None)


def test_plan_accuracy_runs_rows_side_by_side_only_while_their_plans_fit_the_gpu():
    """scripts/plan_accuracy.py's rows share the GPU by their planned peaks: one that would not fit beside the
    running ones waits for them; one larger than the whole GPU runs alone."""
    from plan_accuracy import MemoryBudget

    budget = MemoryBudget(10.0)
    entered = {name: threading.Event() for name in "abcd"}
    leave = {name: threading.Event() for name in "abcd"}

    def row(name: str, need: float) -> None:
        with budget.hold(need):
            entered[name].set()
            leave[name].wait(10)

    threads = {name: threading.Thread(target=row, args=(name, need)) for name, need in (("a", 6), ("b", 6), ("c", 3), ("d", 20))}
    threads["a"].start()
    assert entered["a"].wait(5)
    threads["b"].start()
    threads["c"].start()
    assert entered["c"].wait(5)  # 6 + 3 fit in 10
    assert not entered["b"].wait(0.3)  # 6 + 6 do not
    leave["a"].set()
    assert entered["b"].wait(5)  # 3 + 6 fit once a is gone
    threads["d"].start()
    assert not entered["d"].wait(0.3)  # larger than the GPU: alone
    leave["b"].set()
    leave["c"].set()
    assert entered["d"].wait(5)
    leave["d"].set()
    for t in threads.values():
        t.join(5)
    assert budget.used == 0 and budget.running == 0


def test_trials_try_each_next_length_only_while_the_one_before_did_not_fit(capsys):
    """bench_context.py --trials KIND:N1,N2,N3: the longest of the lengths that fits, trying no more after it; each
    trial alone, in order."""
    from bench_context import show_trials

    ran = []

    def tried(kind: str, tokens: int, cap: float) -> dict:
        ran.append((kind, tokens))
        fits = tokens <= {"ft-offload-tiled": 114688, "ft": 16384, "baseline": 0}[kind]
        return {"ok": True, "seconds": tokens / 1000, "peak_gb": 20.0} if fits else {"ok": False}

    show_trials(["ft-offload-tiled:131072,114688,102400", "ft:16384", "ft-offload-tiled:16384", "baseline:16384,8192"],
                24.0, "8b-8l", 32, tried, lambda line: None)
    assert ran == [("ft-offload-tiled", 131072), ("ft-offload-tiled", 114688), ("ft", 16384), ("ft-offload-tiled", 16384),
                   ("baseline", 16384), ("baseline", 8192)]
    table = capsys.readouterr().out
    assert "| ft-offload-tiled | 131,072 | no |" in table and "| ft-offload-tiled | 114,688 | yes |" in table
    assert "| ft-offload-tiled | 16,384 | yes | 20.00 GiB | 16.38 s | 1.00× |" in table
    with pytest.raises(SystemExit, match="unknown contender"):
        show_trials(["fft:1024"], 24.0, "8b-8l", 32, tried, lambda line: None)
