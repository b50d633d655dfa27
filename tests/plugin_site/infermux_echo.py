"""A trivial engine for testing the batch loop and the plugin mechanism (not a stand-in for a model).

It answers "echo: <last message text>". Behaviour is steered by the text of the last message:
"FAIL" makes that row fail, and ``ECHO_DELAY`` (seconds, env) slows every chunk down.
"""

from __future__ import annotations

import asyncio
import os

from infermux.configs.generation_params import GenerationParams
from infermux.engines.base import InferenceEngine
from infermux.engines.capabilities import Capabilities
from infermux.errors import RowError
from infermux.types import Conversation


class EchoEngine(InferenceEngine):
    engine_type = "ECHO"
    capabilities = Capabilities(generation_params=frozenset({"temperature", "seed"}), streaming=False)

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.delay = float(os.environ.get("ECHO_DELAY", "0"))
        self.log = os.environ.get("ECHO_LOG")

    def max_concurrency(self) -> int:
        return int(self.model_params.model_kwargs.get("concurrency", 1))

    async def _infer_chunk(
        self, conversations: list[Conversation], generation: GenerationParams
    ) -> list[Conversation | RowError]:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        out: list[Conversation | RowError] = []
        for conv in conversations:
            text = conv.last_message.text
            if self.log:
                with open(self.log, "a", encoding="utf-8") as fh:
                    fh.write(text + "\n")
            if "FAIL" in text:
                out.append(RowError(kind="test_failure", message=f"asked to fail: {text}", retryable=False))
            else:
                usage = {"prompt_tokens": len(text.split()), "completion_tokens": 2}
                out.append(conv.with_reply(f"echo: {text}", {"usage": usage}))
        return out
