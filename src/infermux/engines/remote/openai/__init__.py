"""The OpenAI chat-completions protocol family: the engine, its wire format and stream decoder, the
hosted providers, and OpenAI's Batch API."""
