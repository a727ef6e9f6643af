#!/usr/bin/env bash
# fmlab-train under torchrun, on one machine or several. Extra arguments are Hydra overrides.
#
#   One machine, every GPU (DDP; TRAINER=fsdp for sharded training):
#     bash scripts/torchrun.sh model=small
#   Two machines with 8 GPUs each; run the same line on both (node0 hosts the rendezvous):
#     NNODES=2 NPROC=8 MASTER=node0:29500 RDZV_ID=exp42 TRAINER=fsdp bash scripts/torchrun.sh model=1b
#
# Environment:
#   NNODES        machines (default 1)
#   NPROC         processes per machine = devices (default: visible GPUs, or 1 without a GPU)
#   MASTER        host:port of the c10d rendezvous, on one of the machines (default localhost:0,
#                 one machine: a free port)
#   RDZV_ID       id of this launch, the same on every machine (default: SLURM_JOB_ID if set;
#                 required for NNODES > 1). All ranks write into one run directory,
#                 logs/train/runs/torchrun-<RDZV_ID>; launching again with the same id continues
#                 that run from its newest checkpoint (resume=auto).
#   TRAINER       trainer preset: ddp (default), fsdp, deepspeed (GPU); ddp runs on CPUs too
#   MAX_RESTARTS  torchrun restarts all workers after a failure, up to this many times (default
#                 0); each restart resumes from the newest checkpoint of the same run directory
#   PYTHON        interpreter (default: python)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
NNODES=${NNODES:-1}
NPROC=${NPROC:-$("$PY" -c 'import torch; print(torch.cuda.device_count() or 1)')}
MASTER=${MASTER:-localhost:0}
RDZV_ID=${RDZV_ID:-${SLURM_JOB_ID:-}}
TRAINER=${TRAINER:-ddp}

if [ "$NNODES" -gt 1 ] && [ -z "$RDZV_ID" ]; then
  echo "scripts/torchrun.sh: NNODES=$NNODES needs RDZV_ID (the same on every machine)" >&2
  exit 2
fi
if [ "$NNODES" -gt 1 ] && [ "${MASTER##*:}" = "0" ]; then
  echo "scripts/torchrun.sh: NNODES=$NNODES needs MASTER=<host of one machine>:<port>" >&2
  exit 2
fi

args=(--nnodes "$NNODES" --nproc-per-node "$NPROC" --max-restarts "${MAX_RESTARTS:-0}"
      --rdzv-backend c10d --rdzv-endpoint "$MASTER")
# without --rdzv-id (one machine), fmlab names the run directory by the launch's start time
[ -n "$RDZV_ID" ] && args+=(--rdzv-id "$RDZV_ID")

exec "$PY" -m torch.distributed.run "${args[@]}" -m fmlab.train \
  trainer="$TRAINER" trainer.devices="$NPROC" trainer.num_nodes="$NNODES" "$@"
