"""Crash safety, by really killing processes: SIGKILL at random moments, then the same command again.

At least 50 kills in all (trials of three kills each, more trials while a kill came too late to land),
spread over start-up and data preparation, training steps, checkpoint writes and the final save, with
sample packing and evaluation on, and some of `ft merge-lora`. After each trial's last run, the adapter must equal the uninterrupted run's to fp32
round-off, and no run may fail. scripts/soak_kills.py runs more.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

import crash_harness as harness

pytestmark = pytest.mark.slow(seconds=45)  # several processes or many runs; its tests take about this long each

KILLS, WANTED, MOST_TRIALS = 3, 50, 40


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    from train_helpers import alpaca_rows

    root = tmp_path_factory.mktemp("crash")
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows(48)))
    model = tiny_model_dir("llama")
    folder = harness.project(root / "reference", model, data)
    result = harness.run(folder, "train", "cfg.yml")
    assert result.returncode == 0, result.stderr[-3000:]
    merged = harness.run(folder, "merge-lora", "cfg.yml")
    assert merged.returncode == 0, merged.stderr[-3000:]
    return root, model, data, folder


@pytest.mark.slow(seconds=67)
def test_sigkill_at_random_moments_loses_nothing(reference):
    from safetensors.torch import load_file

    root, model, data, ref = reference
    want = harness.adapter(ref)
    want_merged = load_file(str(ref / "out/merged/model.safetensors"))
    folders, trials = [], []
    with ThreadPoolExecutor(max_workers=2) as pool:
        while sum(k.killed for t in trials for k in t.kills) < WANTED and len(trials) < MOST_TRIALS:
            batch = [(harness.project(root / f"trial-{s}", model, data), s) for s in range(len(trials), len(trials) + 2)]
            folders += [f for f, _ in batch]
            trials += list(pool.map(lambda fs: harness.trial(fs[0], fs[1], KILLS, fs[1] % 4 == 0), batch))
    kills = [k for t in trials for k in t.kills if k.killed]
    assert len(kills) >= WANTED, [(t.seed, t.kills) for t in trials]
    assert {k.phase for k in kills} >= set(harness.PHASES), kills
    for folder, t in zip(folders, trials):
        assert not t.final, f"seed {t.seed}, kills {t.kills}: the run after the kills failed:\n{t.final}"
        worst = harness.difference(harness.adapter(folder), want)
        assert worst < 1e-6, (t.seed, t.kills, worst)
        assert harness.summary_of(folder)["steps"] == 8
        if (folder / "out/merged").exists():
            assert harness.difference(load_file(str(folder / "out/merged/model.safetensors")), want_merged) < 1e-6


def test_preprocess_killed_midway_leaves_nothing_trusted(reference):
    import random

    root, model, data, ref = reference
    folder = harness.project(root / "preprocess", model, data)
    rng = random.Random(0)
    for _ in range(3):
        harness.run_and_kill(folder, ["preprocess", "cfg.yml"], "start", rng)
        for entry in (folder / "out/prepared").glob("*") if (folder / "out/prepared").exists() else ():
            if entry.is_dir() and not entry.name.startswith("."):  # a key folder is only ever renamed in whole
                assert (entry / "meta.json").is_file() and (entry / "train.arrow").is_file()
    result = harness.run(folder, "preprocess", "cfg.yml")
    assert result.returncode == 0, result.stderr[-3000:]
    mine = sorted(p.name for p in (folder / "out/prepared").iterdir() if p.is_dir() and not p.name.startswith("."))
    theirs = sorted(p.name for p in (ref / "out/prepared").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert mine == theirs
    assert (folder / f"out/prepared/{mine[0]}/train.arrow").read_bytes() == (ref / f"out/prepared/{theirs[0]}/train.arrow").read_bytes()
    shutil.rmtree(folder)
