"""Imported once by the fork server of tests/ftproc.py: what `ft` imports before its first step, with the
library messages hidden as `ft` hides them without --debug (so that no import-time message is left in a
buffer that every forked run would inherit)."""

import importlib
import pkgutil
import sys

from ft.cli import quiet_third_parties

quiet_third_parties()

import torch  # noqa: E402,F401
import transformers  # noqa: E402
import peft  # noqa: E402,F401
import datasets  # noqa: E402,F401
import accelerate  # noqa: E402,F401

transformers.Trainer  # noqa: B018 (transformers imports lazily: this imports the Trainer and its libraries)
transformers.AutoModelForCausalLM  # noqa: B018

for arch in ("llama", "qwen2", "mistral", "gemma2", "phi3"):  # the tiny models of the tests
    importlib.import_module(f"transformers.models.{arch}.modeling_{arch}")

import matplotlib  # noqa: E402 (every run ends by drawing loss.png: pyplot and its fonts cost a second to import)

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402,F401

import ft  # noqa: E402

for module in pkgutil.walk_packages(ft.__path__, "ft."):
    if module.name not in ("ft.__main__", "ft.tiny"):
        importlib.import_module(module.name)

sys.stdout.flush()
sys.stderr.flush()
