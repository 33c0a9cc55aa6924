"""Property-based tests (hypothesis) of the scheduler math on random schedules, sizes and inputs."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hfdiff import SpriteDDIMScheduler, SpriteDDPMScheduler

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

num_train_timesteps = st.integers(min_value=2, max_value=1000)
beta_ranges = st.tuples(
    st.floats(min_value=1e-5, max_value=1e-3), st.floats(min_value=2e-3, max_value=0.05)
)  # (beta_start, beta_end)
schedules = st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
seeds = st.integers(min_value=0, max_value=2**31 - 1)


@st.composite
def random_betas(draw, max_len=60):
    """An arbitrary valid schedule: T in 2..max_len, each beta_t in (1e-5, 0.2)."""
    length = draw(st.integers(min_value=2, max_value=max_len))
    return draw(st.lists(st.floats(min_value=1e-5, max_value=0.2), min_size=length, max_size=length))


def randn(seed: int, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@SETTINGS
@given(schedule=schedules, T=num_train_timesteps, betas=beta_ranges)
def test_every_schedule_has_alpha_bar_strictly_decreasing_in_the_open_unit_interval(schedule, T, betas):
    scheduler = SpriteDDPMScheduler(
        num_train_timesteps=T, beta_schedule=schedule, beta_start=betas[0], beta_end=betas[1]
    )
    alpha_bar = scheduler.alphas_cumprod.double()
    assert alpha_bar.shape == (T,)
    assert (alpha_bar > 0).all() and (alpha_bar < 1).all()
    assert (alpha_bar[1:] < alpha_bar[:-1]).all()


@SETTINGS
@given(schedule=schedules, T=num_train_timesteps, seed=seeds)
def test_add_noise_then_its_exact_inverse_recovers_x0(schedule, T, seed):
    scheduler = SpriteDDPMScheduler(num_train_timesteps=T, beta_schedule=schedule)
    x0, noise = randn(seed, 4, 3, 8, 8), randn(seed + 1, 4, 3, 8, 8)
    t = torch.randint(0, T, (4,), generator=torch.Generator().manual_seed(seed))
    x_t = scheduler.add_noise(x0, noise, t)  # eq. 4: sqrt(abar) x0 + sqrt(1 - abar) eps
    alpha_bar = scheduler.alphas_cumprod[t].double().view(-1, 1, 1, 1)
    recovered = (x_t.double() - (1 - alpha_bar).sqrt() * noise) / alpha_bar.sqrt()
    # the inverse divides by sqrt(abar_t): float32 rounding of x_t grows by that factor at the noisy end
    tolerance = 1e-5 / alpha_bar.sqrt().min().item()
    assert torch.allclose(recovered, x0.double(), atol=tolerance)


@SETTINGS
@given(betas=random_betas(), seed=seeds, prediction_type=st.sampled_from(["epsilon", "sample", "v_prediction"]))
def test_ddpm_posterior_mean_and_variance_match_the_closed_form(betas, seed, prediction_type):
    T = len(betas)
    scheduler = SpriteDDPMScheduler(
        num_train_timesteps=T,
        trained_betas=betas,
        variance_type="fixed_small",
        clip_sample=False,
        prediction_type=prediction_type,
    )
    scheduler.set_timesteps(T)
    t = int(torch.randint(1, T, (1,), generator=torch.Generator().manual_seed(seed)))
    x_t, model_output = randn(seed, 2, 3, 4, 4).double(), randn(seed + 1, 2, 3, 4, 4).double()

    beta = scheduler.betas.double()  # the schedule as the scheduler holds it (float32), computed on in float64
    alpha_bar = torch.cumprod(1 - beta, 0)
    ab_t, ab_prev, beta_t = alpha_bar[t], alpha_bar[t - 1], beta[t]
    if prediction_type == "epsilon":
        x0 = (x_t - (1 - ab_t).sqrt() * model_output) / ab_t.sqrt()
    elif prediction_type == "sample":
        x0 = model_output
    else:
        x0 = ab_t.sqrt() * x_t - (1 - ab_t).sqrt() * model_output
    mean = ab_prev.sqrt() * beta_t / (1 - ab_t) * x0 + (1 - beta_t).sqrt() * (1 - ab_prev) / (1 - ab_t) * x_t  # eq. 7
    variance = (1 - ab_prev) / (1 - ab_t) * beta_t  # beta~_t, eq. 7

    scheduler.alphas_cumprod = alpha_bar  # compare in float64, free of float32 rounding
    scheduler.one = scheduler.one.double()
    no_noise = scheduler.step(model_output, t, x_t, extra_noise=False).prev_sample
    assert torch.allclose(no_noise, mean, rtol=1e-9, atol=1e-9)
    with_noise = scheduler.step(model_output, t, x_t, generator=torch.Generator().manual_seed(seed)).prev_sample
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert torch.allclose(with_noise - no_noise, variance.sqrt() * z, rtol=1e-9, atol=1e-9)


def ddim_invert(scheduler, x0, eps_fn, timesteps):
    """Run DDIM's eta = 0 update forwards in time, x_{t'} -> x_t (Song et al. 2021, eq. 13 read the other way),
    using eps at the known point: exact when eps does not depend on x, approximate otherwise."""
    x = x0
    for t_prev, t in zip(list(timesteps[::-1][:-1]), list(timesteps[::-1][1:])):
        ab_prev, ab_t = scheduler.alphas_cumprod[t_prev], scheduler.alphas_cumprod[t]
        eps = eps_fn(x, t_prev)
        x0_hat = (x - (1 - ab_prev).sqrt() * eps) / ab_prev.sqrt()
        x = ab_t.sqrt() * x0_hat + (1 - ab_t).sqrt() * eps
    return x


@SETTINGS
@given(seed=seeds, steps=st.integers(min_value=5, max_value=50))
def test_ddim_eta_zero_is_deterministic_and_invertible(seed, steps):
    scheduler = SpriteDDIMScheduler(num_train_timesteps=500, clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    fixed_eps = randn(seed + 7, 2, 3, 8, 8)

    def denoise(x_T, eps_fn, generator_seed):
        x = x_T
        for t in timesteps:
            generator = torch.Generator().manual_seed(generator_seed)  # eta = 0: the generator must not matter
            x = scheduler.step(eps_fn(x, t), t, x, eta=0.0, generator=generator).prev_sample
        return x

    x_T = randn(seed, 2, 3, 8, 8)
    constant = lambda x, t: fixed_eps  # noqa: E731 - an eps model that ignores its input: inversion is exact
    x0 = denoise(x_T, constant, 1)
    assert torch.equal(x0, denoise(x_T, constant, 2))
    # the last step of denoise lands on abar of the final timestep's predecessor; invert from there
    x_first = ddim_invert(scheduler, _undo_last_step(scheduler, x0, fixed_eps, timesteps[-1]), constant, timesteps)
    assert torch.allclose(x_first, x_T, atol=1e-3)

    smooth = lambda x, t: 0.5 * torch.tanh(x) + 0.1 * fixed_eps  # noqa: E731 - eps depends (smoothly) on x_t
    x0 = denoise(x_T, smooth, 3)
    x_first = ddim_invert(scheduler, _undo_last_step(scheduler, x0, None, timesteps[-1], smooth), smooth, timesteps)
    relative_error = (x_first - x_T).norm() / x_T.norm()
    assert relative_error < 0.25, relative_error


def _undo_last_step(scheduler, x0, eps, t_last, eps_fn=None):
    """Map the sampler's final output back to x_{t_last} with the same eps (exact for a constant eps)."""
    ab_t = scheduler.alphas_cumprod[t_last]
    ab_final = scheduler.final_alpha_cumprod
    eps = eps if eps is not None else eps_fn(x0, t_last)
    x0_hat = (x0 - (1 - ab_final).sqrt() * eps) / ab_final.sqrt()
    return ab_t.sqrt() * x0_hat + (1 - ab_t).sqrt() * eps
