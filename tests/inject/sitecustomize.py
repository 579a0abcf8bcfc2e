"""Test-only failure injection into real `ft train` processes (tests/test_launch.py puts this folder on
PYTHONPATH). FT_TEST_INJECT="KIND:RANK:STEP" makes that rank, at that step:
- raise: raise RuntimeError; config: raise a DataError (a data mistake, exit 2); kill: SIGKILL itself;
  freeze: SIGSTOP itself (alive to the launcher, silent to its peers, as a hung or lost machine);
- slow_prepare: (STEP ignored) sleep 8 s while preparing the data, on whichever process prepares it.
Nothing here runs unless the variable is set; it never ships: the product has no such hook."""

import os

spec = os.environ.get("FT_TEST_INJECT")
if spec:
    kind, rank, step = spec.split(":")
    if os.environ.get("RANK", "0") == rank or kind == "slow_prepare":
        import importlib.abc
        import sys

        def patch(module):
            import signal
            import time

            if kind == "slow_prepare" and module.__name__ == "ft.data.prepare":
                build = module.build

                def slow(*args, **kwargs):
                    time.sleep(8)
                    return build(*args, **kwargs)

                module.build = slow
            if kind != "slow_prepare" and module.__name__ == "ft.train.trainer":
                original = module.FtTrainer.training_step

                def training_step(self, *args, **kwargs):
                    if self.state.global_step + 1 == int(step):
                        if kind == "raise":
                            raise RuntimeError("injected failure")
                        if kind == "config":
                            from ft.errors import DataError

                            raise DataError("rows.jsonl:7: injected data mistake")
                        os.kill(os.getpid(), signal.SIGSTOP if kind == "freeze" else signal.SIGKILL)
                    return original(self, *args, **kwargs)

                module.FtTrainer.training_step = training_step

        class Patcher(importlib.abc.MetaPathFinder):
            """Patches ft's modules right after they are imported."""

            def find_spec(self, name, path=None, target=None):
                if name not in ("ft.data.prepare", "ft.train.trainer"):
                    return None
                sys.meta_path.remove(self)
                try:
                    import importlib.util

                    found = importlib.util.find_spec(name)
                finally:
                    sys.meta_path.insert(0, self)
                loader = found.loader
                exec_module = loader.exec_module

                def run(module):
                    exec_module(module)
                    patch(module)

                loader.exec_module = run
                return found

        sys.meta_path.insert(0, Patcher())
