"""Test-only hooks into real `ft` processes: the suite puts this folder on PYTHONPATH (tests/conftest.py), so every
Python process it starts runs this first. It never ships: the product has no such hook.

A rank that torchrun starts (`python -u -m ft ...` with LOCAL_RANK and TORCHELASTIC_RUN_ID set) hands itself to its
pytest worker's fork server (tests/ftproc_server.py, at FT_TEST_FORK_SOCKET), which has the libraries imported:
this interpreter stays what torchrun watches, passing its stdin, stdout and stderr to the forked rank, passing on
every signal it gets, and ending as the rank ends (its exit code, or killed by the same signal). Where the
server cannot stand for a fresh interpreter (an environment a library reads at import differs, or
FT_FRESH_PROCESSES=1), it says so and the rank runs here. A rank forked so is torchrun's real rank in all but
its import phase, as every run of tests/ftproc.py is.

Nothing else here runs unless FT_TEST_INJECT is set (here at the start, or in a forked run as it starts).

FT_TEST_INJECT holds comma-separated KIND:RANK:STEP items; that rank, at that step:
- raise: raises RuntimeError; config: raises a DataError (a data mistake, exit 2); kill: SIGKILLs itself;
  freeze: SIGSTOPs itself (alive to the launcher, silent to its peers, as a hung or lost machine);
- slow_prepare (rank, step ignored): sleeps 8 s while preparing the data, on whichever process prepares it;
- fsdp_cpu (rank, step ignored): lets accelerate run FSDP on CPU processes (it refuses to: without this, a CPU
  run with `fsdp:` is plain DDP). accelerate's AcceleratorState keeps the FSDP plugin it was given and says
  FSDP, in its shared state and PartialState's alike; torch's FSDP2 itself runs on CPU over gloo (FSDP1 does
  not: torch 2.13's FullyShardedDataParallel needs an accelerator device);
- record (rank, step ignored): in its second step each rank writes to $FT_TEST_RECORD/rank-N.json how many
  parameter and optimizer-state elements it holds (a sharded tensor counts its local shard), and the bytes of
  its parameters; after that step's backward pass, how many weights have a gradient and in how many storages;
- offload_cpu (rank, step ignored): activation_offloading moves CPU tensors too (every saved activation, whatever
  its size), so that its pack and unpack hooks run in CPU processes; `record` then counts how many it moved;
- whoami (rank, step ignored): each process writes its pid and its parent's to $FT_TEST_RECORD/who-rank-N.json;
- load_peak (rank, step ignored): a timer samples, every few milliseconds from the import of ft's model loader (in a
  forked run, imported already: from the run's start) to its first training step, the bytes of all tensor storage
  the process holds (every live tensor found by the garbage collector, storages counted once, meta tensors none),
  and writes the largest to $FT_TEST_RECORD/load-rank-N.json: what the process materialised while loading,
  whoever allocated it.
"""

import os
import sys


