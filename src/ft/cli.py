"""The `ft` command line. It parses arguments, loads the config and calls one function per command.

Nothing heavy is imported at module level: `ft --help` and `ft validate` never import torch.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import sys
from pathlib import Path
from typing import Any, List, Optional, Tuple

import typer

from ft.errors import ConfigError, UserError

log = logging.getLogger("ft")

app = typer.Typer(
    name="ft",
    help="Fine-tune LLMs from one YAML file: full, LoRA or QLoRA, on one GPU or many.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}
CONFIG_ARG = typer.Argument(..., help="The YAML config file.", show_default=False)
SET_OPT = typer.Option(None, "--set", help="Override any key, nested ones too: --set datasets.0.path=data.jsonl")
OVERRIDE_HELP = " Any config key can be overridden as --key-name VALUE (e.g. --learning-rate 1e-4)."


def parse_overrides(args: List[str], sets: Optional[List[str]]) -> list[tuple[str, Any]]:
    """`--learning-rate 1e-4`, `--flag`, `--key=value` and `--set a.b=c` → (dotted key, value) pairs."""
    from ft.config import parse_value

    pairs: list[tuple[str, Any]] = []
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or len(token) == 2:
            raise ConfigError(f"command line: unexpected argument `{token}`; overrides are written --key value")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            else:
                value = "true"
        pairs.append((key.replace("-", "_"), parse_value(value)))
        i += 1
    for item in sets or []:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"command line: --set {item}: write --set key=value")
        pairs.append((key.strip(), parse_value(value)))
    return pairs


def load(config: Path, ctx: typer.Context, sets: Optional[List[str]]):
    from ft.commands.config import load as load_config

    return load_config(config, parse_overrides(list(ctx.args), sets))


@app.command(context_settings=OVERRIDES, help="Check a config and print it resolved, with derived values." + OVERRIDE_HELP)
def validate(ctx: typer.Context, config: Path = CONFIG_ARG, set_: Optional[List[str]] = SET_OPT) -> None:
    from ft.commands.validate import describe
    from ft.launch.backend import world_size

    cfg = load(config, ctx, set_)
    launched = "WORLD_SIZE" in os.environ
    typer.echo(describe(cfg, world_size=world_size() if launched else cfg.distributed.num_processes or 1))


@app.command(context_settings=OVERRIDES, help="Fine-tune the model the config describes; --num-processes N runs it on N "
             "processes (GPUs) through torch's elastic launcher." + OVERRIDE_HELP)
def train(
    ctx: typer.Context,
    config: Path = CONFIG_ARG,
    set_: Optional[List[str]] = SET_OPT,
    num_processes: Optional[int] = typer.Option(None, min=1, help="Processes per machine (one per GPU)."),
    num_machines: int = typer.Option(1, min=1, help="Machines taking part (each runs this same command)."),
    machine_rank: int = typer.Option(0, min=0, help="This machine's number, 0 on the main machine."),
    main_process_ip: Optional[str] = typer.Option(None, help="The main machine's address (several machines)."),
    main_process_port: Optional[int] = typer.Option(None, help="A free port on the main machine (default 29500)."),
) -> None:
    cfg = load(config, ctx, set_)  # a config mistake is said once, here, before any process starts
    if num_processes is None and cfg.distributed.num_processes and cfg.distributed.num_processes > 1:
        num_processes = cfg.distributed.num_processes
    if num_processes is not None and "WORLD_SIZE" not in os.environ:
        from ft.launch.processes import Layout, launch

        if machine_rank >= num_machines:
            raise ConfigError(f"command line: --machine-rank {machine_rank} with --num-machines {num_machines}: "
                              f"machines are numbered 0 to {num_machines - 1}")
        if num_machines > 1 and not main_process_ip:
            raise ConfigError("command line: --num-machines above 1 needs --main-process-ip (the main machine's address)")
        rest = [str(config), *ctx.args, *(f"--set={item}" for item in set_ or [])]
        layout = Layout(num_processes, num_machines, machine_rank, main_process_ip, main_process_port)
        debug = bool(ctx.obj and ctx.obj.get("debug"))
        code = launch(layout, [*(["--debug"] if debug else []), "train", *rest], debug=debug)
        if code:
            sys.exit(code)
        return
    from ft.commands.train import run_train

    run_train(cfg)


@app.command(context_settings=OVERRIDES, help="Tokenize the datasets once and cache them (--debug also prints the first examples with the trained "
    "tokens marked)." + OVERRIDE_HELP,
)
def preprocess(
    ctx: typer.Context,
    config: Path = CONFIG_ARG,
    set_: Optional[List[str]] = SET_OPT,
    show: int = typer.Option(0, "--show", help="Print the first N examples with trained tokens marked."),
) -> None:
    from ft.commands.preprocess import run_preprocess

    cfg = load(config, ctx, set_)
    debug = bool(ctx.obj and ctx.obj.get("debug"))
    run_preprocess(cfg, show=show or (3 if debug else 0))


@app.command(
    "merge-lora",
    context_settings=OVERRIDES,
    help="Merge the trained adapter (lora_model_dir, default output_dir) into the base model and write it to "
    "--merged-dir (default output_dir/merged)." + OVERRIDE_HELP,
)
def merge_lora(
    ctx: typer.Context,
    config: Path = CONFIG_ARG,
    set_: Optional[List[str]] = SET_OPT,
    merged_dir: Optional[str] = typer.Option(None, help="Where to write the merged model (default: output_dir/merged)."),
) -> None:
    from ft.commands.merge import run_merge

    cfg = load(config, ctx, set_)
    if any(a == "--output-dir" or a.startswith("--output-dir=") for a in ctx.args):
        # --output-dir here once meant where to write; now it is the run's output_dir, as on every command.
        log.info("--output-dir is the run's output_dir (where the adapter is), as on every command; the "
                 "merged model goes to %s (choose with --merged-dir)", merged_dir or Path(cfg.training.output_dir) / "merged")
    run_merge(cfg, merged_dir)


@app.command(context_settings=OVERRIDES, help="Generate with the trained model, in its training prompt format." + OVERRIDE_HELP)
def inference(
    ctx: typer.Context,
    config: Path = CONFIG_ARG,
    set_: Optional[List[str]] = SET_OPT,
    prompt: Optional[str] = typer.Option(None, help="One prompt; interactive when omitted."),
    input_: str = typer.Option("", "--input", help="The row's input (context) for formats that have one."),
    base_only: bool = typer.Option(False, "--base-only", help="Use the base model without the adapter."),
    max_new_tokens: int = typer.Option(256, help="Most tokens to generate."),
    temperature: float = typer.Option(0.0, help="0: greedy decoding; above 0: sampling."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling threshold (with temperature > 0)."),
) -> None:
    from ft.commands.inference import run_inference

    run_inference(load(config, ctx, set_), prompt, input_, base_only, max_new_tokens, temperature, top_p)


@app.command(context_settings=OVERRIDES, help="Estimate the GPU memory the config needs, before loading anything; "
             "say whether it fits and what to change if not." + OVERRIDE_HELP)
def plan(
    ctx: typer.Context,
    config: Path = CONFIG_ARG,
    set_: Optional[List[str]] = SET_OPT,
    gpu_memory: Optional[str] = typer.Option(None, help="Memory of one GPU, e.g. 24GB (default: this machine's GPU, else 24GB)."),
    num_gpus: int = typer.Option(1, min=1, help="GPUs the run will use."),
    json_: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    from ft.commands.plan import run_plan

    run_plan(load(config, ctx, set_), gpu_memory, num_gpus, json_)


@app.command("eval", context_settings=OVERRIDES, help="Score the model on a test set: by its generated answers (exact "
             "match, F1, BLEU, chrF, ROUGE, BERTScore, the references' perplexity), or multiple-choice rows by "
             "log-likelihood (acc, acc_norm); lm-eval tasks with --tasks; two runs side by side with --compare. The "
             "run's adapter by default." + OVERRIDE_HELP)
def eval_(
    ctx: typer.Context,
    config: Path = CONFIG_ARG,
    set_: Optional[List[str]] = SET_OPT,
    data: Optional[str] = typer.Option(None, help="Test rows (a file in the first dataset's format); default: test_datasets."),
    limit: Optional[int] = typer.Option(None, min=1, help="Score only the first N rows (per task with --tasks)."),
    base_only: bool = typer.Option(False, "--base-only", help="Score the base model without the adapter."),
    merged: bool = typer.Option(False, "--merged", help="Score the merged model (output_dir/merged)."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="lm-evaluation-harness tasks, comma-separated (default: "
                                        "lm_eval_tasks), instead of the test set."),
    compare: Optional[Tuple[str, str]] = typer.Option(None, "--compare", help="Two runs' predictions (files, eval "
                                                      "folders or output_dirs) on the same test set: differences with "
                                                      "95% bootstrap intervals, into output_dir/compare."),
    judge: Optional[str] = typer.Option(None, "--judge", help="With --compare: a local causal LM that judges each pair "
                                        "of answers in both orders (win/tie/loss)."),
) -> None:
    from ft.commands.eval import run_compare, run_eval, run_harness

    if base_only and merged:
        raise ConfigError("command line: --base-only and --merged: choose one")
    if judge and not compare:
        raise ConfigError("command line: --judge judges the two runs of --compare; add --compare RUN_A RUN_B")
    cfg = load(config, ctx, set_)
    which = "base" if base_only else "merged" if merged else "adapter"
    if compare:
        run_compare(cfg, compare[0], compare[1], judge)
    elif tasks is not None or (cfg.evaluation.lm_eval_tasks and data is None and not cfg.data.test_datasets):
        run_harness(cfg, tuple(t.strip() for t in (tasks or "").split(",") if t.strip()) or cfg.evaluation.lm_eval_tasks,
                    limit, which)
    else:
        run_eval(cfg, data, limit, which)


@app.command("config-schema", help="Print the config reference (every key, its type, default and meaning).")
def config_schema() -> None:
    from ft.config.reference import reference_markdown

    typer.echo(reference_markdown())


def setup_logging(debug: bool = False) -> None:
    """ft's own messages on stderr; under a launcher only rank 0 speaks, the other ranks only to report a
    problem, prefixed with their rank. Without --debug, library messages that ask nothing of the user go."""
    rank = os.environ.get("RANK", "0")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ft: %(message)s" if rank == "0" else f"ft[rank {rank}]: %(message)s"))
    logger = logging.getLogger("ft")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO if rank == "0" else logging.WARNING)
    if not debug:
        quiet_third_parties()
        if rank != "0":  # what the libraries warn of, every process would say: the first one says it
            import warnings

            from ft.launch.environment import quiet_other_ranks

            warnings.simplefilter("ignore")
            quiet_other_ranks()


class _Drop(logging.Filter):
    def __init__(self, words: str) -> None:
        super().__init__()
        self.words = words

    def filter(self, record: logging.LogRecord) -> bool:
        return self.words not in record.getMessage()


# Library messages that ask nothing of a user of ft: (logger, words of the message, why it goes). `--debug`
# shows them all.
QUIET = (
    ("DeepSpeed", "Setting accelerator to CPU",
     "deepspeed says it at import whenever it is installed and no GPU is seen, also in runs that do not use it"),
    ("bitsandbytes.backends.cpu.ops", "",
     "bitsandbytes, on CPUs with AVX512-BF16, suggests an optional kernel package at import"),
    ("torchao", "Failed to load", "torchao's wheel carries CUDA kernels for GPUs ft's qat does not use, and says so at import"),
    ("torch.utils._pytree", "is an Enum subclass and is now natively supported",
     "torchao registers its enums the old way at import; torch says it is deprecated"),
)


def quiet_third_parties() -> None:
    """Hide library messages that ask nothing of a user of ft (no library is imported here)."""
    import warnings

    from ft.launch.environment import quiet_progress_bars

    # peft asks transformers a deprecated question on every model it wraps
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # prompt tuning and prefix tuning number the virtual tokens themselves: the rows' own position ids are not needed
    warnings.filterwarnings("ignore", message="Position ids are not supported for parameter efficient tuning")
    for name, words, _why in QUIET:
        if words:
            logging.getLogger(name).addFilter(_Drop(words))
        else:
            logging.getLogger(name).setLevel(logging.ERROR)
    quiet_progress_bars()


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point: runs the app and turns a UserError into one line on stderr and exit code 2."""
    # At exit, the interpreter's last garbage collections walk every object torch, transformers and peft made:
    # 1.2 s of a tiny run's 7 s, after its work is done and saved. Frozen objects are skipped by those passes
    # (and still freed as their modules go).
    atexit.register(gc.freeze)
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    setup_logging(debug)
    try:
        code = app(args=args, prog_name="ft", standalone_mode=False, obj={"debug": debug})
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as exc:
        record_failure(str(exc), exc.exit_code)
        if debug:
            raise
        print(f"ft: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:
        kind = command_line_mistake(exc)
        if kind is None or debug:
            line = f"{type(exc).__name__}: {exc}".splitlines()[0]
            record_failure(line, 1)
            if kind is None and not debug and os.environ.get("FT_RANK_ERRORS"):
                # a process under `ft train --num-processes`: one line (the launcher names the root cause;
                # this may be only its consequence, a peer's closed socket); --debug shows the traceback
                print(f"ft: error: rank {os.environ.get('RANK')}: {line}", file=sys.stderr)
                sys.exit(1)
            raise
        if kind == "abort":
            sys.exit(130)
        print(f"ft: error: {kind}", file=sys.stderr)
        sys.exit(2)


def record_failure(message: str, exit_code: int) -> None:
    """Under a launcher, leave this rank's error for it (ft's --num-processes, or torchrun's error file)."""
    if "RANK" in os.environ:
        from ft.launch.processes import record_rank_error

        record_rank_error(message, exit_code)


def command_line_mistake(exc: BaseException) -> Optional[str]:
    """A parser error (unknown or mistyped command, missing argument, unknown option) as one line; "abort"
    for Ctrl-C at a prompt; None for anything else. Matched by class name, not identity: typer ≥ 0.29 raises
    its own copy of click's exceptions (`typer._click`), other versions click's."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "Abort" in names:
        return "abort"
    if "ClickException" not in names:
        return None
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None and getattr(ctx, "command_path", "") else "ft"
    text = " ".join(exc.format_message().split())
    return f"command line: {text} (see `{where} --help`)"


if __name__ == "__main__":
    main()
