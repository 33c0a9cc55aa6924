"""The `hfdiff` command: what to do with a trained model.

    hfdiff sample sprite-model --per_class 8 --output samples.png           # a grid, one labelled row per class
    hfdiff sample sprite-model --sampler ddpm                                 # the course's DDPM over every step
    hfdiff sample sprite-model --class_names hero food --scheduler ddim --num_inference_steps 25
    hfdiff visualize all --model sprite-model --output_dir pictures          # every picture (PNG, GIF)
    hfdiff visualize schedules --output_dir docs                             # the model-free ones need no --model
    hfdiff train-classifier --output_dir sprite-model/classifier              # the metrics' classifier (< 1 min, CPU)
    hfdiff evaluate sprite-model --per_class 100                              # accuracy + Fréchet distance vs floor
    hfdiff evaluate digits-model --train_data_dir digits                      # a model trained on an image folder
    hfdiff report sprite-model --output_dir report --per_class 20 --steps 10 25 50 100 full
    hfdiff sample text-model --prompt "a green slime monster" --prompt "a small emerald blob" --guidance_scale 3
    hfdiff evaluate text-model --guidance_scales 1 3 --held_out kind=slime,colour=purple   # does it follow the text?
    hfdiff demo sprite-model --port 7860                                      # a web page to try it (hfdiff[demo])

`evaluate` and `report` use the classifier in --classifier (default: MODEL/classifier); when there is none they
train one on the real data (procedural sprites, --npy_images/--npy_labels, or the model's training data through the
training loader: --train_data_dir or --dataset_name, at the model's size) and save it there for next time. A sprite
classifier scores a model of a whole multiple of its size (--preset sprite-64) on average-pooled images.
`evaluate` on a text model (one with a text encoder) samples prompts instead of classes and also uses the attribute
classifier in --attribute_classifier (default: MODEL/attribute_classifier, trained there when missing).
Every subcommand is a thin layer over hfdiff.visualize and hfdiff.evaluate, whose functions take the same options.
Sampling defaults to the recommended sampler (--sampler dpm++: DPM-Solver++ 2M SDE, 25 steps, guidance 1.5 on models
with a context), built by hfdiff.samplers.with_sampler exactly as Python and the demo build it; --num_inference_steps,
--guidance_scale and --eta override its recipe. On a CPU each command takes as many threads as there are free cores
(hfdiff.cpu_threads, as training does).
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import sys

from hfdiff.errors import OneLineErrorParser
from hfdiff.extras import is_missing_extra
from hfdiff.pipeline_loading import load_pipeline
from hfdiff.samplers import RECOMMENDED, REPORT_SAMPLERS, SAMPLERS

PICTURES = {  # name -> (file written, needs a model)
    "samples": ("samples.png", True),
    "forward": ("forward_process.png", False),
    "denoising": ("denoising.gif", True),
    "extra-noise": ("extra_noise.png", True),
    "samplers": ("ddpm_vs_ddim.png", True),
    "schedules": ("schedules.png", False),
    "embedding": ("timestep_embedding.png", False),
    "mixtures": ("mixtures.png", True),
}


SAMPLING_COMMANDS = ("sample", "visualize", "evaluate", "report")  # on a CPU: threads from the free cores


class UserError(Exception):
    """A mistake in the command line, reported as one line instead of a traceback."""


def sampling_pipeline(args):
    """The model of `args.model` with the sampler asked for: a name in hfdiff.samplers (`with_sampler`: its
    scheduler and recipe), or "model" for the scheduler and recipe saved with the model."""
    from hfdiff.samplers import with_sampler

    pipe = load_pipeline(args.model, args.device)
    return pipe if args.scheduler == "model" else with_sampler(pipe, args.scheduler)


def _generator(args):
    import torch

    return torch.Generator("cpu").manual_seed(args.seed)  # CPU: the same pictures on every device


def _sampling_kwargs(args) -> dict:
    """The pipeline call's sampling keywords; None leaves one to the pipeline's recipe (`sampling_defaults`)."""
    return {
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "eta": args.eta,
        "extra_noise": not args.no_extra_noise,
    }


# ----------------------------------------------------------------------------------------------------------------
# Subcommands
# ----------------------------------------------------------------------------------------------------------------


def _is_text_model(pipe) -> bool:
    return getattr(pipe, "text_encoder", None) is not None


def _check_conditioning(args, pipe) -> None:
    """--prompt for text models, --class_names for class models: one line naming the fix otherwise."""
    prompts = getattr(args, "prompt", None)
    if _is_text_model(pipe) and args.class_names:
        raise UserError(f"{args.model} is a text model: describe the rows with --prompt \"a green slime\" instead of "
                        "--class_names.")  # fmt: skip
    if not _is_text_model(pipe) and prompts:
        raise UserError(f"{args.model} has no text encoder, so it takes no --prompt: use --class_names, or a model "
                        "trained with --conditioning text.")  # fmt: skip
    if getattr(args, "negative_prompt", None) is not None and not prompts:
        raise UserError("--negative_prompt needs --prompt (the text to guide towards).")


def prompt_grid(pipe, prompts, negative_prompt=None, num_images_per_prompt=8, scale=None, **sampling):
    """A sample grid with a row per prompt, each row labelled with its prompt."""
    from hfdiff.visualize import SCALE, labelled_rows, upscale

    images = pipe(
        prompt=list(prompts),
        negative_prompt=negative_prompt,
        num_images_per_prompt=num_images_per_prompt,
        **sampling,
    ).images
    images = upscale(images, scale or SCALE)
    n = num_images_per_prompt
    return labelled_rows([images[r * n : (r + 1) * n] for r in range(len(prompts))], list(prompts))


def cmd_sample(args) -> None:
    from hfdiff.visualize import class_grid

    pipe = sampling_pipeline(args)
    _check_conditioning(args, pipe)
    if _is_text_model(pipe):
        if not args.prompt:
            raise UserError(f'{args.model} is a text model: give one or more --prompt "..." (a row each).')
        grid = prompt_grid(
            pipe,
            args.prompt,
            negative_prompt=[args.negative_prompt] * len(args.prompt) if args.negative_prompt is not None else None,
            num_images_per_prompt=args.num_images_per_prompt or args.per_class,
            generator=_generator(args),
            **_sampling_kwargs(args),
        )
    else:
        grid = class_grid(
            pipe,
            per_class=args.per_class,
            class_names=args.class_names,
            generator=_generator(args),
            **_sampling_kwargs(args),
        )
    _makedirs_for(args.output)
    grid.save(args.output)
    print(f"wrote {args.output}")


def make_picture(name: str, args, pipe=None) -> str:
    """Draw picture `name` (a key of PICTURES) into args.output_dir; returns the path written."""
    from hfdiff import visualize as vis

    path = os.path.join(args.output_dir, PICTURES[name][0])
    generator = _generator(args)
    sampling = _sampling_kwargs(args)
    if name == "schedules":
        image = vis.schedule_curves(pipe.scheduler if pipe is not None else None)
    elif name == "embedding":
        if pipe is not None:
            unet, steps = pipe.unet, pipe.scheduler.config.num_train_timesteps
        else:
            from hfdiff.models import ContextUNet2DModel

            unet, steps = ContextUNet2DModel.from_preset("sprite-small"), 500
        image = vis.timestep_embedding_heatmap(unet, steps)
    elif name == "forward":
        image = vis.forward_process_strip(
            vis.sprite_image(args.class_name or "hero", seed=args.seed),
            pipe.scheduler if pipe is not None else None,
            timesteps=args.timesteps,
            generator=generator,
        )
    elif name == "samples":
        image = vis.class_grid(
            pipe, per_class=args.per_class, class_names=args.class_names, generator=generator, **sampling
        )
    elif name == "denoising":
        frames = vis.denoising_frames(pipe, class_labels=args.class_names, generator=generator, **sampling)
        return vis.save_gif(frames, path)
    elif name == "extra-noise":
        image = vis.extra_noise_comparison(
            pipe,
            per_class=min(args.per_class, 4),
            class_names=args.class_names,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            generator=generator,
        )
    elif name == "samplers":
        image = vis.sampler_comparison(
            pipe,
            per_class=min(args.per_class, 4),
            class_names=args.class_names,
            num_inference_steps=args.ddim_steps,
            eta=args.eta,
            guidance_scale=args.guidance_scale,
            generator=generator,
        )
    else:  # "mixtures"
        image = vis.context_mixture_grid(pipe, per_mixture=args.per_class, generator=generator, **sampling)
    image.save(path)
    return path


def cmd_visualize(args) -> None:
    names = list(PICTURES) if args.what == "all" else [args.what]
    pipe = sampling_pipeline(args) if args.model else None
    os.makedirs(args.output_dir, exist_ok=True)
    for name in names:
        if PICTURES[name][1] and pipe is None:
            if args.what != "all":
                raise UserError(f"`hfdiff visualize {name}` draws samples: pass --model with a pipeline folder.")
            print(f"skipped {name} (needs --model)")
            continue
        try:
            print(f"wrote {make_picture(name, args, pipe)}")
        except (ValueError, ImportError) as error:
            if args.what != "all" or (isinstance(error, ImportError) and not is_missing_extra(error)):
                raise
            print(f"skipped {name}: {error}")  # mixtures of an unconditional model; plots without matplotlib


def model_real_data(args, pipe, count: int):
    """`real_data` for scoring `pipe`: a folder or set is read at the model's size (unless --resolution says
    otherwise) and must have the model's class names."""
    from hfdiff import evaluate as ev

    size = pipe.unet.config.sample_size
    real = real_data(args, count, model_size=size if isinstance(size, int) else None)
    if args.train_data_dir or args.dataset_name:
        ev.check_class_names(real, pipe.class_names)
    return real


