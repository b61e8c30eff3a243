#!/usr/bin/env bash
# The whole pretraining phase on CPU with 2 ranks of DeepSpeed ZeRO-3, in about a minute:
# a tiny random LLaMA + tokenizer, shards from a small text, train, kill-safe, export.
#   OUT=outputs/pt_cpu_demo pretrain/scripts/cpu_demo.sh [key=value ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/pt_cpu_demo}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
"$PY" - "$OUT" <<'PYEOF'
import hashlib, sys
from pathlib import Path
import yaml
from engine.tiny import DEFAULT_TEXT, make_tiny_model
out = Path(sys.argv[1])
if not (out / "model" / "config.json").is_file():
    make_tiny_model(out / "model")
corpus = out / "corpus.txt"
corpus.write_text("\n".join(f"{i}: {t}" for i, t in enumerate(DEFAULT_TEXT)) + "\n", encoding="utf-8")
manifest = {"name": "cpu-demo", "holdout": {"fraction": 0.2, "salt": "demo"}, "sources": [{
    "name": "demo", "path": str(corpus.resolve()), "format": "txt", "language": "zh", "license": "CC0",
    "sha256": hashlib.sha256(corpus.read_bytes()).hexdigest(), "weight": 1.0}]}
(out / "manifest.yaml").write_text(yaml.safe_dump(manifest, allow_unicode=True), encoding="utf-8")
PYEOF
"$PY" -m pretrain prepare --manifest "$OUT/manifest.yaml" --tokenizer "$OUT/model" --block-size 32 \
  --out "$OUT/shards" --num-proc 1
"$(dirname "$PY")/torchrun" --nproc_per_node 2 -m pretrain train --config pretrain/configs/tiny_cpu.yaml \
  model.path="$OUT/model" data.dir="$OUT/shards" output_dir="$OUT/run" "$@"
echo "model: $OUT/run/final   curve: $OUT/run/loss_curve.png   metrics: $OUT/run/metrics.jsonl"
