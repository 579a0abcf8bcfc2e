"""Benchmarks through lm-evaluation-harness (`pip install 'ft[bench]'`), on the model ft has in memory: the base,
the base with the run's adapter, or the merged model, never a reload by name (so the adapter is what is scored).
Offline: a task whose data is not on this machine is refused before any scoring, naming what is missing."""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from ft.errors import ConfigError

log = logging.getLogger("ft")


@lru_cache(maxsize=4)
def task_manager(include_path: Optional[str], tasks: tuple[str, ...] = ()) -> Any:
    """lm-eval's task index: the local folder alone where it holds every task asked for (lm-eval's own index of
    thousands of task files takes seconds to read), else both."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError("`lm_eval_tasks` needs lm-evaluation-harness: pip install 'ft[bench]' (lm_eval[hf])") from None
    if include_path and not Path(include_path).is_dir():
        raise ConfigError(f"`lm_eval_include_path`: {include_path} is not a folder of task files")
    if include_path and tasks:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if set(tasks) <= set(local.all_tasks):
            return local
    return TaskManager(include_path=include_path)


def check_tasks(manager: Any, tasks: tuple[str, ...]) -> None:
    """Each task known, and its data readable here: one sentence naming the first that is not."""
    from ft.registry import did_you_mean

    known = set(manager.all_tasks)
    for name in tasks:
        if name not in known:
            raise ConfigError(f"`lm_eval_tasks`: lm-eval knows no task `{name}`{did_you_mean(name, known)}; a local task "
                              "is a YAML file in the folder `lm_eval_include_path` names")
        try:
            manager.load([name])
        except Exception as exc:  # the harness and datasets raise many kinds; the first line says what is missing
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            where = "with HF_HUB_OFFLINE=1 only cached datasets load" if os.environ.get("HF_HUB_OFFLINE") == "1" else \
                "the Hugging Face hub could not be reached"
            raise ConfigError(f"lm-eval task `{name}`: its data is not on this machine ({first}); {where}: copy the "
                              "dataset into the Hugging Face cache, or write a local task (`dataset_path: json` with "
                              "`data_files`) in `lm_eval_include_path`") from None


def run_tasks(model: Any, tokenizer: Any, tasks: tuple[str, ...], batch_size: int, include_path: Optional[str],
              limit: Optional[int] = None, add_bos_token: Optional[bool] = None) -> dict[str, Any]:
    """{task: {metric: value}} from lm-eval's simple_evaluate on `model` as it is in memory."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    manager = task_manager(include_path, tasks)
    check_tasks(manager, tasks)
    extra = {} if add_bos_token is None else {"add_bos_token": add_bos_token}
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **extra)
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit, log_samples=False,
                                      bootstrap_iters=1000)
    except ValueError as exc:
        if "unsafe" not in str(exc).lower():
            raise
        raise ConfigError(f"`lm_eval_tasks`: {', '.join(tasks)}: a task that runs the model's code is not supported by ft "
                          "yet (lm-eval needs confirm_run_unsafe_code); leave it out") from None
    return {task: {key.split(",")[0]: value for key, value in metrics.items() if key not in ("alias", "name")}
            for task, metrics in out["results"].items()}
