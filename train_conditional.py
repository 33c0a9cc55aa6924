"""Train a class-conditional sprite diffusion model (one-hot class context, context dropout for guidance).

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

    # continue a run where it stopped
    accelerate launch train_conditional.py --output_dir sprite-model --resume_from_checkpoint latest

The result is a pipeline folder: SpriteDiffusionPipeline.from_pretrained("sprite-model"), with samples.png beside it.
All flags: python train_conditional.py --help.
"""

from hfdiff.training import configure_script_logging, parse_config, train


def main(argv=None):
    config = parse_config(argv, description=__doc__)
    configure_script_logging()
    train(config, conditional=True)


if __name__ == "__main__":
    main()