def real_data(args, count: int = 0, model_size: int | None = None):
    """The real images: an image folder or `datasets` set (through the training loader, at --resolution, default the
    model's `model_size`), the course .npy files, else procedural sprites (at least `count` held out)."""
    from hfdiff import evaluate as ev

    given = [flag for flag in ("train_data_dir", "dataset_name", "npy_images") if getattr(args, flag)]
    if len(given) > 1:
        raise UserError(f"Choose one real data source; got {', '.join('--' + flag for flag in given)}.")
    if args.train_data_dir or args.dataset_name:
        return ev.real_training_data(
            train_data_dir=args.train_data_dir,
            dataset_name=args.dataset_name,
            image_column=args.image_column,
            label_column=args.label_column,
            resolution=args.resolution or model_size,
            center_crop=args.center_crop,
        )  # one fixed shuffle, so that evaluate holds out the images a train-classifier run held out
    if args.resolution is not None:
        raise UserError("--resolution applies to --train_data_dir or --dataset_name; pass one of them.")
    if args.npy_images or args.npy_labels:
        if not (args.npy_images and args.npy_labels):
            raise UserError("Pass both --npy_images and --npy_labels (or neither, for procedural sprites).")
        return ev.real_npy(args.npy_images, args.npy_labels)
    return ev.real_sprites(num_train=max(args.num_train_images, count), num_heldout=max(5_000, count))