def install() -> None:
    """FT_TEST_INJECT's hooks: on the named modules as they are imported, or at once where they are (a forked run)."""
    spec = os.environ.get("FT_TEST_INJECT")
    if not spec:
        return
    import importlib.abc
    import importlib.util

    items = [item.split(":") for item in spec.split(",")]
    rank_here = os.environ.get("RANK", "0")

    def local_numel(t):
        return t.to_local().numel() if hasattr(t, "to_local") else t.numel()

    loading = {"peak": 0, "samples": 0}
    if any(kind == "load_peak" and rank == rank_here for kind, rank, _ in items) and "LOCAL_RANK" in os.environ:
        # Sampled in the main thread, from a timer signal, so that no object is looked at while the interpreter
        # builds it (the garbage collector's list, read from another thread, can hold a tuple being resized).
        import gc
        import signal
        import time

        def held_bytes():
            import torch

            seen = {}
            for obj in gc.get_objects():
                if isinstance(obj, torch.Tensor) and not obj.is_meta:
                    try:
                        storage = obj.untyped_storage()
                        seen[storage.data_ptr()] = storage.nbytes()
                    except (RuntimeError, NotImplementedError, TypeError):
                        continue  # a wrapper subclass (DTensor: its local tensor is found on its own), a freed storage
            return sum(seen.values())

        def sample(signum, frame):
            if loading.get("done"):
                return
            started = time.perf_counter()
            loading["peak"] = max(loading["peak"], held_bytes())
            loading["samples"] += 1
            # the next sample after as long as this one took: loading runs at least half of the time
            signal.setitimer(signal.ITIMER_REAL, max(0.005, time.perf_counter() - started))

        def start_sampling(module):  # once ft's model loader is imported, before it loads anything
            signal.signal(signal.SIGALRM, sample)
            signal.setitimer(signal.ITIMER_REAL, 0.005)

        loading["start"], loading["sample"] = start_sampling, sample

    def patch_trainer(module):
        import json
        import signal

        original = module.FtTrainer.training_step

        def training_step(self, *args, **kwargs):
            step = self.state.global_step + 1
            if step == 1 and "start" in loading and "done" not in loading:
                loading["sample"](None, None)  # the last state of loading too
                loading["done"] = True
                with open(os.path.join(os.environ["FT_TEST_RECORD"], f"load-rank-{rank_here}.json"), "w") as f:
                    json.dump({"peak_bytes": loading["peak"], "samples": loading["samples"]}, f)
            for kind, rank, at in items:
                if kind in ("raise", "config", "kill", "freeze") and rank == rank_here and step == int(at):
                    if kind == "raise":
                        raise RuntimeError("injected failure")
                    if kind == "config":
                        from ft.errors import DataError

                        raise DataError("rows.jsonl:7: injected data mistake")
                    os.kill(os.getpid(), signal.SIGSTOP if kind == "freeze" else signal.SIGKILL)
            loss = original(self, *args, **kwargs)
            if step == 2 and any(kind == "record" for kind, _, _ in items):  # after the first optimizer step
                params = [p for p in self.model_wrapped.parameters()]
                state = [v for s in self.optimizer.state.values() for v in s.values() if hasattr(v, "numel") and v.dim() > 0]
                record = {"params": sum(local_numel(p) for p in params),
                          "param_bytes": sum(local_numel(p) * p.element_size() for p in params), "trainable": sum(local_numel(p) for p in params if p.requires_grad),
                          "optimizer_state": sum(local_numel(v) for v in state), "sharded": any(hasattr(p, "to_local") for p in params),
                          "fsdp": bool(self.is_fsdp_enabled), "offloaded": self.offload.moved if self.offload else 0,
                          "grads": sum(p.grad is not None for p in params)}
                if not self.is_fsdp_enabled and not self.is_deepspeed_enabled:  # their gradients: their own buffers
                    record["grad_storages"] = len({p.grad.untyped_storage().data_ptr() for p in params if p.grad is not None})
                with open(os.path.join(os.environ["FT_TEST_RECORD"], f"rank-{rank_here}.json"), "w") as f:
                    json.dump(record, f)
            return loss

        module.FtTrainer.training_step = training_step

    def patch_prepare(module):
        import time

        build = module.build

        def slow(*args, **kwargs):
            time.sleep(8)
            return build(*args, **kwargs)

        module.build = slow

    def patch_accelerate(module):
        original = module.AcceleratorState.__init__

        def init(self, *args, **kwargs):
            original(self, *args, **kwargs)
            plugin = kwargs.get("fsdp_plugin")
            if plugin is not None and self.distributed_type == module.DistributedType.MULTI_CPU:
                self.distributed_type = module.DistributedType.FSDP
                self.fsdp_plugin = plugin
                module.PartialState().distributed_type = module.DistributedType.FSDP

        module.AcceleratorState.__init__ = init

    def patch_offload(module):
        original = module.ActivationOffload.__init__

        def init(self, devices=("cuda",), min_bytes=module.MIN_BYTES):
            original(self, devices=("cpu",), min_bytes=0)

        module.ActivationOffload.__init__ = init

    kinds = {kind for kind, _, _ in items}
    if "whoami" in kinds:
        import json

        with open(os.path.join(os.environ["FT_TEST_RECORD"], f"who-rank-{rank_here}.json"), "w") as f:
            json.dump({"pid": os.getpid(), "ppid": os.getppid()}, f)
    PATCHES = {}
    if kinds & {"raise", "config", "kill", "freeze", "record", "load_peak"}:
        PATCHES["ft.train.trainer"] = patch_trainer
    if "start" in loading:
        PATCHES["ft.model.load"] = loading["start"]
    if "slow_prepare" in kinds:
        PATCHES["ft.data.prepare"] = patch_prepare
    if "fsdp_cpu" in kinds:
        PATCHES["accelerate.state"] = patch_accelerate
    if "offload_cpu" in kinds:
        PATCHES["ft.train.offload"] = patch_offload

    class Patcher(importlib.abc.MetaPathFinder):
        """Patches the named modules right after they are imported."""

        def find_spec(self, name, path=None, target=None):
            if name not in PATCHES:
                return None
            sys.meta_path.remove(self)
            try:
                found = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            exec_module = found.loader.exec_module

            def run(module):
                exec_module(module)
                PATCHES[name](module)

            found.loader.exec_module = run
            return found

    for name in [name for name in PATCHES if name in sys.modules]:  # a forked run: imported already
        PATCHES.pop(name)(sys.modules[name])
    if PATCHES:
        sys.meta_path.insert(0, Patcher())


def hand_over() -> None:
    """A torchrun rank of `ft`: run it forked from the fork server (above), and end as it ends."""
    path = os.environ.get("FT_TEST_FORK_SOCKET")
    argv = sys.orig_argv[1:]
    if argv[:1] == ["-u"]:
        argv = argv[1:]
    if not path or argv[:2] != ["-m", "ft"] or "LOCAL_RANK" not in os.environ or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import json
    import signal
    import socket

    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        server.connect(path)
        request = {"args": argv[2:], "cwd": os.getcwd(), "env": dict(os.environ)}
        socket.send_fds(server, [json.dumps(request).encode()], [0, 1, 2])
        answer = json.loads(server.recv(1 << 16))
    except (OSError, ValueError):  # no server (the worker is ending): a fresh rank
        server.close()
        return
    if "fresh" in answer:
        server.close()
        return
    rank = answer["pid"]

    def pass_on(signum, frame):
        try:
            os.kill(rank, signum)
        except ProcessLookupError:
            pass

    code = 1
    try:  # from here on this interpreter only stands in for the rank: whatever happens, it never runs one itself
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, pass_on)
        message = server.recv(1 << 16)  # the rank's end (nothing: the server is gone, and so is the rank)
        code = json.loads(message)["exit"] if message else 1
        if code < 0:  # ended by a signal: this process ends by the same one, as torchrun would have seen the rank end
            if -code != signal.SIGKILL:
                signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
    finally:
        os._exit(code if code >= 0 else 128 - code)


if __name__ == "sitecustomize":
    hand_over()
    install()
