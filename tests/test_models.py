import ast
import hashlib
import inspect
import json
import textwrap

import diffusers
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


@pytest.mark.parametrize(
    "name, low, high", [("sprite-small", 1.0e6, 2.0e6), ("sprite-base", 5e6, 10e6), ("sprite-64", 3e6, 6e6)]
)
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


def test_context_mlp_width_is_configurable_and_saved(tmp_path):
    # The course's C_i are as wide as the level they scale; context_mlp_dim widens their hidden layer (for sentence
    # embeddings) and nothing else, and the width survives save/load.
    narrow, wide = tiny_unet(context_dim=12), tiny_unet(context_dim=12, context_mlp_dim=48)
    assert all(mlp[0].out_features == mlp[2].out_features for mlp in narrow.context_mlps)
    assert [mlp[0].out_features for mlp in wide.context_mlps] == [48] * len(wide.context_mlps)
    assert [m[2].out_features for m in wide.context_mlps] == [m[2].out_features for m in narrow.context_mlps]
    assert [m[0].out_features for m in wide.time_mlps] == [m[0].out_features for m in narrow.time_mlps]
    x, c = torch.randn(2, 3, 16, 16), torch.randn(2, 12)
    fresh = ContextUNet2DModel(**{**TINY, "context_dim": 12, "context_mlp_dim": 48}).eval()
    with torch.no_grad():
        assert torch.allclose(fresh(x, 3, context=c).sample, fresh(x, 3).sample)  # still starts as C_i = 1
        assert (wide(x, 3, context=c).sample - wide(x, 3).sample).abs().max() > 1e-3
    wide.save_pretrained(tmp_path)
    loaded = ContextUNet2DModel.from_pretrained(tmp_path)
    assert loaded.config.context_mlp_dim == 48 and public_config(loaded) == public_config(wide)
    with pytest.raises(ValueError, match="context_mlp_dim=0"):
        tiny_unet(context_mlp_dim=0)


def test_context_time_embedding_reaches_every_resnet_and_starts_as_without(tmp_path):
    # context_time_embedding adds a projection of c to the time embedding (UNet2DConditionModel's "projection"
    # class embedding), on top of the decoder's C_i(c) * h; zero-initialised, so a fresh model computes what the same
    # weights compute without it, and a trained one's encoder sees the context.
    torch.manual_seed(0)
    with_path = tiny_unet(context_dim=12, context_time_embedding=True)
    without = ContextUNet2DModel(**{**TINY, "context_dim": 12})
    missing, unexpected = without.load_state_dict(with_path.state_dict(), strict=False)
    assert not missing and unexpected and all(key.startswith("context_embedding.") for key in unexpected)
    x, c = torch.randn(2, 3, 16, 16), torch.randn(2, 12)
    with torch.no_grad():
        assert torch.allclose(with_path(x, 3, context=c).sample, without(x, 3, context=c).sample)
        torch.nn.init.normal_(with_path.context_embedding.linear_2.weight)
        encoder = []  # the first down block's output, before any of the decoder's C_i
        for model in (without, with_path):
            hook = model.down_blocks[0].register_forward_hook(lambda module, args, out: encoder.append(out[0]))
            model(x, 3, context=c), model(x, 3, context=torch.randn(2, 12))
            hook.remove()
    assert torch.equal(encoder[0], encoder[1])  # the course's design: the encoder never sees the context
    assert (encoder[2] - encoder[3]).abs().max() > 1e-3  # with the path it does
    with_path.save_pretrained(tmp_path)
    loaded = ContextUNet2DModel.from_pretrained(tmp_path)
    assert loaded.config.context_time_embedding and public_config(loaded) == public_config(with_path)
    with pytest.raises(ValueError, match="unconditional"):
        tiny_unet(context_dim=None, context_time_embedding=True)


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