def get_classifier(args, real):
    """args.classifier (default MODEL/classifier); trained on `real` and saved there when it does not exist yet."""
    from hfdiff import evaluate as ev

    folder = args.classifier or os.path.join(args.model, "classifier")
    ev.check_classifier_data(folder, real)
    trained_on = ev.classifier_trained_on(folder)
    if trained_on is not None:
        print(f"classifier: {folder} (trained on {trained_on or 'unknown data'})")
        return ev.load_classifier(folder, args.device)
    print(f"classifier: none in {folder}; training one on {real.description}")
    classifier = ev.train_classifier_on(real, epochs=args.classifier_epochs, device=args.device)
    ev.save_classifier(classifier, folder)
    return classifier


def cmd_train_classifier(args) -> None:
    from hfdiff import evaluate as ev
    from hfdiff import evaluate_text as et

    if args.attributes:
        probe, accuracy = et.train_attribute_classifier_on_sprites(
            num_train=args.num_train_images, epochs=args.attribute_epochs, device=args.device
        )
        et.save_attribute_classifier(probe, args.output_dir, f"{args.num_train_images} procedural sprites", accuracy)
        shown = ", ".join(f"{head} {value:.1%}" for head, value in accuracy.items())
        print(f"held-out accuracy: {shown}; wrote {args.output_dir}")
        return
    real = real_data(args)
    classifier = ev.train_classifier_on(real, epochs=args.classifier_epochs, device=args.device)
    predicted, _ = classifier.predict(real.heldout_images)
    accuracy = ev.conditional_accuracy(predicted, real.heldout_labels, real.class_names)["accuracy"]
    ev.save_classifier(classifier, args.output_dir)
    print(f"held-out accuracy {accuracy:.1%}; wrote {args.output_dir}")


