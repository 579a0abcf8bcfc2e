"""Prompt formats, one module each, registered under their YAML names in FORMATS."""

from ft.data.formats.base import FORMATS, Format, Segment
from ft.data.formats import alpaca, chat, completion, ebft, input_output, kto, preference, stepwise, user_defined  # noqa: F401  (registers)

__all__ = ["FORMATS", "Format", "Segment", "build_format"]


def build_format(ds, tokenizer=None) -> Format:
    """The format object for one `datasets:` entry (the dict form of `type:` is `user_defined`; a name that is none
    of ft's formats is a Python transform's, as config validated it)."""
    name = ds.type if isinstance(ds.type, str) else "user_defined"
    if name not in FORMATS:
        from ft.data.formats.python import PythonTransform

        return PythonTransform(ds, tokenizer)
    return FORMATS.get(name)(ds, tokenizer)
