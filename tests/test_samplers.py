"""Named samplers (hfdiff.samplers): built from the model's own scheduler config, every other component kept, the
recommended "fast" one on the CUDA-graph path, and the CLI's --sampler."""

import pytest
import torch
from test_text import save_tiny_bert
from test_text_pipeline import make_text_pipe
from tiny import make_pipe, seed

from hfdiff import SpriteDDIMScheduler, SpriteDDPMScheduler
from hfdiff.fast_sampling import FastSampler, step_coefficients
from hfdiff.samplers import SAMPLERS, default_steps, get_sampler, with_sampler


def zero_snr_scheduler():
    return SpriteDDPMScheduler(
        num_train_timesteps=50,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
    )


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_keeps_schedule_and_components(name, tmp_path):
    pipe = make_text_pipe(save_tiny_bert(tmp_path / "bert"))
    pipe.scheduler = zero_snr_scheduler()
    other = with_sampler(pipe, name)
    assert type(other.scheduler).__name__ == SAMPLERS[name].scheduler
    assert other.scheduler is not pipe.scheduler and pipe.scheduler.config.num_train_timesteps == 50
    for key in ("prediction_type", "rescale_betas_zero_snr", "timestep_spacing", "beta_schedule"):
        assert other.scheduler.config[key] == pipe.scheduler.config[key]
    assert other.text_encoder is pipe.text_encoder and other.tokenizer is pipe.tokenizer and other.unet is pipe.unet
    images = other(prompt="a red apple", num_inference_steps=default_steps(name, 50), generator=seed(0)).images
    assert len(images) == 1


def test_fast_is_strided_ddpm_on_the_graph_path():
    pipe = make_pipe(scheduler=zero_snr_scheduler())
    fast = with_sampler(pipe, "fast")
    assert isinstance(fast.scheduler, SpriteDDPMScheduler) and default_steps("fast", 500) == 25
    assert default_steps("fast", 20) == 20 and default_steps("ddpm", 500) == 500
    fast.scheduler.set_timesteps(25)
    assert fast.scheduler.timesteps[0] == 49  # trailing: starts where the schedule's pure noise is
    # the step is affine in (x_t, m, z), so CUDA runs it from one recorded graph (the decision needs no GPU)
    assert FastSampler(fast).fallback_reason(device="cuda", generator=seed(0)) is None
    coefficients = step_coefficients(fast.scheduler, eta=0.0).coefficients
    assert coefficients.shape[0] == 25 and torch.isfinite(coefficients).all()
    assert isinstance(with_sampler(pipe, "ddim").scheduler, SpriteDDIMScheduler)


def test_unknown_sampler_names_the_choices():
    with pytest.raises(ValueError, match="Unknown sampler 'dpm'; choose one of 'fast', 'ddpm', 'ddim'"):
        get_sampler("dpm")


def test_cli_sampler_flag_takes_the_named_sampler_and_its_steps(tmp_path, monkeypatch):
    from hfdiff import cli

    pipe = make_pipe(scheduler=zero_snr_scheduler())
    pipe.save_pretrained(tmp_path / "model")
    calls = []
    real_call = type(pipe).__call__

    def recording_call(self, *args, **kwargs):
        calls.append((type(self.scheduler).__name__, kwargs.get("num_inference_steps")))
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", recording_call)
    for flag, expected in (
        (["--sampler", "fast"], ("SpriteDDPMScheduler", 25)),
        (["--scheduler", "ddim"], ("SpriteDDIMScheduler", 50)),
    ):
        output = tmp_path / f"{flag[1]}.png"
        args = ["sample", str(tmp_path / "model"), "--per_class", "1", "--output", str(output), "--device", "cpu"]
        assert cli.main([*args, *flag]) == 0 and output.exists()
        assert calls[-1] == expected
