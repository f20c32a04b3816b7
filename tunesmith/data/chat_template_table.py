"""The chat template families tunesmith knows, as rows: Jinja text, turn markers and stop text.

Family names are stable ("chatml", "llama-3", "qwen-2.5", "mistral", "phi-3", "gemma", "alpaca"): the Ollama
exporter keys its Go templates on them. ``instruction_part`` / ``response_part`` are the text right before a
user turn and right before an assistant turn, which is what response-only masking looks for.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ChatFamily", "CHAT_FAMILIES", "QWEN_DEFAULT_SYSTEM", "ALPACA_DEFAULT_SYSTEM"]

QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
ALPACA_DEFAULT_SYSTEM = (
    "Below are some instructions that describe some tasks. Write responses that appropriately complete each "
    "request."
)


@dataclass(frozen=True)
class ChatFamily:
    """One chat format: its Jinja template and the marker texts around turns."""

    name: str
    template: str
    instruction_part: str  # text right before a user message
    response_part: str  # text right before an assistant message
    stop: str | None  # text that ends an assistant turn (None: the tokenizer's EOS token)


_CHATML = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_QWEN25 = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\n" + QWEN_DEFAULT_SYSTEM + "<|im_end|>\\n' -}}"
    "{%- endif -%}" + _CHATML
)

_LLAMA3 = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + "
    "'<|eot_id|>' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif "
    "-%}"
)

_MISTRAL = (
    "{{- bos_token -}}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system = message['content'] + '\\n\\n' -%}"
    "{%- elif message['role'] == 'user' -%}{{- '[INST] ' + ns.system + message['content'] + ' [/INST]' -}}"
    "{%- set ns.system = '' -%}"
    "{%- elif message['role'] == 'assistant' -%}{{- ' ' + message['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# Phi-3 / Phi-3.5 (Microsoft's template, without the EOS it appends when no generation prompt is asked).
_PHI3 = (
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)

# Gemma 2 / Gemma 3: no system role; the system text opens the first user turn (as Gemma 3's template does).
_GEMMA = (
    "{{- bos_token -}}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first = messages[0]['content'] + '\\n\\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<start_of_turn>' + role + '\\n' + (first if loop.first else '') + message['content'] | trim + "
    "'<end_of_turn>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)

_ALPACA = (
    "{%- set ns = namespace(system='" + ALPACA_DEFAULT_SYSTEM + "') -%}"
    "{%- if messages[0]['role'] == 'system' -%}{%- set ns.system = messages[0]['content'] -%}{%- endif -%}"
    "{{- ns.system + '\\n\\n' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- '### Instruction:\\n' + message['content'] + '\\n\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- '### Response:\\n' + message['content'] + eos_token + "
    "'\\n\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '### Response:\\n' -}}{%- endif -%}"
)

CHAT_FAMILIES: dict[str, ChatFamily] = {
    f.name: f
    for f in (
        ChatFamily("chatml", _CHATML, "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>"),
        ChatFamily("qwen-2.5", _QWEN25, "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>"),
        ChatFamily(
            "llama-3",
            _LLAMA3,
            "<|start_header_id|>user<|end_header_id|>\n\n",
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            "<|eot_id|>",
        ),
        ChatFamily("mistral", _MISTRAL, "[INST]", "[/INST]", None),
        ChatFamily("phi-3", _PHI3, "<|user|>\n", "<|assistant|>\n", "<|end|>"),
        ChatFamily("gemma", _GEMMA, "<start_of_turn>user\n", "<start_of_turn>model\n", "<end_of_turn>"),
        ChatFamily("alpaca", _ALPACA, "### Instruction:\n", "### Response:\n", None),
    )
}
