"""Preference rows (`rl:`): a prompt, a chosen and a rejected answer, rendered as two training texts.

Each answer is rendered after the same prompt, with the same machinery as supervised rows: the prompt's
segments are never trained, the answer's always are (train_on_inputs does not apply to pairs).

- `type: preference` (TRL's standard preference format): `prompt`, `chosen`, `rejected` as text; the prompt is
  written as it is, each answer follows it and ends with EOS.
- `type: chat_template.default` (Axolotl's chat-template preference type, and TRL's conversational format):
  the prompt is a list of turns (`field_messages`, default `messages`, else `prompt`), each answer an assistant
  turn (`field_chosen` / `field_rejected`: text, a turn, or a list of turns), the conversation rendered by the
  chat template, the answer's turn trained with its end-of-turn tokens.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from ft.data.formats.base import FORMATS, Format, Segment, text_field
from ft.data.formats.chat import ChatTemplate
from ft.errors import DataError

SIDES = ("chosen", "rejected")


class PairFormat(Format):
    """A format whose rows are pairs: `pair(row)` gives the chosen and the rejected text as segments."""

    pairs: ClassVar[bool] = True

    def column(self, side: str) -> str:
        return (self.ds.field_chosen if side == "chosen" else self.ds.field_rejected) or side

    def pair(self, row: Mapping[str, Any]) -> tuple[list[Segment], list[Segment]]:
        raise NotImplementedError

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:  # a pair's chosen text, where one text is asked for
        return self.pair(row)[0]


@FORMATS.register("preference")
class Preference(PairFormat):
    reads = ("field_chosen", "field_rejected")

    def required_columns(self) -> tuple[str, ...]:
        return ("prompt", self.column("chosen"), self.column("rejected"))

    def pair(self, row: Mapping[str, Any]) -> tuple[list[Segment], list[Segment]]:
        if isinstance(row.get("prompt"), list):
            raise DataError("`prompt` holds a list of turns: use `type: chat_template.default` for conversational pairs")
        prompt = text_field(row, "prompt")
        out = []
        for side in SIDES:
            named = self.ds.field_chosen if side == "chosen" else self.ds.field_rejected
            answer = text_field(row, self.column(side), key=f"field_{side}" if named else "")
            if not answer.strip():
                raise DataError(f"the {side} answer (`{self.column(side)}`) is empty")
            out.append([Segment(prompt, False), Segment(answer, True)])
        return out[0], out[1]

    def prompt(self, row: Mapping[str, Any]) -> str:
        return text_field(row, "prompt")


@FORMATS.register("chat_template.default", aliases=("chat_template_preference",))
class ChatPreference(PairFormat):
    append_eos = False
    reads = ("field_messages", "field_chosen", "field_rejected", "message_field_role", "message_field_content",
             "chat_template", "chat_template_jinja", "roles", "drop_system_message")

    def __init__(self, ds: Any, tokenizer: Any = None) -> None:
        super().__init__(ds, tokenizer)
        self.chat = ChatTemplate(ds, tokenizer)

    def required_columns(self) -> tuple[str, ...]:
        return (self.column("chosen"), self.column("rejected"))

    def turns(self, row: Mapping[str, Any]) -> list[dict[str, str]]:
        column = self.ds.field_messages or next((c for c in ("messages", "prompt", "conversation") if c in row), None)
        if column is None:
            raise DataError("missing the prompt's turns (a column `messages` or `prompt`); set `field_messages` to name it")
        value = row[column]
        if isinstance(value, str):  # a prompt as plain text: one user turn
            return [{"role": "user", "content": value}]
        return self._turns(value)

    def _turns(self, value: Any) -> list[dict[str, str]]:
        """Turns checked and read as the chat-template format reads them (its role and content keys)."""
        return self.chat.messages({self.ds.field_messages or "messages": value})

    def answer(self, row: Mapping[str, Any], side: str) -> list[dict[str, str]]:
        column = self.column(side)
        value = row.get(column)
        if value is None:
            raise DataError(f"missing column `{column}` (the {side} answer)")
        if isinstance(value, str):
            turns = [{"role": "assistant", "content": value}]
        else:
            turns = self._turns([value] if isinstance(value, Mapping) else value)
        if not "".join(t["content"] for t in turns).strip():
            raise DataError(f"the {side} answer (`{column}`) is empty")
        return turns

    def pair(self, row: Mapping[str, Any]) -> tuple[list[Segment], list[Segment]]:
        prompt_turns = self.turns(row)
        prompt = self.chat.render(prompt_turns, generation_prompt=True)
        out = []
        for side in SIDES:
            full = self.chat.render(prompt_turns + self.answer(row, side))
            if not full.startswith(prompt):
                raise DataError("the chat template renders the prompt differently when an answer follows it, so the "
                                "answer cannot be told apart; use another `chat_template`")
            answer = full[len(prompt):]
            trained = answer.rstrip()  # the end-of-turn tokens are trained, the line break after them is not
            out.append([s for s in (Segment(prompt, False), Segment(trained, True), Segment(answer[len(trained):], False))
                        if s.text])
        return out[0], out[1]

    def prompt(self, row: Mapping[str, Any]) -> str:
        return self.chat.render(self.turns(row), generation_prompt=True)

    def prompt_for(self, text: str, extra: str = "") -> str:
        return self.chat.prompt_for(text, extra)


def system_turn(row: Mapping[str, Any]) -> list[dict[str, str]]:
    """The row's `system` text as the conversation's first turn (none when it has no such text)."""
    system = row.get("system")
    return [{"role": "system", "content": system}] if isinstance(system, str) and system else []


@FORMATS.register("chat_template.argilla")
class ArgillaPreference(ChatPreference):
    """Argilla's preference rows (Axolotl's `chat_template.argilla`, UltraFeedback's cleaned pairs): `chosen` and
    `rejected` each hold the whole conversation, the same turns up to a last assistant turn that differs; an
    optional `system` text goes first. The prompt is those shared turns, each answer its conversation's last turn."""

    def _conversation(self, row: Mapping[str, Any], side: str) -> list[dict[str, str]]:
        column = self.column(side)
        value = row.get(column)
        if not isinstance(value, list) or not value:
            raise DataError(f"column `{column}` must hold the conversation as a list of turns")
        turns = self._turns(value)
        if turns[-1]["role"] != "assistant":
            raise DataError(f"the last turn of `{column}` is the {turns[-1]['role']}'s; it must be the assistant's answer")
        return turns

    def turns(self, row: Mapping[str, Any]) -> list[dict[str, str]]:
        chosen, rejected = (self._conversation(row, side) for side in SIDES)
        if chosen[:-1] != rejected[:-1]:
            raise DataError(f"`{self.column('chosen')}` and `{self.column('rejected')}` differ before their last turn; "
                            "a pair answers the same conversation")
        return system_turn(row) + chosen[:-1]

    def answer(self, row: Mapping[str, Any], side: str) -> list[dict[str, str]]:
        turn = self._conversation(row, side)[-1]
        if not turn["content"].strip():
            raise DataError(f"the {side} answer (the last turn of `{self.column(side)}`) is empty")
        return [turn]


