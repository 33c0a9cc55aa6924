"""Pieces shared by the sprite DDPM and DDIM schedulers: the model-output parameterisations and config checks.

Imports only torch and diffusers, so the scheduler modules can travel as stand-alone code next to a saved pipeline (they reach this
file through a relative import, which diffusers' remote-code loader copies along).
"""

import torch
from diffusers.configuration_utils import FrozenDict

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")

# Schedules diffusers' DDPMScheduler builds itself; the sprite DDIM accepts the same ones so that a DDPM config can be
# swapped to DDIM with `from_config` ("laplace" is built by DDPMScheduler but left out of its documented list).
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

# The longest forward chain a sprite scheduler builds: 100x diffusers' usual T = 1000. The schedule's tensors are
# T long, and a config with T = 10**9 would allocate gigabytes before any other check.
MAX_NUM_TRAIN_TIMESTEPS = 100_000


def check_config_limits(config: dict, source: str) -> None:
    """Refuse a scheduler config (a dict of arguments, as scheduler_config.json holds them) whose sizes or values
    cannot give a usable schedule, in microseconds and before any tensor is built: T outside
    1..MAX_NUM_TRAIN_TIMESTEPS, trained_betas of another length than T, a clip or threshold bound that is not a finite
    number > 0. `source` names the config in the error."""

    def refuse(entry: str, value, expected: str) -> None:
        shown = f"a list of {len(value)} values" if isinstance(value, (list, tuple)) else repr(value)
        raise ValueError(
            f"{source}: {entry}={shown} is not usable ({expected}). The config is damaged or was edited: fix the "
            "entry, or save the scheduler again."
        )

    def is_number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    steps = config.get("num_train_timesteps", 1000)
    if not (isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= MAX_NUM_TRAIN_TIMESTEPS):
        refuse("num_train_timesteps", steps, f"a whole number from 1 to {MAX_NUM_TRAIN_TIMESTEPS:,}")
    trained = config.get("trained_betas")
    if trained is not None:
        if not isinstance(trained, (list, tuple)) or len(trained) != steps:
            refuse("trained_betas", trained, f"one beta per step: num_train_timesteps={steps} of them")
        if not all(is_number(beta) for beta in trained):
            refuse("trained_betas", trained, "numbers only")
    for entry in ("clip_sample_range", "sample_max_value"):
        value = config.get(entry, 1.0)
        if not (is_number(value) and value > 0 and value < float("inf")):  # NaN fails the comparisons
            refuse(entry, value, "a finite number > 0; 1.0 is the data range [-1, 1]")
    ratio = config.get("dynamic_thresholding_ratio", 0.995)
    if not (is_number(ratio) and 0 < ratio <= 1):
        refuse("dynamic_thresholding_ratio", ratio, "a quantile in (0, 1]")
    offset = config.get("steps_offset", 0)
    if not (isinstance(offset, int) and not isinstance(offset, bool) and 0 <= offset < steps):
        refuse("steps_offset", offset, f"a whole number from 0 to num_train_timesteps - 1 = {steps - 1}")


