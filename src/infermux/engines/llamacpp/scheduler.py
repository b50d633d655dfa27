"""One thread drives the LLAMACPP decoder; requests from any thread or event loop join it between steps.

Batch chunks, chat turns and concurrent server requests all go through :meth:`DecodeScheduler.submit`:
a request waits in an inbox until the decoder thread's next step, then takes a free slot beside the
sequences already generating (continuous batching). :meth:`DecodeScheduler.cancel` marks a request; the
decoder drops it at the next step and frees its slot.
"""

from __future__ import annotations

import functools
import queue
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from infermux.engines.llamacpp.decode import DecodeResult, MultiSequenceDecoder, Request, SamplingSpec
from infermux.engines.llamacpp.media import MediaPrompt, split_prompt
from infermux.engines.local.decoder_thread import DecoderThread

__all__ = ["DecodeScheduler"]


class DecodeScheduler(DecoderThread[Request]):
    """Owns ``decoder`` once started: only the scheduler's thread calls its methods."""

    def __init__(self, decoder: MultiSequenceDecoder) -> None:
        super().__init__("LLAMACPP")
        self.decoder = decoder

    def generate(
        self,
        prompts: Sequence[list[int] | MediaPrompt],
        max_new_tokens: int,
        spec: SamplingSpec,
        on_logits: Callable[[int, int, Any], None] | None = None,
    ) -> list[DecodeResult | Exception]:
        """Answer ``prompts`` (blocking); they share the decoder with whatever else is running.
        ``on_logits(prompt index, token, logits)`` sees every sampled token (log-probabilities)."""
        results: list[DecodeResult | Exception] = [RuntimeError("not run")] * len(prompts)
        for i, outcome in self.generate_each(prompts, max_new_tokens, spec, on_logits):
            results[i] = outcome
        return results

    def generate_each(
        self,
        prompts: Sequence[list[int] | MediaPrompt],
        max_new_tokens: int,
        spec: SamplingSpec,
        on_logits: Callable[[int, int, Any], None] | None = None,
    ) -> Iterator[tuple[int, DecodeResult | Exception]]:
        """:meth:`generate`, yielding ``(prompt index, result)`` as each sequence finishes (blocking)."""
        finished: queue.SimpleQueue[tuple[int, DecodeResult | Exception]] = queue.SimpleQueue()

        def done(outcome: DecodeResult | Exception, i: int) -> None:
            finished.put((i, outcome))

        for i, prompt in enumerate(prompts):
            logits = functools.partial(on_logits, i) if on_logits is not None else None
            keys, media = split_prompt(prompt)
            self.submit(
                Request(keys, max_new_tokens, spec, functools.partial(done, i=i), on_logits=logits, media=media)
            )
        for _ in prompts:
            yield finished.get()

    def _run(self) -> None:
        decoder = self.decoder
        while True:
            with self._wake:
                while not self._inbox and not decoder.busy and not self._closed:
                    self._wake.wait()
                if self._closed:
                    inbox, self._inbox = self._inbox, []
                    break
                inbox, self._inbox = self._inbox, []
            for request in inbox:
                decoder.submit(request)
            try:
                decoder.step()
            except Exception as exc:  # llama_decode failed: every request in flight fails with it
                decoder.fail_all(exc)
        closed = RuntimeError("the LLAMACPP engine was closed before this request finished")
        for request in inbox:
            MultiSequenceDecoder._done(request, closed)
        decoder.fail_all(closed)

    def close(self) -> None:
        super().close()
        self.decoder.close()