def get_attribute_classifier(args):
    """args.attribute_classifier (default MODEL/attribute_classifier), trained on procedural sprites and saved there
    when missing; returns (probe, its held-out accuracy per head)."""
    from hfdiff import evaluate_text as et

    folder = args.attribute_classifier or os.path.join(args.model, "attribute_classifier")
    if os.path.isfile(os.path.join(folder, et.ATTRIBUTE_CLASSIFIER_CONFIG)):
        print(f"attribute classifier: {folder}")
        return et.load_attribute_classifier(folder, args.device)
    print(f"attribute classifier: none in {folder}; training one on {args.num_train_images} procedural sprites")
    probe, accuracy = et.train_attribute_classifier_on_sprites(
        num_train=args.num_train_images, epochs=args.attribute_epochs, device=args.device
    )
    et.save_attribute_classifier(probe, folder, f"{args.num_train_images} procedural sprites (seed 0)", accuracy)
    return probe, accuracy


def held_out_combinations(args) -> list[str | dict]:
    """--held_out, else what training left out: the "holdout" of the training configuration that
    train_conditional.py writes into the model card (MODEL/README.md), or of MODEL/training_config.json."""
    if args.held_out:
        return args.held_out
    config = {}
    json_path, card_path = os.path.join(args.model, "training_config.json"), os.path.join(args.model, "README.md")
    if os.path.isfile(json_path):
        with open(json_path, encoding="utf-8") as f:
            config = json.load(f)
    elif os.path.isfile(card_path):
        with open(card_path, encoding="utf-8") as f:
            found = re.search(r"## Training configuration\s*```json\n(.*?)\n```", f.read(), re.DOTALL)
        config = json.loads(found.group(1)) if found else {}
    held_out = config.get("holdout") or []
    if held_out:
        print(f"held-out combinations from the training configuration: {'; '.join(map(str, held_out))}")
    return list(held_out)


def evaluate_text_model(args, pipe) -> dict:
    """Class and named-attribute accuracy of captions, plain prompts, unseen words, held-out combinations and
    paraphrases (hfdiff.evaluate_text)."""
    from hfdiff import evaluate_text as et

    classifier = get_classifier(args, real_data(args))
    probe, probe_accuracy = get_attribute_classifier(args)
    metrics = et.evaluate_text_pipeline(
        pipe,
        classifier,
        probe,
        guidance_scales=args.guidance_scales,
        prompts_per_class=args.prompts_per_class,
        images_per_prompt=args.images_per_prompt,
        held_out=held_out_combinations(args),
        per_held_out=args.per_held_out,
        batch_size=args.batch_size,
        num_inference_steps=args.num_inference_steps,
        seed=args.seed,
    )
    metrics["attribute_classifier_accuracy"] = probe_accuracy
    print(et.text_report_markdown(metrics, probe_accuracy))
    return metrics


def cmd_evaluate(args) -> None:
    from hfdiff import evaluate as ev

    pipe = sampling_pipeline(args)
    if _is_text_model(pipe):
        _write_json(evaluate_text_model(args, pipe), args.output)
        return
    if args.held_out:
        raise UserError(f"--held_out is for text models, and {args.model} has no text encoder.")
    count = args.per_class * (pipe.unet.config.context_dim or 5)
    real = model_real_data(args, pipe, count)
    classifier = get_classifier(args, real)
    # refuse a size the classifier cannot score before sampling, not after
    ev.pool_factor(pipe.unet.config.sample_size, classifier)
    metrics = ev.evaluate_pipeline(
        pipe,
        classifier,
        real,
        per_class=args.per_class,
        batch_size=args.batch_size,
        generator=_generator(args),
        standard=True,
        **_sampling_kwargs(args),
    )
    print(ev.format_metrics(metrics))
    _write_json(metrics, args.output)


def _write_json(metrics: dict, path: str | None) -> None:
    if path:
        _makedirs_for(path)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2)
        print(f"wrote {path}")


