"""The chat's history and slash commands, without a terminal or a model."""

from __future__ import annotations

import json
from pathlib import Path

from infermux.cli.chat_session import CHAT_PRESET, ChatSession, chat_preset, join_continuations, parse_assignments
from infermux.configs.generation_params import GenerationParams
from infermux.jobs.rows import iter_rows, validate_file
from infermux.types import Role, Type


def make(**kwargs: object) -> ChatSession:
    return ChatSession(GenerationParams(max_new_tokens=32), engine_name="LLAMACPP", model_name="m", **kwargs)  # type: ignore[arg-type]


def test_history_grows_turn_by_turn_with_the_system_prompt_first() -> None:
    session = make(system_prompt="Be brief.")
    first = session.ask("Hi, I am Ada.")
    assert [m.role for m in first.messages] == [Role.SYSTEM, Role.USER]
    session.answered("Hello Ada.")
    second = session.ask("What is my name?")
    assert [m.text for m in second.messages] == ["Be brief.", "Hi, I am Ada.", "Hello Ada.", "What is my name?"]


def test_withdraw_forgets_an_unanswered_question_only() -> None:
    session = make()
    session.ask("one")
    session.answered("1")
    session.ask("two")
    session.withdraw()
    session.withdraw()  # the last message is now an answer: kept
    assert [m.text for m in session.messages()] == ["one", "1"]


def test_reset_clears_turns_but_keeps_system_prompt_and_params() -> None:
    session = make(system_prompt="sys")
    session.run("/params temperature=0.5")
    session.ask("x")
    session.answered("y")
    old_id = session.conversation_id
    assert "cleared" in session.run("/reset").text
    assert [m.text for m in session.messages()] == ["sys"]
    assert session.generation.temperature == 0.5
    assert session.conversation_id != old_id


def test_system_command_shows_sets_and_removes() -> None:
    session = make()
    assert session.run("/system").text == "no system prompt."
    session.run("/system You are a pirate.")
    assert session.messages()[0].text == "You are a pirate."
    assert "pirate" in session.run("/system").text
    session.run("/system -")
    assert session.messages() == []


def test_image_goes_to_the_next_turn_only(tmp_path: Path) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    session = make()
    assert not session.run(f"/image {image}").error
    asked = session.ask("What is this?")
    content = asked.last_message.content
    assert isinstance(content, list)
    assert [i.type for i in content] == [Type.IMAGE_PATH, Type.TEXT]
    session.answered("A cat.")
    assert isinstance(session.ask("And now?").last_message.content, str)


def test_image_errors_are_clear(tmp_path: Path) -> None:
    assert "no image file" in make().run(f"/image {tmp_path / 'missing.png'}").text
    refused = make(accepts_images=False).run("/image https://example.com/cat.png")
    assert refused.error and "does not accept images" in refused.text
    session = make(accepts_images=False, images=["https://example.com/a.png"])
    assert session.notices == ["LLAMACPP does not accept images; https://example.com/a.png is not sent."]
    assert make(images=["https://example.com/a.png"]).pending_images[0].type == Type.IMAGE_URL


def test_save_writes_conversation_jsonl_that_batch_mode_reads(tmp_path: Path) -> None:
    session = make(system_prompt="sys")
    session.ask("q1")
    session.answered("a1")
    target = tmp_path / "sub" / "chat.jsonl"
    result = session.run(f"/save {target}")
    assert not result.error and "3 messages" in result.text
    assert validate_file(str(target))
    (row,) = list(iter_rows(str(target)))
    assert [m.text for m in row.conversation.messages] == ["sys", "q1", "a1"]
    assert json.loads(target.read_text())["metadata"] == {"engine": "LLAMACPP", "model": "m"}


def test_save_refuses_empty_and_unwritable(tmp_path: Path) -> None:
    assert make().run(f"/save {tmp_path / 'x.jsonl'}").text == "nothing to save yet."
    session = make()
    session.ask("q")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert session.run(f"/save {blocker / 'x.jsonl'}").error


def test_params_show_change_and_reject() -> None:
    session = make(supported_params={"max_new_tokens", "temperature"})
    assert "max_new_tokens=32" in session.run("/params").text
    changed = session.run("/params temperature=0.7 top_p=0.9")
    assert session.generation.temperature == 0.7 and session.generation.top_p == 0.9
    assert "ignores top_p" in changed.text
    assert session.generation.max_new_tokens == 32  # untouched fields are kept
    bad = session.run("/params temperatur=1")
    assert bad.error and "did you mean 'temperature'" in bad.text
    out_of_range = session.run("/params top_p=3")
    assert out_of_range.error and "top_p" in out_of_range.text
    assert session.generation.top_p == 0.9


def test_parse_assignments_types_values() -> None:
    assert parse_assignments("max_new_tokens=5 stop_strings='[a, b]' seed=null") == {
        "max_new_tokens": 5,
        "stop_strings": ["a", "b"],
        "seed": None,
    }


