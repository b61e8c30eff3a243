"""Chat templates for bases that come as a bare rank file (an HF folder brings its own).

Written from each family's documented conversation format, so SFT's ``tokenizer`` template works
on the extended folder: Llama-3 headers (``<|start_header_id|>role<|end_header_id|>``, turns end
with ``<|eot_id|>``) and Qwen's ChatML (``<|im_start|>role``, ``<|im_end|>``). Tekken has none:
Mistral's format is applied by mistral-common, not by a template.
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
TEMPLATES = {"llama3": LLAMA3, "qwen": CHATML}


def chat_template(profile: str) -> str | None:
    return TEMPLATES.get(profile)
