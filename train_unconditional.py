"""Train an unconditional diffusion model (no context; labels, if the data has any, are ignored).

    # the embedded procedural sprites, defaults sized for the machine (CPU: ~5 min on 2 cores; GPU: course scale)
    accelerate launch train_unconditional.py --output_dir sprite-model-uncond
    python train_unconditional.py --output_dir sprite-model-uncond           # the same, without the launcher

    # several GPUs (DDP)
    accelerate launch --multi_gpu --num_processes 4 train_unconditional.py --output_dir sprite-model-uncond

    # the course's sprites file (no labels needed)
    accelerate launch train_unconditional.py --sprites_npy sprites_1788_16x16.npy --num_epochs 32

    # an image folder (any layout), resized once at load time
    accelerate launch train_unconditional.py --train_data_dir my_images --resolution 32

    # a datasets Hub id (or a save_to_disk folder)
    accelerate launch train_unconditional.py --dataset_name huggan/smithsonian_butterflies_subset --resolution 32 \\
        --preset sprite-base

    # continue a run where it stopped
    accelerate launch train_unconditional.py --output_dir sprite-model-uncond --resume_from_checkpoint latest

The result is a pipeline folder: SpriteDiffusionPipeline.from_pretrained("sprite-model-uncond"), with samples.png.
All flags: python train_unconditional.py --help.
"""

import sys

from hfdiff.training import configure_script_logging, parse_config, train
from hfdiff.training.script import run_training_script


def main(argv=None):
    config = parse_config(argv, description=__doc__)
    configure_script_logging()
    train(config, conditional=False)


if __name__ == "__main__":
    sys.exit(run_training_script(main))