def test_commands_exit_unknown_and_literal_slash() -> None:
    session = make()
    assert session.run("/exit").exit and session.run("/quit").exit
    assert session.run("/nope").error
    assert "/reset" in session.run("/help").text
    assert not session.is_command("//etc/hosts is a file")
    assert session.message_text("//etc/hosts is a file") == "/etc/hosts is a file"


def test_join_continuations() -> None:
    assert join_continuations(["first \\", "second\\", "third"]) == "first \nsecond\nthird"


def test_piped_lines_become_turns() -> None:
    from infermux.cli.chat_cmd import _turns

    lines = ["a\n", "b \\\n", "c\r\n", "   \n", "last\\\n"]
    assert list(_turns(lines)) == ["a", "b \nc", "last"]


def test_chat_preset_fills_what_the_engine_supports_and_the_user_left_unset() -> None:
    supported = {"max_new_tokens", "temperature", "top_p", "frequency_penalty"}
    assert CHAT_PRESET == {"temperature": 0.7, "top_p": 0.9, "frequency_penalty": 0.3}
    assert chat_preset(GenerationParams(), supported, "LLAMACPP") == CHAT_PRESET
    assert chat_preset(GenerationParams(temperature=0.0), supported, "LLAMACPP") == {
        "top_p": 0.9,
        "frequency_penalty": 0.3,
    }
    assert chat_preset(GenerationParams(), {"temperature", "top_p"}, "GEMINI") == {"temperature": 0.7, "top_p": 0.9}
    # Recent Claude models refuse temperature together with top_p.
    assert chat_preset(GenerationParams(), {"temperature", "top_p", "stop_strings"}, "ANTHROPIC") == {
        "temperature": 0.7
    }


def test_params_shows_the_preset_and_it_can_be_overridden() -> None:
    session = make(preset=chat_preset(GenerationParams(max_new_tokens=32), {"temperature", "top_p"}, "LLAMACPP"))
    shown = session.run("/params").text
    assert "temperature=0.7  top_p=0.9" in shown and "max_new_tokens=32" in shown
    assert "chat preset, as no config was given: temperature, top_p" in shown
    session.run("/params temperature=0")
    assert session.generation.temperature == 0.0 and session.generation.top_p == 0.9
    assert "chat preset, as no config was given: top_p;" in session.run("/params").text
    session.run("/params top_p=1")
    assert "chat preset" not in session.run("/params").text
    assert "chat preset" not in make().run("/params").text  # a config was given: no preset


def test_tool_results_answer_the_waiting_calls_then_the_model_goes_on() -> None:
    from infermux.types import FunctionCall, Message, Tool, ToolCall

    weather = Tool.model_validate({"type": "function", "function": {"name": "get_weather"}})
    session = make(tools=[weather])
    assert session.ask("Weather in Oslo and Rome?").tools == [weather]
    assert session.run("/tool 5 C").error  # nothing is waiting yet
    calls = [ToolCall(id=f"c{n}", function=FunctionCall(name="get_weather", arguments={"city": c}))
             for n, c in enumerate(("Oslo", "Rome"))]  # fmt: skip
    session.answered(Message(role=Role.ASSISTANT, content=None, tool_calls=calls))
    assert session.unanswered_calls() == ["c0", "c1"]
    first = session.run("/tool c1 25 C")  # by id
    assert not first.ask and "1 more" in first.text
    last = session.run("/tool -3 C")  # the oldest one still waiting
    assert last.ask and session.unanswered_calls() == []
    pending = session.pending()
    assert [(m.role, m.tool_call_id, m.text) for m in pending.messages[-2:]] == [
        (Role.TOOL, "c1", "25 C"),
        (Role.TOOL, "c0", "-3 C"),
    ]
    assert pending.tools == [weather] and pending.messages[1].tool_calls == calls


def test_a_pdf_becomes_one_image_per_page(tmp_path: Path) -> None:
    """``/image doc.pdf`` and ``chat --image doc.pdf`` attach each page as a PNG (pypdfium2, the pdf extra)."""
    import io

    import pytest

    pdfium = pytest.importorskip("pypdfium2")
    document = pdfium.PdfDocument.new()
    for width in (72, 144):
        document.new_page(width, 72)
    out = io.BytesIO()
    document.save(out)
    pdf = tmp_path / "doc.pdf"
    pdf.write_bytes(out.getvalue())
    session = make()
    assert session.run(f"/image {pdf}").text == "image attached to your next message (2 waiting)."
    content = session.ask("Summarise.").last_message.content
    assert isinstance(content, list)
    assert [i.type for i in content] == [Type.IMAGE_BINARY, Type.IMAGE_BINARY, Type.TEXT]
    assert all(i.binary and i.binary.startswith(b"\x89PNG") for i in content[:2])
    assert len(make(images=[str(pdf)]).pending_images) == 2
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.7 cut short")
    refused = make().run(f"/image {broken}")
    assert refused.error and "not a readable PDF" in refused.text