def cmd_report(args) -> None:
    from hfdiff import evaluate as ev
    from hfdiff.visualize import require_matplotlib

    require_matplotlib()  # report.png needs it: say so before minutes of sampling, not after

    steps = [None if s == "full" else _positive_int(s, "--steps") for s in args.steps]  # before the slow parts
    pipe = load_pipeline(args.model, args.device)
    ev.resolve_steps(steps, pipe.scheduler.config.num_train_timesteps)
    count = args.per_class * (pipe.unet.config.context_dim or 5)
    real = model_real_data(args, pipe, count)
    classifier = get_classifier(args, real)
    rows = ev.ddpm_vs_ddim(
        pipe,
        classifier,
        real,
        steps=steps,
        samplers=args.samplers,
        per_class=args.per_class,
        batch_size=args.batch_size,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
    )
    paths = ev.write_report(
        rows, args.output_dir, title=f"DDPM vs DDIM: {os.path.basename(os.path.normpath(args.model))}"
    )
    print(ev.report_markdown(rows))
    print("wrote " + ", ".join(paths.values()))


def cmd_demo(args) -> None:
    from hfdiff.demo import serve

    if args.max_batch < 1:
        raise UserError(f"--max_batch takes a positive number of images, got {args.max_batch}.")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port takes a port number 0..65535, got {args.port}.")
    serve(args.model, host=args.host, port=args.port, max_batch=args.max_batch, device=args.device)


def _positive_int(text: str, flag: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{flag} takes positive step counts or 'full', got {text!r}.")
    return int(text)


def _makedirs_for(path: str) -> None:
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)


# ----------------------------------------------------------------------------------------------------------------
# Argument parsing
# ----------------------------------------------------------------------------------------------------------------


def _add_sampling(parser: argparse.ArgumentParser, scheduler_choice: bool = True) -> None:
    group = parser.add_argument_group("sampling")
    if scheduler_choice:
        group.add_argument(
            "--sampler",
            "--scheduler",
            dest="scheduler",
            choices=("model", *SAMPLERS),
            default=RECOMMENDED,
            help="A named sampler on the model's schedule, with its steps and guidance (hfdiff.samplers): dpm++ "
            "(the default: diffusers' DPM-Solver++ 2M SDE on 25 steps at guidance 1.5), fast (DDPM on 25 strided "
            "steps), ddpm (the course's DDPM over every step), ddim (50 steps); or model, the scheduler and recipe "
            "saved with the model.",
        )
        group.add_argument(
            "--num_inference_steps",
            type=int,
            default=None,
            help="Denoising steps; default: the sampler's (dpm++ 25, fast 25, ddpm every step, ddim 50).",
        )
        group.add_argument(
            "--eta", type=float, default=None, help="DDIM's noise scale: 0 deterministic, 1 DDPM-like; default 0."
        )
        group.add_argument(
            "--no_extra_noise", action="store_true", help="DDPM without the sigma_t z term (the blurry-mean demo)."
        )
    group.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help="Classifier-free guidance w, 1 = none; default: the sampler's (dpm++ 1.5, the others 1) on a model with "
        "a context, 1 on an unconditional one.",
    )
    group.add_argument("--seed", type=int, default=0, help="Seed of the starting noise and every step's noise.")
    group.add_argument("--device", default=None, help="Torch device; default cuda when available, else cpu.")


def _add_real_data(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("real data (classifier training and the Fréchet reference)")
    group.add_argument("--npy_images", default=None, help="The course's sprites .npy (N, 16, 16, 3) uint8.")
    group.add_argument("--npy_labels", default=None, help="The course's labels .npy (N, 5) one-hot.")
    group.add_argument(
        "--train_data_dir",
        default=None,
        help="An image folder, one sub-folder per class (as training takes it); read by the training loader.",
    )
    group.add_argument(
        "--dataset_name", default=None, help="A `datasets` Hub id or save_to_disk folder (as training takes it)."
    )
    group.add_argument("--image_column", default="image", help="Column of --dataset_name holding the images.")
    group.add_argument("--label_column", default="label", help="Column of --dataset_name holding the class labels.")
    group.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="Resize --train_data_dir/--dataset_name images to this square size, as training's --resolution; "
        "evaluate's default is the model's image size.",
    )
    group.add_argument(
        "--center_crop",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="With --resolution: centre crop before resizing, as training (on by default there too).",
    )
    group.add_argument(
        "--num_train_images", type=int, default=20_000, help="Procedural sprites to train the classifier on."
    )
    group.add_argument("--classifier_epochs", type=int, default=3, help="Epochs when a classifier is trained.")
    group.add_argument(
        "--attribute_epochs", type=int, default=4, help="Epochs when an attribute classifier is trained."
    )


