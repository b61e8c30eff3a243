#!/usr/bin/env bash
# SFT end to end on CPU (2 ranks, ZeRO-3): train LoRA + embeddings on the staged Chinese instruction
# manifest, merge, answer BELLE eval questions, chat once. Numbers, not quality: the model is tiny.
#   bash sft/scripts/cpu_demo.sh                 # builds a tiny model whose tokenizer fits the data
#   MODEL=outputs/tiny_pt/final STEPS=200 bash sft/scripts/cpu_demo.sh
# Settings are in sft/configs/zh_alpaca_demo_cpu.yaml; this script only chains the four commands.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
TORCHRUN=${TORCHRUN:-$(dirname "$PY")/torchrun}
OUT=${OUT:-outputs/sft_demo}
STEPS=${STEPS:-60}
LIMIT=${LIMIT:-40}
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false

MODEL=${MODEL:-}
if [ -z "$MODEL" ]; then  # a random 2-layer LLaMA with a 4k-piece tokenizer trained on the SFT text
  MODEL=$OUT/tiny_model
  [ -f "$MODEL/config.json" ] || "$PY" - "$OUT" <<'PYEOF'
import json, sys
from engine.tiny import make_tiny_model, make_tiny_tokenizer
out = sys.argv[1]
records = json.load(open("../shared/data/sft/alpaca_zh_demo.json", encoding="utf-8"))
texts = [r["instruction"] + "\n" + r["input"] + "\n" + r["output"] for r in records]
make_tiny_model(f"{out}/tiny_model", make_tiny_tokenizer(f"{out}/tiny_tok", texts, vocab_size=4000), hidden=64)
PYEOF
fi

"$TORCHRUN" --nproc_per_node 2 --master_port "${PORT:-29531}" -m sft train \
  --config sft/configs/zh_alpaca_demo_cpu.yaml model.path="$MODEL" output_dir="$OUT/run" \
  schedule.max_steps="$STEPS" eval.every_steps=0 checkpoint.every_steps=0 logging.wandb=disabled
"$PY" -m sft export --base "$MODEL" --adapter "$OUT/run" --out "$OUT/merged" --overwrite
"$PY" -m sft generate --model "$OUT/merged" --input ../shared/data/sft/belle_eval_set.json \
  --out "$OUT/belle_predictions.jsonl" --limit "$LIMIT" --batch-size 8 --max-new-tokens 48
printf '你好，请介绍一下你自己。\n/exit\n' | "$PY" -m sft chat --model "$OUT/merged" --max-new-tokens 32
