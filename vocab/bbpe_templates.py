"""Chat templates for bases that come as a bare rank file (an HF folder brings its own).

Written from each family's documented conversation format, so SFT's ``tokenizer`` template works
on the extended folder: Llama-3 headers (``<|start_header_id|>role<|end_header_id|>``, turns end
with ``<|eot_id|>``), Qwen's ChatML (``<|im_start|>role``, ``<|im_end|>``) and Mistral's v3 Tekken
instruct format (Nemo), as mistral-common encodes it: ``<s>[INST]user[/INST]answer</s>``, a
system prompt put before the LAST user message (``[INST]system\n\nuser[/INST]``), trailing spaces
of an answer dropped; and the v7 format (Mistral Small 3, Large 2411; v11 and v13 write plain chats the
same way), where the system prompt stays first in its own tokens:
``<s>[SYSTEM_PROMPT]system[/SYSTEM_PROMPT][INST]user[/INST]answer</s>``. A test compares the ids
with mistral-common's own ``encode_instruct`` / ``encode_chat_completion`` for each version.
v15 (model settings such as reasoning effort) gets no template: say a named one.
"""
from __future__ import annotations

LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TEKKEN_V3 = (
    "{%- if messages and messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set turns = messages[1:] %}{%- else %}{%- set turns = messages %}{%- endif %}"
    "{%- set ns = namespace(last_user=-1) %}"
    "{%- for m in turns %}{%- if m['role'] == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}"
    "{{- bos_token }}{%- for m in turns %}"
    "{%- if m['role'] == 'user' %}"
    "{%- if loop.index0 == ns.last_user and system is defined %}{{- '[INST]' + system + '\n\n' + m['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST]' + m['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif m['role'] == 'assistant' %}{{- m['content'].rstrip(' ') + eos_token }}{%- endif %}"
    "{%- endfor %}"
)
TEKKEN_V7 = (
    "{{- bos_token }}{%- if messages and messages[0]['role'] == 'system' %}"
    "{{- '[SYSTEM_PROMPT]' + messages[0]['content'] + '[/SYSTEM_PROMPT]' }}{%- set turns = messages[1:] %}"
    "{%- else %}{%- set turns = messages %}{%- endif %}"
    "{%- for m in turns %}"
    "{%- if m['role'] == 'user' %}{{- '[INST]' + m['content'] + '[/INST]' }}"
    "{%- elif m['role'] == 'assistant' %}{{- m['content'].rstrip(' ') + eos_token }}{%- endif %}"
    "{%- endfor %}"
)
TEMPLATES = {"llama3": LLAMA3, "qwen": CHATML, "tekken-v3": TEKKEN_V3, "tekken-v7": TEKKEN_V7, "tekken-v11": TEKKEN_V7,
             "tekken-v13": TEKKEN_V7}


def chat_template(profile: str, version: str | None = None) -> str | None:
    """The template of a base profile (Tekken: of its format version), or None."""
    return TEMPLATES.get(f"{profile}-{version}" if version else profile)