def _add_classifier(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--classifier",
        default=None,
        help="Folder of a classifier from train-classifier; default MODEL/classifier (trained there if missing).",
    )
    parser.add_argument("--batch_size", type=int, default=250, help="Images generated per pipeline call.")
    _add_real_data(parser)


def _add_sample_command(commands) -> None:
    sample = commands.add_parser("sample", help="Sample a grid with a row per class (PNG).")
    sample.add_argument("model", help="Pipeline folder (train_conditional.py --output_dir) or Hub repo id.")
    sample.add_argument("--class_names", nargs="+", default=None, help="Rows to draw (names or indices); default all.")
    sample.add_argument("--per_class", type=int, default=8, help="Images per row.")
    sample.add_argument("--output", default="samples.png", help="PNG file to write.")
    sample.add_argument(
        "--prompt", action="append", default=None, help="Text models: a row of this prompt (repeat for more rows)."
    )
    sample.add_argument("--negative_prompt", default=None, help="Text models: guide away from this text.")
    sample.add_argument(
        "--num_images_per_prompt", type=int, default=None, help="Text models: images per row; default --per_class."
    )
    _add_sampling(sample)
    sample.set_defaults(func=cmd_sample)


def _add_visualize_command(commands) -> None:
    visualize = commands.add_parser(
        "visualize",
        help="Draw pictures: samples, forward process, denoising GIF, sampler comparisons, schedules, ...",
        description="Pictures (file written): "
        + ", ".join(f"{name} ({file})" for name, (file, _) in PICTURES.items())
        + ". schedules, embedding and forward need no model; 'all' draws every picture it can.",
    )
    visualize.add_argument("what", choices=[*PICTURES, "all"], help="Which picture; 'all' for every one.")
    visualize.add_argument("--model", default=None, help="Pipeline folder; needed by the pictures that sample.")
    visualize.add_argument("--output_dir", default="pictures", help="Folder the pictures are written to.")
    visualize.add_argument("--class_names", nargs="+", default=None, help="Rows / GIF images; default every class.")
    visualize.add_argument("--class_name", default="hero", help="Procedural sprite class of the forward strip.")
    visualize.add_argument("--per_class", type=int, default=8, help="Images per row (comparisons use at most 4).")
    visualize.add_argument("--timesteps", type=int, nargs="+", default=None, help="t values of the forward strip.")
    visualize.add_argument(
        "--ddim_steps", type=int, default=None, help="DDIM steps of the DDPM-vs-DDIM picture; default 25."
    )
    _add_sampling(visualize)
    visualize.set_defaults(func=cmd_visualize)


def _add_train_classifier_command(commands) -> None:
    train = commands.add_parser("train-classifier", help="Train the small classifier the metrics use (safetensors).")
    train.add_argument("--output_dir", required=True, help="Folder for classifier.safetensors + its config.")
    train.add_argument("--device", default=None, help="Torch device; default cuda when available, else cpu.")
    train.add_argument(
        "--attributes",
        action="store_true",
        help="Train the attribute classifier (class, kind, colour) that text evaluation uses, on procedural sprites.",
    )
    _add_real_data(train)
    train.set_defaults(func=cmd_train_classifier)


def _add_evaluate_command(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="Conditional accuracy and Fréchet distance (vs the real floor).")
    evaluate.add_argument("model", help="Pipeline folder or Hub repo id.")
    evaluate.add_argument("--per_class", type=int, default=100, help="Images generated per class.")
    evaluate.add_argument("--output", default=None, help="Also write the metrics to this JSON file.")
    text = evaluate.add_argument_group("text models")
    text.add_argument("--guidance_scales", type=float, nargs="+", default=[1.0, 3.0], help="Guidance w per row.")
    text.add_argument("--prompts_per_class", type=int, default=20, help="Generator captions per class.")
    text.add_argument("--images_per_prompt", type=int, default=5, help="Images sampled per prompt.")
    text.add_argument(
        "--held_out",
        nargs="+",
        default=None,
        help="Combinations training left out, as KEY=VALUE[,KEY=VALUE] (e.g. kind=slime,colour=purple); default: "
        "the --holdout of the model's training configuration (in its model card).",
    )
    text.add_argument("--per_held_out", type=int, default=20, help="Prompts per held-out combination.")
    text.add_argument(
        "--attribute_classifier",
        default=None,
        help="Folder of an attribute classifier; default MODEL/attribute_classifier (trained there if missing).",
    )
    _add_classifier(evaluate)
    _add_sampling(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)


