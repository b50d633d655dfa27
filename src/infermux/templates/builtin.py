"""The built-in chat templates, written here from each model family's documented prompt format.

Each is a Jinja template in the Hugging Face convention (``messages``, ``add_generation_prompt``,
``bos_token``, ``eos_token``, ``raise_exception``), so every engine renders it with its own library:
transformers' ``apply_chat_template`` (NATIVE, SGLANG), vLLM's ``LLM.chat`` and llama-cpp-python's
``Jinja2ChatFormatter`` (LLAMACPP). A message's ``content`` may be a string or a list of parts
(``{"type": "text", "text": ...}``, ``{"type": "image"}``); text-only templates keep the text parts.

The names are Oumi's (every name in its list of chat templates), so an Oumi config that names one loads
unchanged; ``auto`` (:data:`MODEL_OWN`) keeps the model's own template.
"""

from __future__ import annotations

__all__ = ["BUILTIN_TEMPLATES", "MODEL_OWN", "NOT_BUILT_IN"]

# The text of a message, whether its content is a string or a list of parts.
_TEXT = (
    "{%- macro text(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)

# The text of a message with a placeholder for each image part, for vision-language templates.
_TEXT_AND_IMAGES = (
    "{%- macro text(content, image) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- elif part['type'] in ('image', 'image_url') -%}{{ image }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)

# ChatML (OpenAI's chat markup, used by Qwen, SmolLM2, ...): <|im_start|>ROLE\nTEXT<|im_end|>\n
CHAT_ML = (
    _TEXT + "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}{{ text(message['content']) }}{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# infermux's plain format for models without one: "Role: text" lines, then "Assistant:".
DEFAULT = (
    _TEXT + "{%- for message in messages -%}"
    "{{ message['role'] | capitalize }}: {{ text(message['content']) }}{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)

# Gemma 2 instruction-tuned: turns of `user` and `model`; no system role, so a system message is put at
# the start of the first user turn (as Google's model card advises).
GEMMA2_IT = (
    _TEXT + "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = text(messages[0]['content']) + '\\n\\n' -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message['role'] not in ('user', 'assistant') -%}"
    "{{ raise_exception('gemma2-it takes user and assistant turns after one optional system message') }}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\\n' }}"
    "{%- if loop.first -%}{{ system }}{%- endif -%}"
    "{{ text(message['content']) }}{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

# Llama 3 instruct: <|start_header_id|>ROLE<|end_header_id|>\n\nTEXT<|eot_id|>, after the BOS token.
LLAMA3_INSTRUCT = (
    _TEXT + "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ text(message['content']) | trim }}{{ '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)

# LLaVA 1.5: "SYSTEM USER: <image>\nTEXT ASSISTANT: TEXT</s>USER: ..." ending with "ASSISTANT:".
LLAVA = (
    _TEXT_AND_IMAGES + "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ text(message['content'], '') + ' ' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'USER: ' + text(message['content'], '<image>\\n') + ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'ASSISTANT: ' + text(message['content'], '') + eos_token }}"
    "{%- else -%}{{ raise_exception('llava takes system, user and assistant messages') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

# Phi-3 instruct: <|ROLE|>\nTEXT<|end|>\n
PHI3_INSTRUCT = (
    _TEXT + "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>\\n' }}{{ text(message['content']) }}{{ '<|end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)

# Qwen2-VL instruct: ChatML with a default system message and a vision placeholder per image.
QWEN2_VL_INSTRUCT = (
    _TEXT_AND_IMAGES + "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{{ text(message['content'], '<|vision_start|><|image_pad|><|vision_end|>') }}{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Zephyr: <|ROLE|>\nTEXT</s>\n (the end of each message is the EOS token).
ZEPHYR = (
    _TEXT + "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>\\n' }}{{ text(message['content']) }}{{ eos_token + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)

# Oumi's `default` markup: "ROLE: text" lines with upper-case roles, then "ASSISTANT: " (Oumi's
# `default_gen`, which only marks the assistant spans for training; Oumi's own file leaves indentation
# in the prompt, left out here). infermux's `default` above is its own "Role: text" format.
DEFAULT_GEN = (
    _TEXT + "{%- for message in messages -%}"
    "{%- if not loop.first -%}{{ '\n' }}{%- endif -%}"
    "{{ message['role'] | upper }}: {{ text(message['content']) | trim }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '\nASSISTANT: ' }}{%- endif -%}"
)

# GPT-2 (no chat format of its own): each message's text followed by the EOS token; no generation prompt.
GPT2 = _TEXT + "{%- for message in messages -%}{{ text(message['content']) }}{{ eos_token }}{%- endfor -%}"

# InternVL3: ChatML with `<IMG_CONTEXT>` and a newline where each image goes (no default system message).
INTERNVL3 = (
    _TEXT_AND_IMAGES + "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}{{ text(message['content'], '<IMG_CONTEXT>\n') }}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

# Molmo: "User: TEXT Assistant: TEXT ..." on one line, turns alternating from the user; images are the
# processor's business (left out of the text).
MOLMO = (
    _TEXT + "{%- for message in messages -%}"
    "{%- if message['role'] != ('user' if loop.index0 % 2 == 0 else 'assistant') -%}"
    "{{ raise_exception('molmo takes turns that alternate user/assistant/user/..., starting with user') }}"
    "{%- endif -%}"
    "{%- if not loop.first -%}{{ ' ' }}{%- endif -%}"
    "{{ message['role'] | capitalize }}: {{ text(message['content']) }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ ' Assistant:' }}{%- endif -%}"
)

BUILTIN_TEMPLATES: dict[str, str] = {
    "chat_ml": CHAT_ML,
    "default": DEFAULT,
    "default_gen": DEFAULT_GEN,
    "gemma2-it": GEMMA2_IT,
    "gpt2": GPT2,
    "internvl3": INTERNVL3,
    "llama3-instruct": LLAMA3_INSTRUCT,
    "llava": LLAVA,
    "molmo": MOLMO,
    "phi3-instruct": PHI3_INSTRUCT,
    "qwen2-vl-instruct": QWEN2_VL_INSTRUCT,
    # Qwen3-VL keeps Qwen2-VL's chat markup (default system message, vision placeholders)
    "qwen3-vl-instruct": QWEN2_VL_INSTRUCT,
    "zephyr": ZEPHYR,
}

#: ``chat_template: auto`` (Oumi's word): the model's own template (the tokenizer's, the GGUF's), as if unset.
MODEL_OWN = "auto"

#: Template names older Oumi releases had and the current one no longer ships (the user gives the Jinja
#: text or a file instead).
NOT_BUILT_IN = frozenset({"internvl_2_5", "phi4-multimodal-instruct", "qwen3-instruct"})