def check_choice(cls_name: str, name: str, value, choices) -> None:
    """Raise a ValueError naming the argument, the value given and the values allowed."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{cls_name}: {name}={value!r} is not supported; choose one of {allowed}.")


def init_arguments(arguments: dict) -> dict:
    """The arguments of a scheduler's `__init__`, from its `locals()` on entry (without `self`): the explicit
    parameter list that `register_to_config` needs is written once, in the signature, and handed on whole."""
    return {name: value for name, value in arguments.items() if name not in ("self", "__class__")}


def check_choices(cls_name: str, config: dict, variance_types=None) -> None:
    """Refuse a prediction type, variance type (DDPM's), timestep spacing or beta schedule the step does not know,
    before the parent's `__init__` builds anything; and sizes and ranges out of bounds (`check_config_limits`)."""
    betas = config["trained_betas"]
    limited = (
        "num_train_timesteps",
        "clip_sample_range",
        "sample_max_value",
        "dynamic_thresholding_ratio",
        "steps_offset",
    )
    check_config_limits(
        {
            **{key: config[key] for key in limited},
            "trained_betas": None if betas is None else torch.as_tensor(betas).tolist(),
        },
        cls_name,
    )
    check_choice(cls_name, "prediction_type", config["prediction_type"], PREDICTION_TYPES)
    if variance_types is not None:
        check_choice(cls_name, "variance_type", config["variance_type"], variance_types)
    check_choice(cls_name, "timestep_spacing", config["timestep_spacing"], TIMESTEP_SPACINGS)
    if config["trained_betas"] is None:
        check_choice(cls_name, "beta_schedule", config["beta_schedule"], BETA_SCHEDULES)


def finish_init(scheduler, config: dict) -> None:
    """After the parent's `__init__`: check the betas it built (`check_betas`), and keep every config value.

    diffusers marks arguments left at their default so that `OtherScheduler.from_config(config)` uses ITS defaults for
    them. Sprite defaults differ from the parents' (T = 500 against 1000), and a model trained with T = 500 sampled
    with T = 1000 gives noise, so every value of a sprite config travels with it."""
    check_betas(type(scheduler).__name__, scheduler.betas, **config)
    internal = scheduler._internal_dict
    scheduler._internal_dict = FrozenDict({k: v for k, v in internal.items() if k != "_use_default_values"})


def check_betas(cls_name: str, betas: torch.Tensor, **config) -> None:
    """Refuse a schedule with a beta_t outside (0, 1): a noise variance of 0 or less, 1 or more, NaN or inf gives an
    abar_t that is negative, zero or NaN, and NaN samples (black images, with no error). `config`: the scheduler
    arguments the betas were built from. rescale_betas_zero_snr sets beta_T = 1 (abar_T = 0) on purpose: the last may
    be 1 there."""
    upper_ok = betas < 1
    if config["rescale_betas_zero_snr"]:
        upper_ok[-1] = betas[-1] <= 1
    bad = ~((betas > 0) & upper_ok)  # NaN fails both comparisons
    if not bad.any():
        return
    first = int(bad.nonzero()[0])
    if config["trained_betas"] is not None:
        source, fix = "trained_betas", "give trained_betas that are all finite and in (0, 1)"
    else:
        source = ", ".join(f"{key}={config[key]!r}" for key in ("beta_schedule", "beta_start", "beta_end"))
        fix = "use finite 0 < beta_start <= beta_end < 1 (the sprite schedule: beta_start=0.0001, beta_end=0.02)"
    raise ValueError(
        f"{cls_name}: {int(bad.sum())} of the {len(betas)} betas built from {source} are outside (0, 1) (first: "
        f"beta_{first + 1} = {betas[first].item():.6g}); each beta_t is a noise variance, and one outside (0, 1) gives "
        f"NaN or meaningless samples. {fix[0].upper() + fix[1:]}."
    )


def x0_and_eps_from_model_output(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_bar_t: torch.Tensor,
    prediction_type: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn what the network predicts into (x0_hat, eps_hat) at noise level abar_t.

    All three follow from the forward process x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4):
    - "epsilon": the network gives eps; x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (Ho et al. eq. 15,
      Song et al. 2021 eq. 12 "predicted x_0").
    - "sample": the network gives x_0; eps_hat = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t).
    - "v_prediction": the network gives v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, sec. 4);
      with x_t above, x0_hat = sqrt(abar_t) x_t - sqrt(1 - abar_t) v and
      eps_hat = sqrt(abar_t) v + sqrt(1 - abar_t) x_t.

    model_output, sample: (B, C, H, W); alpha_bar_t: a 0-dim tensor. The operations run in the same order as
    diffusers' schedulers, so results agree with them bit for bit in float32.
    """
    sqrt_alpha_bar_t = alpha_bar_t**0.5
    sqrt_one_minus_alpha_bar_t = (1 - alpha_bar_t) ** 0.5
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (sample - sqrt_one_minus_alpha_bar_t * eps) / sqrt_alpha_bar_t
    elif prediction_type == "sample":
        x0 = model_output
        eps = (sample - sqrt_alpha_bar_t * x0) / sqrt_one_minus_alpha_bar_t
    elif prediction_type == "v_prediction":
        x0 = sqrt_alpha_bar_t * sample - sqrt_one_minus_alpha_bar_t * model_output
        eps = sqrt_alpha_bar_t * model_output + sqrt_one_minus_alpha_bar_t * sample
    else:
        allowed = ", ".join(repr(c) for c in PREDICTION_TYPES)
        raise ValueError(
            f"prediction_type={prediction_type!r} is not supported; choose one of {allowed} (what the network was "
            "trained to predict: the noise, the clean image, or v)."
        )
    return x0, eps


def add_sprite_compatibles(cls, diffusers_compatibles: list, root: type) -> list:
    """Compatible classes for `cls`: diffusers' own plus the sprite ones.

    diffusers resolves `_compatibles` names only inside the diffusers package, which drops the sprite classes (even
    `cls` itself), so search the loaded subclasses of `root` (SchedulerMixin) for the names `cls._compatibles` lists.
    """
    found = {c.__name__: c for c in diffusers_compatibles}
    stack = [root]
    while stack:
        candidate = stack.pop()
        if candidate.__name__ in cls._compatibles:
            found.setdefault(candidate.__name__, candidate)
        stack.extend(candidate.__subclasses__())
    found[cls.__name__] = cls
    return list(found.values())


def keep_x0_in_range(scheduler, x0_hat: torch.Tensor) -> torch.Tensor:
    """Keep x0_hat (B, C, H, W) in the data range as the scheduler's config asks: dynamic thresholding (Saharia et al.
    2022; diffusers' `_threshold_sample`), a clamp to +-clip_sample_range, or unchanged (the sprite default)."""
    if scheduler.config.thresholding:
        return scheduler._threshold_sample(x0_hat)
    if scheduler.config.clip_sample:
        return x0_hat.clamp(-scheduler.config.clip_sample_range, scheduler.config.clip_sample_range)
    return x0_hat
