#!/usr/bin/env bash
# Run the same short chain of runs with two checkouts and compare their metrics event by event:
#   experiments/refactor_check/same_losses.sh OLD_REPO NEW_REPO PRETRAINED_RUN OUT
# pretraining (50 steps), SFT on addition from PRETRAINED_RUN (50 steps), GRPO and PPO (adaptive KL) from that SFT
# run (50 and 20 rollouts, partial-credit reward so groups have reward spread). Same seeds everywhere.
set -euo pipefail
OLD=$(realpath "$1"); NEW=$(realpath "$2"); PT=$(realpath "$3"); OUT=$(realpath -m "$4")
PY=${PY:-python}
chain() {  # REPO DIR
  local repo=$1 dir=$2
  mkdir -p "$dir"; cd "$repo"
  local q="--config.train.progress=False --config.train.log_every=1"
  local small="--config.objective.eval_examples=50 --config.objective.pass_prompts=10"
  $PY launch.py --config=configs/pretrain_shakespeare.py $q --workdir="$dir/pt" --config.train.steps=50 \
    --config.eval.every=25 --config.eval.sample_tokens=20 > "$dir/pt.log" 2>&1
  $PY launch.py --config=configs/sft_addition.py $q --workdir="$dir/sft" --config.checkpoint.init_from="$PT" \
    --config.train.steps=50 --config.eval.every=25 $small > "$dir/sft.log" 2>&1
  $PY launch.py --config=configs/pg_addition.py $q --workdir="$dir/grpo" --config.checkpoint.init_from="$dir/sft" \
    --config.train.steps=50 --config.eval.every=25 $small --config.objective.rewards=task:1,digits:0.5 > "$dir/grpo.log" 2>&1
  $PY launch.py --config=configs/pg_addition_ppo.py $q --workdir="$dir/ppo" --config.checkpoint.init_from="$dir/sft" \
    --config.train.steps=20 --config.eval.every=20 $small --config.objective.rewards=task:1,digits:0.5 \
    --config.objective.kl_target=0.05 --config.objective.kl_horizon=100 > "$dir/ppo.log" 2>&1
}
chain "$OLD" "$OUT/old"
chain "$NEW" "$OUT/new"
$PY "$(dirname "$(realpath "$0")")/compare.py" "$OUT/old" "$OUT/new"