# ContextUNet2DModel.forward is a declared copy of UNet2DModel.forward. These fingerprints are of the diffusers
# versions whose forward the copy was diffed against; a new one is added only after re-diffing.
VERIFIED_UNET2D_FORWARD_FINGERPRINTS = {
    "0.42.1": "ac1a5fe67cc05a859e104f7687664770f827c901495ed25676bdb4e7a8e3f7c0",
}

# Block layouts, time embeddings and options that take different branches of UNet2DModel.forward.
FORWARD_VARIANTS = {
    "plain": {},
    "attention": {
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
        "add_attention": True,
    },
    "skip_blocks": {
        "block_out_channels": (32, 32),  # the skip blocks' FIR/attention layers need 32 channels at 8 groups
        "norm_num_groups": 8,
        "down_block_types": ("SkipDownBlock2D", "AttnSkipDownBlock2D"),
        "up_block_types": ("AttnSkipUpBlock2D", "SkipUpBlock2D"),
    },
    "fourier_time": {"time_embedding_type": "fourier", "flip_sin_to_cos": False},
    "learned_time": {"time_embedding_type": "learned", "num_train_timesteps": 1000},
    "no_mid_block": {"mid_block_type": None},
    "scale_shift": {"resnet_time_scale_shift": "scale_shift"},
    "center_input_sample": {"center_input_sample": True},
    "resnet_resampling": {"downsample_type": "resnet", "upsample_type": "resnet"},
}


