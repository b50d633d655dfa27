"""Chat templates: what ``model.chat_template`` may say, and the Jinja text it stands for.

``model.chat_template`` is one of

- the name of a built-in template (:data:`BUILTIN_TEMPLATES`: ``chat_ml``, ``default``, ``default_gen``,
  ``gemma2-it``, ``gpt2``, ``internvl3``, ``llama3-instruct``, ``llava``, ``molmo``, ``phi3-instruct``,
  ``qwen2-vl-instruct``, ``qwen3-vl-instruct``, ``zephyr``; Oumi's names);
- ``auto``: the model's own template (the tokenizer's or the GGUF's), the same as leaving it unset;
- a Jinja template (it contains ``{{`` or ``{%``);
- the path of a file holding one.

Anything else is refused when the config is validated (:func:`check_chat_template`), before a model is
loaded or a row is sent. Every engine that renders prompts itself (NATIVE, LLAMACPP, VLLM, SGLANG) turns
the setting into template text with :func:`resolve_chat_template` and renders it with its own library;
:func:`render_chat_template` renders the same way (transformers' Jinja settings) without one.

Nothing here imports Jinja until :func:`render_chat_template` runs.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from infermux.errors import ConfigError
from infermux.templates.builtin import BUILTIN_TEMPLATES, MODEL_OWN, NOT_BUILT_IN

__all__ = ["BUILTIN_TEMPLATES", "MODEL_OWN", "check_chat_template", "render_chat_template", "resolve_chat_template"]

_MAX_PATH = 4096


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


_BY_KEY = {_key(name): name for name in BUILTIN_TEMPLATES}


def is_template_text(value: str) -> bool:
    """Whether ``value`` is Jinja template text rather than a name or a path."""
    return "{{" in value or "{%" in value


def _problem(value: str) -> str | None:
    """Why ``value`` is not a usable ``chat_template``, or None."""
    if is_template_text(value) or _key(value) in _BY_KEY or _key(value) == MODEL_OWN:
        return None
    names = ", ".join([*BUILTIN_TEMPLATES, MODEL_OWN])
    if len(value) < _MAX_PATH and Path(value).expanduser().is_file():
        return None
    if _key(value) in {_key(n) for n in NOT_BUILT_IN}:
        return (
            f"{value!r} is one of Oumi's templates that infermux does not ship. Give the Jinja template "
            f"itself or the path of a file holding it (built-in names: {names})."
        )
    looks_like_path = "/" in value or "\\" in value or value.endswith((".jinja", ".j2", ".txt"))
    if looks_like_path:
        return f"no file at {value!r}. Give the path of a Jinja file, the template itself, or one of: {names}."
    close = difflib.get_close_matches(_key(value), list(_BY_KEY), n=1, cutoff=0.6)
    hint = f" Did you mean {_BY_KEY[close[0]]!r}?" if close else ""
    return (
        f"{value!r} is neither a built-in template name, a Jinja template (no '{{{{' or '{{%') nor an existing "
        f"file.{hint} Built-in names: {names}."
    )


def check_chat_template(value: str) -> str:
    """``value`` if it is a built-in name, a Jinja template or an existing file; else ``ValueError``."""
    problem = _problem(value)
    if problem:
        raise ValueError(problem)
    return value


def resolve_chat_template(value: str | None) -> str | None:
    """The Jinja text ``model.chat_template`` stands for (None when it is not set, or ``auto``: the
    model's own template).

    Raises:
        ConfigError: ``value`` is neither a built-in name, a template nor a readable file.
    """
    if value is None or _key(value) == MODEL_OWN:
        return None
    if is_template_text(value):
        return value
    if _key(value) in _BY_KEY:
        return BUILTIN_TEMPLATES[_BY_KEY[_key(value)]]
    problem = _problem(value)
    if problem:
        raise ConfigError(f"model.chat_template: {problem}")
    path = Path(value).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"model.chat_template: cannot read {path}: {exc}") from None
    if not text.strip():
        raise ConfigError(f"model.chat_template: {path} is empty; it should hold a Jinja chat template.")
    return text


def render_chat_template(
    template: str,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """Render ``template`` (a name, template or path) for ``messages`` as transformers would."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    text = resolve_chat_template(template)
    if text is None:
        raise ValueError("chat_template 'auto' is the model's own template: render it with the model's tokenizer")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    context = {"add_generation_prompt": add_generation_prompt, "bos_token": bos_token, "eos_token": eos_token}
    return env.from_string(text).render(messages=messages, **context, **extra)