@FORMATS.register("bradley_terry.chat_template")
class BradleyTerryRows(ChatPreference):
    """Axolotl's reward-model rows (`bradley_terry.chat_template`): `input` the user's turn after an optional
    `system` text, `chosen` and `rejected` the assistant's answers as text; rendered by the chat template as
    chat_template.default renders a pair. Rows with the prompt's turns under `messages` read as there."""

    def turns(self, row: Mapping[str, Any]) -> list[dict[str, str]]:
        if self.ds.field_messages or "input" not in row:
            return super().turns(row)
        return system_turn(row) + [{"role": "user", "content": text_field(row, "input")}]


@FORMATS.register("chatml.ultra")
class ChatmlUltra(PairFormat):
    """Axolotl's `chatml.ultra` (UltraFeedback binarized rows): `prompt` (and `system`) written as ChatML text
    whatever the tokenizer's template, each answer the assistant turn of `chosen` / `rejected` (lists of turns,
    the answer second) followed by `<|im_end|>`."""

    def required_columns(self) -> tuple[str, ...]:
        return ("prompt", "chosen", "rejected")

    def prompt(self, row: Mapping[str, Any]) -> str:
        system = row.get("system")
        head = f"<|im_start|>system\n{system}<|im_end|>\n" if isinstance(system, str) and system else ""
        return head + f"<|im_start|>user\n{text_field(row, 'prompt')}<|im_end|>\n<|im_start|>assistant\n"

    def pair(self, row: Mapping[str, Any]) -> tuple[list[Segment], list[Segment]]:
        prompt, out = self.prompt(row), []
        for side in SIDES:
            turns = row.get(side)
            if not isinstance(turns, list) or len(turns) < 2 or not isinstance(turns[1], Mapping) or not isinstance(
                    turns[1].get("content"), str):
                raise DataError(f"`{side}` must be a list of turns whose second is the answer ({{role, content}})")
            if not turns[1]["content"].strip():
                raise DataError(f"the {side} answer (`{side}[1].content`) is empty")
            out.append([Segment(prompt, False), Segment(turns[1]["content"] + "<|im_end|>", True)])
        return out[0], out[1]
