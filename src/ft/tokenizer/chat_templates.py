"""Named chat templates (Jinja), for `chat_template:` in the config.

Each is written so that the text of a conversation's first k turns is a prefix of the text of the whole
conversation; ft's label masking relies on that (see data/formats/chat.py).
"""

from __future__ import annotations

from ft.registry import Registry

CHAT_TEMPLATES: Registry[str | None] = Registry("chat_template")

# The tokenizer's own template (tokenizer_config.json); None means "keep what the tokenizer has".
CHAT_TEMPLATES.add("tokenizer_default", None)

CHAT_TEMPLATES.add(
    "chatml",
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
)

CHAT_TEMPLATES.add(
    "llama3",
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
)

CHAT_TEMPLATES.add(
    "phi3",
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}",
)

# Gemma has no system role: a system turn is folded into the first user turn, as Google's template does.
CHAT_TEMPLATES.add(
    "gemma",
    "{{ bos_token }}"
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% else %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + ns.system + message['content'] + '<end_of_turn>\n' }}"
    "{% set ns.system = '' %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}",
)
