#!/usr/bin/env bash
# DrasCLR pretraining on one machine with several GPUs (or CPU processes), via torchrun + DDP.
#
#   pretrain/torchrun_single_node.sh CONFIG CACHE RUN_DIR [NPROC] [-- extra drasclr pretrain args]
#
#   pretrain/torchrun_single_node.sh configs/drasclr.yaml /data/cache runs/full 4
#   pretrain/torchrun_single_node.sh configs/drasclr_demo.yaml /data/cache runs/cpu2 2 -- --set train.device=cpu
#
# NPROC defaults to the number of visible GPUs (1 without GPUs). train.batch_size is per process,
# so the global batch is NPROC x batch_size and the learning rate scales with it. A run folder
# that already holds checkpoints/last.pt is resumed. Ctrl-C (or SIGTERM) checkpoints and stops;
# run the same command again to continue.
set -euo pipefail

if [[ $# -lt 3 ]]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
config=$1 cache=$2 run_dir=$3
shift 3
if [[ $# -gt 0 && $1 != "--" ]]; then
    nproc=$1
    shift
else
    nproc=$(python -c "import torch; print(max(1, torch.cuda.device_count()))")
fi
[[ $# -gt 0 && $1 == "--" ]] && shift

resume=()
[[ -f "$run_dir/checkpoints/last.pt" ]] && resume=(--resume)

# One OpenMP thread per process unless set: several processes sharing the cores otherwise
# oversubscribe them (data loading has its own worker processes).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

exec torchrun --standalone --nnodes 1 --nproc_per_node "$nproc" \
    -m drasclr_monailabel.cli.main pretrain \
    --config "$config" --cache "$cache" --out "$run_dir" "${resume[@]}" "$@"
