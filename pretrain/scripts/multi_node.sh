#!/usr/bin/env bash
# Continued pretraining on several nodes (DeepSpeed launcher over passwordless ssh, shared filesystem).
#   HOSTFILE=hosts.txt pretrain/scripts/multi_node.sh pretrain/configs/llama2_7b_8xA100.yaml \
#       batch.global_batch_size=512 model.path=... data.dir=... output_dir=/shared/outputs/pt-7b
# hosts.txt, one line per node:   node1 slots=8
# output_dir must be on a filesystem all nodes see (checkpoints are written by every rank).
# Without ssh (SLURM etc.), run on every node instead:
#   torchrun --nnodes $NNODES --node_rank $NODE_RANK --nproc_per_node 8 \
#            --rdzv_backend c10d --rdzv_endpoint $MASTER_ADDR:29500 -m pretrain train --config CONFIG ...
set -euo pipefail
CONFIG=${1:?usage: HOSTFILE=hosts.txt multi_node.sh CONFIG.yaml [key=value ...]}
shift
HOSTFILE=${HOSTFILE:?set HOSTFILE to a file with lines like: node1 slots=8}
# Check the hostfile here: the launcher's own errors about it are easy to miss in multi-node logs.
if [[ ! -s "$HOSTFILE" ]]; then
  echo "error: hostfile $HOSTFILE does not exist or is empty (one line per node: 'node1 slots=8')" >&2
  exit 2
fi
lineno=0
while IFS= read -r line || [[ -n "$line" ]]; do
  lineno=$((lineno + 1))
  line=${line%%#*}
  [[ -z "${line// }" ]] && continue
  if ! [[ "$line" =~ ^[[:space:]]*[^[:space:]]+[[:space:]]+slots=[1-9][0-9]*[[:space:]]*$ ]]; then
    echo "error: $HOSTFILE line $lineno: expected 'HOSTNAME slots=N', got '$line'" >&2
    exit 2
  fi
done < "$HOSTFILE"
cd "$(dirname "$0")/../.."
MASTER_ADDR=${MASTER_ADDR:-$(awk '!/^[[:space:]]*(#|$)/ {print $1; exit}' "$HOSTFILE")}
exec deepspeed --no_local_rank --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" \
  --module pretrain train --config "$CONFIG" "$@"
