#!/usr/bin/env bash
# Continued pretraining on one node with N GPUs (DeepSpeed launcher).
#   NUM_GPUS=8 pretrain/scripts/single_node.sh pretrain/configs/llama2_7b_8xA100.yaml \
#       model.path=outputs/llama2-7b-zh-resized data.dir=outputs/shards output_dir=outputs/pt-7b
# Kill it any time; the same command resumes from the latest complete checkpoint (resume: auto). On SIGTERM
# (kill, a scheduler's preemption) the ranks first save one after the step in progress, then exit 75.
# --no_local_rank: the settings come from the environment (LOCAL_RANK); `python -m pretrain`
# takes a command name first, not --local_rank.
set -euo pipefail
CONFIG=${1:?usage: single_node.sh CONFIG.yaml [key=value ...]}
shift
cd "$(dirname "$0")/../.."
exec deepspeed --no_local_rank --num_gpus "${NUM_GPUS:-8}" --module pretrain train --config "$CONFIG" "$@"
