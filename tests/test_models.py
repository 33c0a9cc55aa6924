import json

import pytest
import torch
from diffusers import UNet2DModel
from tiny import TINY_UNET as TINY
from tiny import tiny_unet

from hfdiff import ContextUNet2DModel
from hfdiff.models import UNET_PRESETS


def public_config(model) -> dict:
    """The config as saved to JSON (tuples become lists), without bookkeeping keys such as _name_or_path."""
    return {key: value for key, value in json.loads(model.to_json_string()).items() if not key.startswith("_")}


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, low, high", [("sprite-small", 1.0e6, 2.0e6), ("sprite-base", 5e6, 10e6)])
def test_presets_size_and_shape(name, low, high):
    unet = ContextUNet2DModel.from_preset(name)
    assert low <= count_parameters(unet) <= high
    assert isinstance(unet, UNet2DModel)
    out = unet(torch.randn(2, 3, 16, 16), 10, context=torch.randn(2, 5)).sample
    assert out.shape == (2, 3, 16, 16)


def test_sprite_base_has_attention_at_lowest_resolution_only():
    unet = ContextUNet2DModel.from_preset("sprite-base")
    assert unet.config.down_block_types[-1] == "AttnDownBlock2D"
    assert unet.config.up_block_types[0] == "AttnUpBlock2D"
    assert "Attn" not in "".join(unet.config.down_block_types[:-1] + unet.config.up_block_types[1:])
    small = ContextUNet2DModel.from_preset("sprite-small")
    assert not any("Attention" in type(m).__name__ for m in small.modules())


def test_unknown_preset():
    with pytest.raises(ValueError, match="sprite-small"):
        ContextUNet2DModel.from_preset("sprite-huge")


def test_save_load_round_trip_is_exact(tmp_path):
    unet = tiny_unet(class_names=["a", "b", "c", "d", "e"])
    unet.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = ContextUNet2DModel.from_pretrained(tmp_path).eval()
    assert public_config(loaded) == public_config(unet)
    assert loaded.config.context_dim == 5 and loaded.config.class_names == ["a", "b", "c", "d", "e"]
    x, c = torch.randn(3, 3, 16, 16), torch.randn(3, 5)
    t = torch.tensor([1, 50, 400])
    with torch.no_grad():
        assert torch.equal(unet(x, t, context=c).sample, loaded(x, t, context=c).sample)


def test_round_trip_keeps_a_non_default_architecture(tmp_path):
    # Reloading must rebuild the saved architecture, not the default one (the @register_to_config rule).
    unet = tiny_unet(in_channels=1, out_channels=1, context_dim=12, sample_size=32)
    unet.save_pretrained(tmp_path)
    loaded = ContextUNet2DModel.from_pretrained(tmp_path)
    assert public_config(loaded) == public_config(unet)
    assert loaded.config.context_dim == 12 and loaded.config.in_channels == 1
    assert count_parameters(loaded) == count_parameters(unet)


def test_context_changes_output_and_null_context_is_zeros():
    unet = tiny_unet()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        hero = unet(x, 100, context=torch.eye(5)[[0, 0]]).sample
        food = unet(x, 100, context=torch.eye(5)[[2, 2]]).sample
        null = unet(x, 100).sample
        zeros = unet(x, 100, context=torch.zeros(2, 5)).sample
        single_row = unet(x, 100, context=torch.eye(5)[0]).sample
    assert (hero - food).abs().max() > 1e-3
    assert torch.equal(null, zeros)
    assert torch.allclose(single_row, hero)


def test_time_changes_output():
    unet = tiny_unet()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (unet(x, 1).sample - unet(x, 400).sample).abs().max() > 1e-3
        assert torch.allclose(unet(x, torch.tensor([7, 7])).sample, unet(x, 7).sample)


def test_identity_initialisation_of_conditioning():
    # Untrained, the decoder conditioning is the identity: C_i(c) = 1 and T_i(t) = 0 for any c and t.
    torch.manual_seed(0)
    unet = ContextUNet2DModel(**TINY).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(unet(x, 3, context=torch.randn(2, 5)).sample, unet(x, 3).sample)


def test_wrong_context_length_names_both_sizes():
    unet = tiny_unet()
    with pytest.raises(ValueError, match=r"\(2, 7\).*length 5"):
        unet(torch.randn(2, 3, 16, 16), 1, context=torch.randn(2, 7))
    with pytest.raises(ValueError, match="3 rows but the batch has 2"):
        unet(torch.randn(2, 3, 16, 16), 1, context=torch.randn(3, 5))


def test_wrong_image_shape_says_what_fits():
    unet = tiny_unet()  # two resolutions: one halving
    with pytest.raises(ValueError, match=r"\(2, 1, 16, 16\).*\(B, 3, H, W\)"):
        unet(torch.randn(2, 1, 16, 16), 1)
    with pytest.raises(ValueError, match="17x17.*multiples of 2; resize to e.g. 16x16"):
        unet(torch.randn(2, 3, 17, 17), 1)
    with pytest.raises(ValueError, match=r"\(3, 16, 16\)"):
        unet(torch.randn(3, 16, 16), 1)


def test_unconditional_model():
    unet = tiny_unet(context_dim=None)
    assert unet.context_mlps is None
    assert unet(torch.randn(2, 3, 16, 16), 5).sample.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="unconditional"):
        unet(torch.randn(2, 3, 16, 16), 5, context=torch.randn(2, 5))


def test_bad_config():
    with pytest.raises(ValueError, match="class_names has 2 entries but context_dim is 5"):
        ContextUNet2DModel(**TINY, class_names=["a", "b"])
    with pytest.raises(ValueError, match="context_dim"):
        ContextUNet2DModel(**TINY, context_dim=0)


def test_other_resolutions_and_grayscale():
    unet = tiny_unet(in_channels=1, out_channels=1, sample_size=28)
    assert unet(torch.randn(2, 1, 28, 28), 5, context=torch.randn(2, 5)).sample.shape == (2, 1, 28, 28)
    assert unet(torch.randn(1, 1, 32, 32), 5).sample.shape == (1, 1, 32, 32)


def test_gradient_checkpointing_gives_the_same_gradients():
    unet = tiny_unet().train()
    x, c = torch.randn(2, 3, 16, 16), torch.randn(2, 5)

    def grads():
        unet.zero_grad()
        unet(x, torch.tensor([3, 90]), context=c).sample.square().mean().backward()
        return [p.grad.clone() for p in unet.parameters() if p.grad is not None]

    plain = grads()
    unet.enable_gradient_checkpointing()
    checkpointed = grads()
    assert len(plain) == len(checkpointed) == len(list(unet.parameters()))
    for a, b in zip(plain, checkpointed):
        assert torch.allclose(a, b, atol=1e-6)


def test_every_parameter_gets_a_gradient():
    unet = tiny_unet().train()
    unet(torch.randn(2, 3, 16, 16), torch.tensor([3, 90]), context=torch.randn(2, 5)).sample.mean().backward()
    missing = [name for name, p in unet.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_presets_are_registered_configs():
    for name, preset in UNET_PRESETS.items():
        unet = ContextUNet2DModel.from_preset(name, context_dim=3)
        for key, value in preset.items():
            if key != "context_dim":
                assert tuple(unet.config[key]) == value if isinstance(value, tuple) else unet.config[key] == value
        assert unet.config.context_dim == 3
