#!/usr/bin/env bash
# The README's first command: a real batch job and a one-shot chat on the embedded default model.
set -euo pipefail
PY=${1:-.venv/bin/python}
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
CONFIG=configs/examples/smollm2_llamacpp.yaml
mkdir -p out
rm -f out/demo_answers.jsonl

"$PY" scripts/check_first_answer.py --timeout 180

echo "== batch: configs/examples/conversations.jsonl -> out/demo_answers.jsonl (engine LLAMACPP, SmolLM2-135M-Instruct)"
"$PY" -m infermux infer -c "$CONFIG" \
    --input_path configs/examples/conversations.jsonl --output_path out/demo_answers.jsonl
"$PY" - <<'PYEOF'
import json
for line in open("out/demo_answers.jsonl", encoding="utf-8"):
    conv = json.loads(line)
    question = conv["messages"][-2]["content"]
    answer = conv["messages"][-1]["content"].strip().replace("\n", " ")
    print(f"  Q: {question}\n  A: {answer[:200]}\n")
PYEOF

echo "== one-shot chat: echo 'Tell me a fun fact about octopuses.' | infermux chat"
echo "Tell me a fun fact about octopuses." | "$PY" -m infermux chat -c "$CONFIG"