def _add_report_command(commands) -> None:
    report = commands.add_parser("report", help="DDPM vs DDIM: steps x sampler, time and metrics (md + PNG).")
    report.add_argument("model", help="Pipeline folder or Hub repo id.")
    report.add_argument("--output_dir", default="report", help="Folder for report.md, report.json, report.png.")
    report.add_argument(
        "--steps", nargs="+", default=["10", "25", "50", "100", "full"], help="Step counts; 'full' = T steps."
    )
    report.add_argument(
        "--samplers",
        nargs="+",
        default=list(REPORT_SAMPLERS),
        choices=list(REPORT_SAMPLERS),
        help="Samplers to compare (quote the names): the recommended one beside the course's DDPM and DDIM; each at "
        "its own guidance (dpm++ 1.5, the others 1) unless --guidance_scale is given.",
    )
    report.add_argument("--per_class", type=int, default=50, help="Images generated per class and row.")
    _add_classifier(report)
    _add_sampling(report, scheduler_choice=False)
    report.set_defaults(func=cmd_report)


def _add_demo_command(commands) -> None:
    demo = commands.add_parser("demo", help="Serve a web page to try the model (Gradio; pip install hfdiff[demo]).")
    demo.add_argument("model", help="Pipeline folder (train_conditional.py --output_dir) or Hub repo id.")
    demo.add_argument("--host", default="127.0.0.1", help="Address to listen on; 0.0.0.0 for every interface.")
    demo.add_argument("--port", type=int, default=7860, help="Port to listen on.")
    demo.add_argument("--max_batch", type=int, default=64, help="Most images one request may ask for.")
    demo.add_argument("--device", default=None, help="Where to sample, e.g. cpu or cuda; default cuda if available.")
    demo.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="hfdiff", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in (
        _add_sample_command,
        _add_visualize_command,
        _add_train_classifier_command,
        _add_evaluate_command,
        _add_report_command,
        _add_demo_command,
    ):
        add_command(commands)
    return parser


# Ranges of the numeric flags, by argparse dest: (whether a value is allowed, the range in words). Checked with the
# device and the output folders before any model is loaded. Upper bounds keep one request in proportion: a grid row
# is one pipeline call (MAX_GRID_ROW images), evaluate and report sample in batches of --batch_size.
MAX_GRID_ROW = 256
MAX_IMAGES_PER_CLASS = 100_000
MAX_BATCH = 65_536


def _whole(low: int, high: int):
    return lambda value: low <= value <= high


def _finite(low: float, high: float):
    return lambda value: math.isfinite(value) and low <= value <= high


