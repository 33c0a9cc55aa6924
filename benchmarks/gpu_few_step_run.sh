#!/usr/bin/env bash
# Few-step sampling on one GPU: train recipe variants with the default GPU command (in parallel on the one GPU: their speed is
# not what is measured here) and score each with benchmarks/few_step_quality.py. Run from a copy of the repository
# with the diffusers and datasets wheels installed; results and the trained pipelines go to $OUT.
#   VARIANTS="course=  vzsnr=--prediction_type=v_prediction,--rescale_betas_zero_snr"  (label=comma-separated flags)
#   EPOCHS=32 (or --num_epochs=N among a variant's flags) SAMPLERS="ddpm-500 ddim-50 ..." SCALES="0 1 2 3 5" PER_CLASS=200
# MODELS="label=folder ..." skips training and scores those folders.
set -o pipefail
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."  # the repository root
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 || echo "editable install failed"
models="$MODELS"
if [ -z "$models" ]; then
  pids=()
  for variant in $VARIANTS; do
    label=${variant%%=*}; flags=${variant#*=}
    (start=$(date +%s)
     timeout 420 accelerate launch train_conditional.py --output_dir /tmp/models/$label ${EPOCHS:+--num_epochs $EPOCHS} \
       --checkpointing_steps 0 ${flags//,/ } > $OUT/train-$label.log 2>&1
     echo "rc $? whole command $(( $(date +%s) - start )) s: accelerate launch train_conditional.py ${EPOCHS:+--num_epochs $EPOCHS} ${flags//,/ }" >> $OUT/train-$label.log) &
    pids+=($!)
    models="$models $label=/tmp/models/$label"
  done
  wait "${pids[@]}"
  for variant in $VARIANTS; do label=${variant%%=*}; tail -2 $OUT/train-$label.log; done
  # the pipelines travel back as one file (what comes back from the device is a few files, two folders deep)
  tar -C /tmp/models -cf $OUT/models.tar --exclude=checkpoint-* --exclude=logs --exclude=validation .
fi
timeout ${EVAL_TIMEOUT:-300} python3 benchmarks/few_step_quality.py --models $models --per_class ${PER_CLASS:-200} \
  --classifier /tmp/classifier --output $OUT/${NAME:-few-step-quality} \
  ${SAMPLERS:+--samplers $SAMPLERS} ${SCALES:+--guidance_scales $SCALES} 2>&1 | grep -v Warning | tail -60
