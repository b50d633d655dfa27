"""StreamEvent: the typed usage of a final event."""

from infermux.engines.base import StreamEvent
from infermux.types import Conversation, Usage


def test_stream_event_usage() -> None:
    reply = Conversation.model_validate({"messages": [{"role": "user", "content": "hi"}]}).with_reply(
        "a", usage=Usage.of(2, 3)
    )
    final = StreamEvent(conversation=reply, metadata=dict(reply.metadata))
    assert final.usage == Usage.of(2, 3)
    assert StreamEvent(delta="x").usage is None
