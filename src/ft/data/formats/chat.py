"""`type: chat_template`: conversations rendered with a chat template, trained on chosen roles.

The text is exactly `tokenizer.apply_chat_template(messages, tokenize=False)`. Turn boundaries are found by
rendering prefixes of the conversation: the text up to the start of turn i's content is the rendering of
turns [0, i) with the generation prompt, and the end of turn i (its end-of-turn tokens included) is where
the rendering of turns [0, i] stops agreeing with the whole text. Only the content of turns whose role is
in `roles_to_train`, and the end-of-turn text chosen by `train_on_eos`, are trained. A turn's reasoning text
(`field_thinking`, handed to the template as `template_thinking_key`) is trained with its turn, from where the
template writes it.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from ft.data.formats.base import FORMATS, Format, Segment
from ft.errors import DataError
from ft.tokenizer.chat_templates import CHAT_TEMPLATES

SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


@FORMATS.register("chat_template", aliases=("sharegpt", "messages"))
class ChatTemplate(Format):
    append_eos = False
    reads = ("field_messages", "message_field_role", "message_field_content", "roles_to_train", "train_on_eos",
             "chat_template", "chat_template_jinja", "roles", "drop_system_message", "field_thinking",
             "template_thinking_key")

    def __init__(self, ds: Any, tokenizer: Any = None) -> None:
        super().__init__(ds, tokenizer)
        self.template = ds.chat_template_jinja or (CHAT_TEMPLATES.get(ds.chat_template) if ds.chat_template else None)
        self.role_of = {name: role for role, names in (ds.roles or {}).items() for name in names}

    def required_columns(self) -> tuple[str, ...]:
        return (self.ds.field_messages,) if self.ds.field_messages else ()

    def messages(self, row: Mapping[str, Any]) -> list[dict[str, str]]:
        """The turns as the chat template takes them: role, content, and the reasoning text when a turn has one."""
        column = self.ds.field_messages or next((c for c in ("messages", "conversations") if c in row), None)
        if column is None or row.get(column) is None:
            raise DataError("missing column `messages` (or `conversations`); set `field_messages` to name it")
        turns = row[column]
        if not isinstance(turns, list) or not turns:
            raise DataError(f"column `{column}` must be a non-empty list of turns")
        out = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, Mapping):
                raise DataError(f"{column}[{i}] is not an object with a role and a content")
            sharegpt = "from" in turn and "role" not in turn
            role_key = self.ds.message_field_role or ("from" if sharegpt else "role")
            content_key = self.ds.message_field_content or ("value" if sharegpt else "content")
            role, content = turn.get(role_key), turn.get(content_key)
            if not isinstance(role, str) or not isinstance(content, str):
                raise DataError(f"{column}[{i}] needs text under `{role_key}` and `{content_key}`")
            if self.role_of:
                role = self.role_of.get(role, role)
            elif sharegpt:
                role = SHAREGPT_ROLES.get(role, role)
            message = {"role": role, "content": content}
            thinking = turn.get(self.ds.field_thinking or "reasoning_content")
            if isinstance(thinking, str) and thinking:
                message[self.ds.template_thinking_key or "reasoning_content"] = thinking
            elif thinking is not None and not isinstance(thinking, str):
                raise DataError(f"{column}[{i}] has `{self.ds.field_thinking or 'reasoning_content'}` that is not text")
            if not (self.ds.drop_system_message and role == "system"):
                out.append(message)
        if not out:
            raise DataError(f"column `{column}` holds only system turns, and drop_system_message leaves them out")
        return out

    def render(self, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
        kwargs = {"chat_template": self.template} if self.template else {}
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt, **kwargs
            )
        except ValueError as exc:  # no template set on the tokenizer
            if "chat_template is not set" in str(exc):
                raise DataError("the tokenizer has no chat template; set `chat_template:` (chatml, llama3, phi3, gemma) "
                                "in the config") from None
            raise DataError(f"{str(exc).splitlines()[0]}; set `chat_template:` (chatml, llama3, phi3, gemma) in the config") from None
        except Exception as exc:  # jinja errors raised by the template itself (e.g. roles must alternate)
            if type(exc).__module__.startswith("jinja2"):
                raise DataError(f"the chat template rejected the conversation: {exc}") from None
            raise

    def segments(self, row: Mapping[str, Any]) -> list[Segment]:
        messages = self.messages(row)
        full = self.render(messages)
        trained = [i for i, m in enumerate(messages) if m["role"] in self.ds.roles_to_train]
        mode = self.ds.train_on_eos
        spans: list[tuple[int, int, bool]] = []  # (start, end, train), covering the text in order
        pos = 0
        for i, message in enumerate(messages):
            start = _agree(self.render(messages[:i], generation_prompt=True), full) if i else 0
            end = _agree(self.render(messages[: i + 1]), full) if i + 1 < len(messages) else len(full)
            start = max(start, pos)
            found = full.find(message["content"], start, end) if message["content"] else -1
            thinking = message.get(self.ds.template_thinking_key or "reasoning_content", "")
            reasoning = full.find(thinking, start, found if found >= 0 else end) if thinking else -1
            if found >= 0:  # header | [reasoning ...] content | end-of-turn
                head_end, content_end = (reasoning if reasoning >= 0 else found), found + len(message["content"])
            else:  # the template changed the text (e.g. trimmed it): the whole turn body counts as content
                head_end, content_end = start, end
            end = max(end, content_end)
            train = i in trained
            eos = mode == "all" or (train and (mode == "turn" or (mode == "last" and i == trained[-1])))
            # the end-of-turn text is trained up to its last non-blank character (not the newline after it)
            eos_end = content_end + len(full[content_end:end].rstrip())
            spans += [(pos, head_end, False), (head_end, content_end, train), (content_end, eos_end, eos), (eos_end, end, False)]
            pos = end
        spans.append((pos, len(full), False))
        return [Segment(full[a:b], t) for a, b, t in spans if b > a]

    def prompt_for(self, text: str, extra: str = "") -> str:
        content = text + (f"\n{extra}" if extra else "")
        return self.render([{"role": "user", "content": content}], generation_prompt=True)

    def prompt(self, row: Mapping[str, Any]) -> str:
        messages = self.messages(row)
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        return self.render(messages, generation_prompt=True)


def _agree(prefix: str, full: str) -> int:
    """How many leading characters `prefix` and `full` share."""
    return len(os.path.commonprefix([prefix, full]))
