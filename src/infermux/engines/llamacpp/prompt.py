"""The LLAMACPP engine's prompts: the model's chat template (or the config's) rendered and tokenized."""

from __future__ import annotations

from typing import Any

from infermux.configs.generation_params import GenerationParams
from infermux.engines.local import tool_prompting
from infermux.errors import ConfigError
from infermux.templates import resolve_chat_template
from infermux.types import Conversation

__all__ = ["chat_formatter", "render_prompt"]


def render_prompt(
    llama: Any, template: Any, has_tools: bool, conversation: Conversation, generation: GenerationParams
) -> list[int]:
    """The token ids of ``conversation``'s prompt: the chat template rendered, then tokenized."""
    messages, tools = tool_prompting.chat_inputs(conversation, generation, has_tools)
    rendered = template(messages=messages, tools=tools)
    encoded = rendered.prompt.encode("utf-8")
    return list(llama.tokenize(encoded, add_bos=not rendered.added_special, special=True))


def chat_formatter(llama: Any, override: str | None) -> Any:
    """The model's chat template as a formatter, built the way ``Llama`` builds its own."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = resolve_chat_template(override) or llama.metadata.get("tokenizer.chat_template")
    if not template:
        raise ConfigError(
            "this GGUF has no chat template (tokenizer.chat_template); set model.chat_template to a built-in "
            "template name (e.g. chat_ml), a Jinja template, or the path of one."
        )
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llama.model)

    def text(token: int) -> str:
        return llama_cpp.llama_vocab_get_text(vocab, token).decode("utf-8") if token != -1 else ""

    return Jinja2ChatFormatter(template=template, eos_token=text(llama.token_eos()), bos_token=text(llama.token_bos()))
