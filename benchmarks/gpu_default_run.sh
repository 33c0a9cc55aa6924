#!/usr/bin/env bash
# Sampler quality and data paths on one GPU, from a copy of the repository with the diffusers and datasets wheels installed:
# the default GPU command timed on its own (cold start included), its model's sampler quality and guidance sweep,
# the GPU tests, the recommended sampler's speed beside diffusers' pipelines, and the two training data paths.
# Everything lands in $OUT/results.tar (benchmarks/results/ files, logs) and a summary is printed last.
set -o pipefail
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."  # the repository root
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 || echo "editable install failed"
mkdir -p /tmp/logs
start=$(date +%s)
timeout 300 accelerate launch train_conditional.py --output_dir /tmp/default > /tmp/logs/default-train.log 2>&1
echo "rc $? whole default command: $(( $(date +%s) - start )) s (accelerate launch train_conditional.py)" | tee -a /tmp/logs/default-train.log
(timeout 200 python3 benchmarks/few_step_quality.py --models default=/tmp/default --classifier /tmp/classifier \
   --samplers ddpm-500 dpm++ fast ddim-50 dpmpp-2m-sde-20 --guidance_scales 0 1.5 2 3 5 \
   --output benchmarks/results/few-step-quality-h200-default > /tmp/logs/quality.log 2>&1; echo "quality rc $?" >> /tmp/logs/quality.log) &
timeout 240 python3 -m pytest -q -p no:cacheprovider -k "gpu or cuda" tests/test_training.py tests/test_data_paths.py \
  tests/test_fast_sampling.py tests/test_samplers.py > /tmp/logs/gpu-tests.log 2>&1
wait
# --only: the default and the documented compiled variant (with every compiled variant it ran past 5 minutes cold)
timeout 150 python3 benchmarks/bench_fast_sampling.py --batch_size 1000 --ddpm_steps 25 --ddim_steps 25 --compile \
  --only "pipeline UNet as is|torch.compile, bf16, channels_last$" \
  > /tmp/logs/fast-sampling.log 2>&1; echo "fast sampling rc $?" >> /tmp/logs/fast-sampling.log
timeout 150 python3 benchmarks/bench_data_paths.py > /tmp/logs/data-paths.log 2>&1; echo "data paths rc $?" >> /tmp/logs/data-paths.log
cp /tmp/default/samples.png /tmp/logs/default-samples.png 2>/dev/null
tar -cf $OUT/results.tar benchmarks/results /tmp/logs 2>/dev/null
grep -E "images/s|steady|first step|compile|capture" /tmp/logs/default-train.log | tail -6
tail -1 /tmp/logs/default-train.log; tail -3 /tmp/logs/gpu-tests.log
grep -A30 "^| model | sampler" benchmarks/results/few-step-quality-h200-default.md; tail -2 /tmp/logs/quality.log
tail -22 /tmp/logs/fast-sampling.log; tail -14 /tmp/logs/data-paths.log
