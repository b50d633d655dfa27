"""REMOTE_VLLM: a ``vllm serve`` server, with vLLM's extras.

* Guided decoding: ``json`` through ``response_format`` (as for any OpenAI server); ``regex`` and
  ``choice`` through vLLM's ``structured_outputs`` request field.
* ``min_p`` and ``stop_token_ids`` are vLLM sampling parameters and are sent when set.
* ``model.chat_template_kwargs`` (e.g. ``enable_thinking: false``) go out as vLLM's
  ``chat_template_kwargs`` request field.
* LoRA by name: with ``model.adapter_model`` set, requests name the adapter (as registered with
  ``vllm serve --enable-lora --lora-modules NAME=PATH``) instead of the base model.
"""

from __future__ import annotations

from typing import Any, ClassVar

from infermux.configs.generation_params import GenerationParams
from infermux.engines.capabilities import Capabilities
from infermux.engines.remote.openai.engine import OPENAI_PARAMS, RemoteInferenceEngine
from infermux.engines.remote.openai.providers import SAMPLE_PARAMS
from infermux.engines.seeds import VLLM_SEEDS, fold_seed

__all__ = ["RemoteVLLMInferenceEngine"]


class RemoteVLLMInferenceEngine(RemoteInferenceEngine):
    """A vLLM OpenAI-compatible server; the key is optional (``vllm serve --api-key``)."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        generation_params=OPENAI_PARAMS | SAMPLE_PARAMS | {"min_p", "stop_token_ids"},
        guided_decoding=frozenset({"json", "regex", "choice"}),
        images=True,
        lora=True,
        streaming=True,
        tools=True,
        batch_api=True,
    )
    requires_api_key = False
    default_num_workers = 32
    provider = "the vLLM server"

    def served_model_name(self) -> str:
        return self.model_params.adapter_model or self.model_params.model_name

    def extra_fields(self, generation: GenerationParams) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if generation.seed is not None:  # the server reads -1 as "no seed": map it (see engines/seeds.py)
            out["seed"] = fold_seed(generation.seed, *VLLM_SEEDS)
        if self.model_params.chat_template_kwargs:
            out["chat_template_kwargs"] = dict(self.model_params.chat_template_kwargs)
        guided = generation.guided_decoding
        if guided is not None and guided.kind == "regex":
            out["structured_outputs"] = {"regex": guided.regex}
        elif guided is not None and guided.kind == "choice":
            out["structured_outputs"] = {"choice": list(guided.choice or [])}
        return out