NUMERIC_FLAGS = {
    "per_class": (_whole(1, MAX_GRID_ROW), f"a whole number from 1 to {MAX_GRID_ROW} (images per row)"),
    "num_images_per_prompt": (_whole(1, MAX_GRID_ROW), f"a whole number from 1 to {MAX_GRID_ROW}"),
    "num_inference_steps": (_whole(1, 100_000), "a whole number of steps >= 1"),
    "eta": (_finite(0.0, 1.0), "a number in [0, 1] (0 deterministic DDIM, 1 DDPM-like)"),
    "guidance_scale": (_finite(0.0, 1000.0), "a number from 0 to 1000 (1 = no guidance; 2 to 7 are usual)"),
    "guidance_scales": (_finite(0.0, 1000.0), "numbers from 0 to 1000 (1 = no guidance; 2 to 7 are usual)"),
    "seed": (_whole(0, 2**63 - 1), "a whole number from 0 to 2**63 - 1"),
    "batch_size": (_whole(1, MAX_BATCH), f"a whole number from 1 to {MAX_BATCH:,}"),
    "num_train_images": (_whole(1, 5_000_000), "a whole number from 1 to 5,000,000"),
    "resolution": (_whole(1, 4096), "a whole number of pixels from 1 to 4096"),
    "classifier_epochs": (_whole(1, 10_000), "a whole number from 1 to 10,000"),
    "attribute_epochs": (_whole(1, 10_000), "a whole number from 1 to 10,000"),
    "prompts_per_class": (_whole(1, MAX_IMAGES_PER_CLASS), f"a whole number from 1 to {MAX_IMAGES_PER_CLASS:,}"),
    "images_per_prompt": (_whole(1, MAX_IMAGES_PER_CLASS), f"a whole number from 1 to {MAX_IMAGES_PER_CLASS:,}"),
    "per_held_out": (_whole(1, MAX_IMAGES_PER_CLASS), f"a whole number from 1 to {MAX_IMAGES_PER_CLASS:,}"),
    "timesteps": (_whole(0, 100_000), "timesteps t from 0 to the schedule's T - 1"),
    "ddim_steps": (_whole(1, 100_000), "a whole number of steps >= 1"),
    "max_batch": (_whole(1, MAX_BATCH), f"a whole number from 1 to {MAX_BATCH:,}"),
    "port": (_whole(0, 65535), "a port number from 0 to 65535"),
}
# evaluate and report sample --per_class images of each class in batches, not one grid row
_SAMPLED_IN_BATCHES = ("evaluate", "report")


def check_numbers(args) -> None:
    """Every numeric flag given to this command within NUMERIC_FLAGS' range, as one line naming flag and value."""
    for dest, (ok, words) in NUMERIC_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if dest == "per_class" and args.command in _SAMPLED_IN_BATCHES:
            ok, words = _whole(1, MAX_IMAGES_PER_CLASS), f"a whole number from 1 to {MAX_IMAGES_PER_CLASS:,}"
        for item in value if isinstance(value, list) else [value]:
            if not ok(item):
                raise UserError(f"--{dest} must be {words}; got {item!r}.")


def check_device(args) -> None:
    """--device: a torch device name this machine has, or None (cuda when available, else cpu, filled in here)."""
    if not hasattr(args, "device"):
        return
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
        return
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {args.device!r} is not a torch device; pass cpu, cuda, cuda:1 or mps.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: torch sees no CUDA GPU here; pass --device cpu (or leave it out).")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(
            f"--device {args.device}: there are {torch.cuda.device_count()} CUDA GPU(s), numbered from 0; pass one."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {args.device}: MPS is not available here; pass --device cpu (or leave it out).")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {args.device}: hfdiff samples on cpu, cuda or mps; pass one of them.")


def check_outputs(args) -> None:
    """The files and folders this command writes can be written, before any sampling: --output's folder and
    --output_dir (not `visualize`'s pictures only, which are cheap)."""
    from hfdiff.training.config import check_name_lengths, check_output_dir

    output = getattr(args, "output", None)
    if output:
        if os.path.isdir(output):
            raise UserError(f"--output {output} is a folder; pass a file name, e.g. {os.path.join(output, 'x')}.")
        check_output_dir(os.path.dirname(os.path.abspath(output)), flag=f"--output {output}: the folder")
        check_name_lengths(os.path.abspath(output), "--output")
    if getattr(args, "output_dir", None) is not None:
        check_output_dir(args.output_dir, flag="--output_dir")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "device", "") is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.command in SAMPLING_COMMANDS and str(args.device).startswith("cpu"):
        from hfdiff.cpu_threads import use_free_cores

        print(use_free_cores())
    try:
        check_numbers(args)
        check_device(args)
        check_outputs(args)
        args.func(args)
    except (UserError, ValueError, FileNotFoundError, PermissionError, ImportError) as error:
        if isinstance(error, ImportError) and not is_missing_extra(error):
            raise
        print(f"hfdiff {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except OSError as error:  # the machine, not hfdiff: a file system that turned read-only or full part-way
        if error.errno not in WRITE_ERRNOS:
            raise
        where = f" ({error.filename})" if error.filename else ""
        print(f"hfdiff {args.command}: error: could not write{where}: {error.strerror}; free space or pass another "
              "--output/--output_dir.", file=sys.stderr)  # fmt: skip
        return 2
    return 0


# Errors of writing a result, reported as one line: read-only file system, no permission, disk or quota full.
WRITE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG)


if __name__ == "__main__":
    sys.exit(main())
