"""What the engines that run a model in this process (NATIVE, LLAMACPP, VLLM) share.

* :mod:`.decoder_thread`: the thread that owns a model's decoding, fed from any thread or event loop
  (continuous batching), and the adapters that hand its rows to a job as they finish.
* :mod:`.tool_prompting`: tool calling for engines that render the prompt and decode the text themselves.
* :mod:`.token_bytes`: a Hugging Face tokenizer's tokens as raw bytes, for token log-probabilities.

Chat templates (:mod:`infermux.templates`) and model names (:mod:`infermux.models`) sit lower, in the
configs layer, since ``--dry-run`` and ``infermux config check`` read them without an engine.
"""
