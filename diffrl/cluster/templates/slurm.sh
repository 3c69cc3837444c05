#!/bin/bash
# diffrl job "@@{name}" on Slurm: a Ray head on the first node, Ray workers on the others, then `diffrl run`.
# Rendered by `@@{command}`.
# The job needs @@{summary}.
#   sbatch THIS_FILE            (from the directory the job file's relative paths start at)
# DIFFRL_ENV is the environment holding diffrl and cluster/requirements.txt, on storage every node sees.
# Security: Ray's ports listen on the nodes' addresses (the nodes must reach each other); a fresh Ray token per
# job (RAY_AUTH_MODE=token) keeps everyone else out. The dashboard listens on @@{dashboard_host} of the head node;
# reach it with `ssh -L 8265:127.0.0.1:8265 HEAD_NODE`.
@@{notes}#SBATCH --job-name=diffrl-@@{k8s_name}
#SBATCH --nodes=@@{nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=@@{cpus_per_node}
@@{sbatch_gpus}#SBATCH --time=24:00:00
#SBATCH --output=diffrl-@@{k8s_name}-%j.log
set -euo pipefail

source "${DIFFRL_ENV:-$HOME/diffrl/.venv}/bin/activate"
export HF_HUB_OFFLINE=1 WANDB_MODE="${WANDB_MODE:-offline}" RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE=token
RAY_AUTH_TOKEN="$(python -c 'import secrets; print(secrets.token_hex(32))')"
export RAY_AUTH_TOKEN

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_node=${nodes[0]}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address | awk '{print $1}')
export RAY_ADDRESS="$head_ip:6379"

ray_steps=()
stop_ray() {
  kill "${ray_steps[@]}" 2>/dev/null || true
  wait || true
}
trap stop_ray EXIT

srun --nodes=1 --ntasks=1 -w "$head_node" \
  ray start --head --block --node-ip-address="$head_ip" --port=6379 --dashboard-host=@@{dashboard_host} \
  --num-cpus="$SLURM_CPUS_PER_TASK"@@{num_gpus_flag} --disable-usage-stats &
ray_steps+=($!)
for node in "${nodes[@]:1}"; do
  srun --nodes=1 --ntasks=1 -w "$node" \
    ray start --block --address="$RAY_ADDRESS" --num-cpus="$SLURM_CPUS_PER_TASK"@@{num_gpus_flag} --disable-usage-stats &
  ray_steps+=($!)
done

python - "$RAY_ADDRESS" "$SLURM_JOB_NUM_NODES" <<'WAIT'
import sys, time
import ray
address, wanted = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 600
while True:
    try:
        ray.init(address=address, logging_level="ERROR")
        break
    except ConnectionError:
        if time.monotonic() > deadline:
            sys.exit(f"the Ray head at {address} did not come up in 600 s")
        time.sleep(5)
while (alive := sum(node["Alive"] for node in ray.nodes())) < wanted:
    if time.monotonic() > deadline:
        sys.exit(f"only {alive} of {wanted} Ray nodes joined in 600 s")
    time.sleep(5)
print(f"{alive} Ray nodes up at {address}")
WAIT

diffrl run @@{job_path}
