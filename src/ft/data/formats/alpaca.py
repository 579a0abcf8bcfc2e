"""`type: alpaca`: the Stanford Alpaca template, with and without input (seed 004)."""

from __future__ import annotations

from typing import Any, Mapping

from ft.data.formats.base import FORMATS, Format, Segment, text_field

WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


@FORMATS.register("alpaca")
class Alpaca(Format):
    def required_columns(self) -> tuple[str, ...]:
        return ("instruction", "output")

    def prompt(self, row: Mapping[str, Any]) -> str:
        instruction = text_field(row, "instruction")
        extra = text_field(row, "input", optional=True)
        if extra.strip():
            return WITH_INPUT.format(instruction=instruction, input=extra)
        return NO_INPUT.format(instruction=instruction)

    def prompt_for(self, text: str, extra: str = "") -> str:
        return self.prompt({"instruction": text, "input": extra})

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:
        return [Segment(self.prompt(row), False), Segment(text_field(row, "output"), True)]


class AlpacaStyle(Alpaca):
    """Alpaca's rows and system texts in another turn layout (Axolotl's `alpaca:<style>` types)."""

    system = ""  # how the system text renders; {system}
    with_input = ""  # the turn; {instruction}, {input}
    no_input = ""  # the turn without an input; {instruction}

    def prompt(self, row: Mapping[str, Any]) -> str:
        instruction = text_field(row, "instruction")
        extra = text_field(row, "input", optional=True)
        if extra.strip():
            return self.system.format(system=SYSTEM_WITH_INPUT) + self.with_input.format(instruction=instruction, input=extra)
        return self.system.format(system=SYSTEM_NO_INPUT) + self.no_input.format(instruction=instruction)


SYSTEM_WITH_INPUT = WITH_INPUT.split("\n\n")[0]
SYSTEM_NO_INPUT = NO_INPUT.split("\n\n")[0]


@FORMATS.register("alpaca:chat", aliases=("alpaca_chat",))
class AlpacaChat(AlpacaStyle):
    system = "SYSTEM: {system}\n"
    with_input = "USER: {instruction}\n{input}\nASSISTANT:"
    no_input = "USER: {instruction}\nASSISTANT:"


@FORMATS.register("alpaca:phi", aliases=("alpaca_phi",))
class AlpacaPhi(AlpacaStyle):
    system = "<|system|>\n{system}<|end|>\n"
    with_input = "<|user|>\n{instruction}<|end|>{input}<|assistant|>"
    no_input = "<|user|>\n{instruction}<|end|>\n<|assistant|>\n"


JEOPARDY = (  # Axolotl's jeopardy prompt, word for word (its typo too), so a model trained on it is prompted alike
    "Below is a Jeopardy clue paired with input providing the category of the clue. Write a concise response that "
    "best answers tbe clue given the category.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


@FORMATS.register("jeopardy")
class Jeopardy(Format):
    """Jeopardy rows (question, category, answer): Alpaca's layout, the clue as the instruction and its category as
    the input; the answer trained as "what is <answer>"."""

    def required_columns(self) -> tuple[str, ...]:
        return ("question", "category", "answer")

    def prompt(self, row: Mapping[str, Any]) -> str:
        return JEOPARDY.format(instruction=text_field(row, "question"), input=text_field(row, "category"))

    def prompt_for(self, text: str, extra: str = "") -> str:
        return JEOPARDY.format(instruction=text, input=extra)

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:
        return [Segment(self.prompt(row), False), Segment("what is " + text_field(row, "answer"), True)]