def code_fingerprint(function) -> str:
    """sha256 of what a function does: its code without docstring, comments, type hints or formatting, so a reflowed
    docstring or retyped hint in a diffusers release does not count as a change, and a changed statement does."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]
    if ast.get_docstring(tree) is not None:
        tree.body = tree.body[1:]
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            node.annotation = None
    tree.returns = None
    return hashlib.sha256(ast.unparse(tree).encode()).hexdigest()


def test_copied_forward_source_is_the_one_the_copy_was_made_from():
    # Failing here is the intended signal on a new diffusers release, not a flaky test: the copy may have gone stale.
    fingerprint = code_fingerprint(UNet2DModel.forward)
    assert fingerprint in VERIFIED_UNET2D_FORWARD_FINGERPRINTS.values(), (
        f"diffusers {diffusers.__version__} changed UNet2DModel.forward, which hfdiff's ContextUNet2DModel.forward "
        f"copies (verified against diffusers {sorted(VERIFIED_UNET2D_FORWARD_FINGERPRINTS)}). Diff the two "
        "(inspect.getsource), port what changed into the copy in hfdiff/models/unet_context.py, check that "
        "test_copied_forward_matches_diffusers passes, then add "
        f"{diffusers.__version__!r}: {fingerprint!r} to VERIFIED_UNET2D_FORWARD_FINGERPRINTS."
    )


def diffusers_twin(unet: ContextUNet2DModel, context: torch.Tensor | None = None) -> UNet2DModel:
    """A UNet2DModel with `unet`'s weights; given a context, the decoder modulation h <- C_i(c) * h + T_i(t) is put
    in by forward pre-hooks on its up blocks (a reference only: hooks need the context captured here)."""
    # Without the bookkeeping keys: `_use_default_values` would make from_config take UNet2DModel's defaults (e.g.
    # add_attention=True) for whatever ContextUNet2DModel left at its own.
    config = {
        k: v for k, v in unet.config.items() if k not in ("context_dim", "class_names") and not k.startswith("_")
    }
    twin = UNet2DModel.from_config(config).eval()
    missing, unexpected = twin.load_state_dict(unet.state_dict(), strict=False)
    assert missing == [] and all(key.startswith(("time_mlps.", "context_mlps.")) for key in unexpected)
    if context is not None:
        for i, block in enumerate(twin.up_blocks):

            def modulate(block, args, i=i):  # diffusers calls up blocks as (sample, res_samples, emb[, skip])
                sample, _, emb = args[:3]
                return (unet.context_mlps[i](context) * sample + unet.time_mlps[i](emb), *args[1:])

            block.register_forward_pre_hook(modulate)
    return twin


@pytest.mark.parametrize("variant", sorted(FORWARD_VARIANTS))
def test_copied_forward_matches_diffusers(variant):
    # The behavioural half of the declared-copy check: same weights, same outputs as diffusers' own forward, both at
    # the identity initialisation of the modulation (C_i = 1, T_i = 0) and, through hooks, away from it.
    torch.manual_seed(0)
    unet = ContextUNet2DModel(**{**TINY, **FORWARD_VARIANTS[variant]}).eval()
    x, t, c = torch.randn(2, 3, 16, 16), torch.tensor([3, 90]), torch.randn(2, 5)
    with torch.no_grad():
        assert torch.equal(unet(x, t, context=c).sample, diffusers_twin(unet)(x, t).sample)
        for mlp in [*unet.time_mlps, *unet.context_mlps]:
            mlp[2].weight.normal_(std=0.5)
        modulated = unet(x, t, context=c).sample
        assert (modulated - diffusers_twin(unet)(x, t).sample).abs().max() > 1e-3  # the hooks have work to do
        assert torch.equal(modulated, diffusers_twin(unet, c)(x, t).sample)


def test_class_labels_are_one_hot_contexts():
    unet = tiny_unet()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        by_context = unet(x, 7, context=torch.eye(5)[[0, 3, 4]]).sample
        assert torch.equal(unet(x, 7, class_labels=torch.tensor([0, 3, 4])).sample, by_context)
        assert torch.equal(unet(x, 7, class_labels=[0, 3, 4]).sample, by_context)
        assert torch.equal(
            unet(x, 7, class_labels=torch.tensor([2])).sample, unet(x, 7, context=torch.eye(5)[2]).sample
        )


def test_bad_class_labels_say_what_to_pass():
    unet = tiny_unet()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="either class_labels or context, not both"):
        unet(x, 1, context=torch.eye(5)[[0, 1]], class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 5\] are out of range.*5 classes.*\[0, 4\]"):
        unet(x, 1, class_labels=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="out of range"):
        unet(x, 1, class_labels=torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="integer class indices, got dtype torch.float32.*`context`"):
        unet(x, 1, class_labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(3,\) but the batch has 2"):
        unet(x, 1, class_labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="unconditional.*drop class_labels"):
        tiny_unet(context_dim=None)(x, 1, class_labels=torch.tensor([0, 1]))


@pytest.mark.parametrize("overrides", [{"num_class_embeds": 5}, {"class_embed_type": "identity"}])
def test_unet2d_class_embedding_is_refused(overrides):
    with pytest.raises(ValueError, match="one-hot `context`.*context_dim=<number of classes>"):
        ContextUNet2DModel(**TINY, **overrides)


def test_saved_config_listing_the_class_embedding_as_null_loads(tmp_path):
    unet = tiny_unet()
    unet.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["num_class_embeds"] is None and saved["class_embed_type"] is None
    assert ContextUNet2DModel.from_pretrained(tmp_path).class_embedding is None


def test_a_dtype_cast_logs_no_empty_float32_list():
    """diffusers' ModelMixin.to warns "should be kept in float32: []" on every dtype cast of a model that keeps no
    module in float32; hfdiff drops that one message. The tests run diffusers at DIFFUSERS_VERBOSITY=error and its
    loggers do not propagate, so this listens on the logger itself at warning level."""
    import logging

    model = ContextUNet2DModel.from_preset("sprite-small", context_dim=5)
    records = []
    listener = logging.Handler(logging.WARNING)
    listener.emit = records.append
    logger = logging.getLogger("diffusers.models.modeling_utils")
    level = logger.level
    logger.addHandler(listener)
    logger.setLevel(logging.WARNING)
    try:
        model.to(torch.bfloat16)
        model.to("cpu", torch.float32)
    finally:
        logger.removeHandler(listener)
        logger.setLevel(level)
    assert not [record.getMessage() for record in records if "kept in float32" in record.getMessage()]
    assert model.dtype == torch.float32
