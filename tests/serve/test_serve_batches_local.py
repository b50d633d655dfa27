"""The Batch API of ``infermux serve`` on the default model (LLAMACPP): a 200-row openai-SDK batch that is
killed (``kill -9``) midway, resumed by a restarted server, and answers every row exactly once, while an
interactive request is answered during the batch."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.serve.running import serve
from tests.serve.test_serve_batches import CHAT, results, wait

openai = pytest.importorskip("openai")
pytest.importorskip("llama_cpp")

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
ROWS = 200


def test_default_model_batch_survives_kill_9_and_answers_each_row_once(tmp_path: Path) -> None:
    body = {"model": MODEL, "max_tokens": 4, "temperature": 0}
    lines = [
        {"custom_id": f"n{i}", "method": "POST", "url": CHAT,
         "body": {**body, "messages": [{"role": "user", "content": f"Say the number {i}."}]}}
        for i in range(ROWS)
    ]  # fmt: skip
    data = ("\n".join(json.dumps(line) for line in lines) + "\n").encode()
    args = ("--batch-dir", str(tmp_path / "batches"))
    with serve(*args) as served:
        client = openai.OpenAI(base_url=served.api, api_key="unused", max_retries=0, timeout=300)
        file_id = client.files.create(file=("numbers.jsonl", data), purpose="batch").id
        batch_id = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h").id
        wait(client, batch_id, lambda b: b.request_counts.completed >= 20, timeout=240)
        started = time.monotonic()
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hello!"}], max_tokens=4, temperature=0
        )
        assert reply.choices[0].message.content and time.monotonic() - started < 60  # not behind 180 batch rows
        served.kill()
    with serve(*args) as served:
        client = openai.OpenAI(base_url=served.api, api_key="unused", max_retries=0, timeout=300)
        assert client.batches.retrieve(batch_id).status in ("in_progress", "completed")  # picked up, not restarted
        batch = wait(client, batch_id, timeout=280)
        assert batch.status == "completed" and batch.request_counts.completed == ROWS, batch
        out = results(client, batch.output_file_id)
        assert sorted(r["custom_id"] for r in out) == sorted(f"n{i}" for i in range(ROWS))
        assert all(r["response"]["body"]["choices"][0]["message"]["content"] for r in out)
