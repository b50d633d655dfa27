"""Tiny real LoRA adapters for tests, made with peft on the default model's Hugging Face folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Random (non-zero) LoRA weights on the attention q/v projections: enough to change greedy answers.
# Built in a child process so the test process does not keep a transformers model in memory.
_MAKE_LORA = """
import sys, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
config = LoraConfig(r=int(sys.argv[3]), lora_alpha=32, target_modules=["q_proj", "v_proj"],
                    init_lora_weights=False, task_type="CAUSAL_LM")
get_peft_model(model, config).save_pretrained(sys.argv[2])
"""


def make_tiny_lora(out: str | Path, *, base: str | Path | None = None, rank: int = 8) -> Path:
    """Write a rank-``rank`` LoRA adapter for ``base`` (default: the default model's folder) to ``out``."""
    if base is None:
        from infermux.models.default import hf_folder

        base = hf_folder()
    subprocess.run([sys.executable, "-c", _MAKE_LORA, str(base), str(out), str(rank)], check=True, timeout=300)
    return Path(out)
