"""The pure functions of `sjc3d train-prior`: pair draws, classifier-free dropout, conditioning, EMA."""

from __future__ import annotations

import math

import pytest
import torch

from sjc3d.cameras import spherical_to_c2w, zero123_pose
from sjc3d.train_prior import autoencoder as ae
from sjc3d.train_prior import diffusion as dm


def offsets(counts: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()])


def test_pairs_are_two_different_views_of_one_training_object():
    views_per_object = offsets([3, 2, 5, 4])
    objects = torch.tensor([0, 2, 3])  # object 1 is held out
    draw = dm.draw_pairs(views_per_object, objects, 4000, (4, 2, 2), 1000, torch.Generator().manual_seed(0))
    owner_cond = torch.searchsorted(views_per_object, draw.cond, right=True) - 1
    owner_target = torch.searchsorted(views_per_object, draw.target, right=True) - 1
    assert torch.equal(owner_cond, owner_target)
    assert not torch.isin(owner_cond, torch.tensor([1])).any()
    assert (draw.cond != draw.target).all()
    # every ordered pair of object 2's five views is drawn, roughly equally often
    in_two = owner_cond == 2
    pairs = torch.stack([draw.cond[in_two], draw.target[in_two]], 1).unique(dim=0)
    assert len(pairs) == 5 * 4
    assert draw.t.min() >= 0 and draw.t.max() <= 999 and draw.noise.shape == (4000, 4, 2, 2)


def test_same_view_pairs_come_at_their_fraction_and_leave_the_other_draws_alone():
    views_per_object = offsets([3, 2, 5, 4])
    objects = torch.tensor([0, 2, 3])
    plain = dm.draw_pairs(views_per_object, objects, 4000, (4, 2, 2), 1000, torch.Generator().manual_seed(0))
    mixed = dm.draw_pairs(views_per_object, objects, 4000, (4, 2, 2), 1000, torch.Generator().manual_seed(0),
                          same_view_fraction=0.25)
    same = mixed.cond == mixed.target
    assert abs(float(same.float().mean()) - 0.25) < 0.03
    assert torch.equal(mixed.target[~same], plain.target[~same])
    for name in ("cond", "t", "noise", "r"):
        assert torch.equal(getattr(mixed, name), getattr(plain, name)), name


def test_a_step_draws_the_same_global_batch_whatever_the_slices():
    views_per_object = offsets([4] * 10)
    objects = torch.arange(10)
    whole = dm.draw_pairs(views_per_object, objects, 8, (4, 2, 2), 1000, dm.step_generator(3, 17))
    again = dm.draw_pairs(views_per_object, objects, 8, (4, 2, 2), 1000, dm.step_generator(3, 17))
    halves = [again.slice(0, 4), again.slice(4, 8)]
    for name in ("cond", "target", "t", "noise", "r"):
        assert torch.equal(getattr(whole, name), torch.cat([getattr(h, name) for h in halves]))
    other = dm.draw_pairs(views_per_object, objects, 8, (4, 2, 2), 1000, dm.step_generator(3, 18))
    assert not torch.equal(whole.noise, other.noise)


def test_dropout_cases_follow_the_original_split():
    r = torch.tensor([0.01, 0.049, 0.05, 0.09, 0.10, 0.149, 0.15, 0.9])
    drop_image, drop_concat = dm.dropout_masks(r, 0.05)
    assert drop_image.tolist() == [True, True, True, True, False, False, False, False]
    assert drop_concat.tolist() == [False, False, True, True, True, True, False, False]
    r = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    drop_image, drop_concat = dm.dropout_masks(r, 0.05)
    for share in ((drop_image & ~drop_concat), (drop_image & drop_concat), (~drop_image & drop_concat)):
        assert share.float().mean().item() == pytest.approx(0.05, abs=0.003)


class Encoder(torch.nn.Module):
    """Stands for CLIP: embeds the mean colour, so the context depends on the image."""

    class config:  # noqa: N801  (mimics a transformers config)
        image_size = 8

    def forward(self, pixel_values):
        class Out:
            image_embeds = pixel_values.mean(dim=(2, 3))

        return Out()


def test_null_context_zeros_matches_what_inference_uses_and_original_keeps_the_pose():
    projection = torch.nn.Linear(3 + 4, 3)
    images = torch.rand(3, 3, 8, 8) * 2 - 1
    pose = torch.randn(3, 4)
    drop = torch.tensor([False, True, True])
    zeros = dm.cross_attention_context(Encoder(), projection, images, pose, drop, "zeros")
    assert zeros.shape == (3, 1, 3)
    assert torch.equal(zeros[1:], torch.zeros(2, 1, 3))  # the unconditional branch of Zero123Prior
    assert zeros[0].abs().sum() > 0
    original = dm.cross_attention_context(Encoder(), projection, images, pose, drop, "original")
    expected = projection(torch.cat([torch.zeros(2, 3), pose[1:]], -1))  # zero embedding, pose kept
    assert torch.allclose(original[1:, 0], expected)
    assert torch.allclose(original[0], zeros[0])


def test_relative_poses_are_the_engine_embedding():
    c2w = spherical_to_c2w(torch.tensor([10.0, 30.0, -5.0]), torch.tensor([0.0, 90.0, 200.0]), torch.tensor([1.6, 2.0, 2.2]))
    pose = dm.relative_poses(c2w, torch.tensor([0, 2]), torch.tensor([1, 0]))
    assert torch.allclose(pose[0], zero123_pose(c2w[0], c2w[1]))
    assert torch.allclose(pose[0], torch.tensor([math.radians(-20.0), 1.0, 0.0, 0.4]), atol=1e-5)


def test_noisy_latents_follow_the_ddpm_forward_process():
    from sjc3d.sjc import ddpm_alphas_cumprod

    alphas = ddpm_alphas_cumprod()
    z0, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    x = dm.noisy_latents(z0, noise, torch.tensor([0, 999]), alphas)
    a0, a1 = alphas[0].item(), alphas[999].item()
    assert torch.allclose(x[0], math.sqrt(a0) * z0[0] + math.sqrt(1 - a0) * noise[0], atol=1e-6)
    assert torch.allclose(x[1], math.sqrt(a1) * z0[1] + math.sqrt(1 - a1) * noise[1], atol=1e-6)


def test_min_snr_weights_cap_the_clean_levels_and_keep_the_noisy_ones():
    from sjc3d.sjc import ddpm_alphas_cumprod

    alphas = ddpm_alphas_cumprod()
    t = torch.tensor([0, 100, 999])
    assert torch.equal(dm.min_snr_weights(t, alphas, 0.0), torch.ones(3))  # off: the plain objective
    snr = alphas[t].double() / (1 - alphas[t].double())
    weights = dm.min_snr_weights(t, alphas, 5.0)
    assert snr[0] > 5 and snr[2] < 5  # t = 0 nearly clean, t = 999 nearly pure noise
    assert weights[0].item() == pytest.approx(5.0 / snr[0].item(), rel=1e-5)  # capped: γ / SNR
    assert weights[2].item() == 1.0  # noisy: untouched
    assert weights[0] < weights[1] <= weights[2]


def test_min_snr_weights_of_a_v_model_divide_by_snr_plus_one():
    """v loss = (SNR + 1)·‖z0 − ẑ0‖², so Min-SNR-γ's weight min(SNR, γ) becomes min(SNR, γ)/(SNR + 1)."""
    from sjc3d.sjc import ddpm_alphas_cumprod

    alphas = ddpm_alphas_cumprod()
    t = torch.tensor([0, 500, 999])
    snr = alphas[t].double() / (1 - alphas[t].double())
    expected = snr.clamp(max=5.0) / (snr + 1)
    torch.testing.assert_close(dm.min_snr_weights(t, alphas, 5.0, "v_prediction"), expected.float())
    assert torch.equal(dm.min_snr_weights(t, alphas, 0.0, "v_prediction"), torch.ones(3))


def test_v_targets_turn_back_into_the_noise():
    """v = √ᾱ·ε − √(1−ᾱ)·z0, and √ᾱ·v + √(1−ᾱ)·x_t recovers ε exactly: what the prior relies on."""
    from sjc3d.priors.zero123 import epsilon_from_velocity
    from sjc3d.sjc import ddpm_alphas_cumprod

    alphas = ddpm_alphas_cumprod()
    torch.manual_seed(0)
    z0, noise, t = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5), torch.tensor([3, 400, 999])
    v = dm.prediction_target(z0, noise, t, alphas, "v_prediction")
    a = alphas[400].item()
    torch.testing.assert_close(v[1], math.sqrt(a) * noise[1] - math.sqrt(1 - a) * z0[1])
    assert (v[2] + z0[2]).norm() < 0.1 * z0[2].norm()  # near pure noise v is nearly −z0: the shape itself
    x_t = dm.noisy_latents(z0, noise, t, alphas)
    torch.testing.assert_close(epsilon_from_velocity(v, x_t, alphas[t].float()), noise, rtol=1e-5, atol=1e-5)
    assert dm.prediction_target(z0, noise, t, alphas, "epsilon") is noise


def test_the_loss_weights_each_sample_of_the_batch():
    prediction, target = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    plain = dm.prediction_loss(prediction, target, torch.ones(2))
    assert plain.item() == pytest.approx(torch.nn.functional.mse_loss(prediction, target).item(), rel=1e-6)
    first_only = dm.prediction_loss(prediction, target, torch.tensor([2.0, 0.0]))
    assert first_only.item() == pytest.approx((prediction[0] - target[0]).square().mean().item(), rel=1e-6)


def test_ema_warms_up_and_then_averages():
    assert dm.ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert dm.ema_decay_at(10_000, 0.999) == 0.999
    average, current = [torch.zeros(3)], [torch.ones(3)]
    dm.ema_update(average, current, 0.9)
    assert torch.allclose(average[0], torch.full((3,), 0.1))
    assert dm.learning_rate_scale(0, 100) == pytest.approx(0.01) and dm.learning_rate_scale(500, 100) == 1.0


def test_adamw_takes_the_configured_beta2_and_the_config_rejects_one_outside_0_1():
    from sjc3d.errors import ConfigError
    from sjc3d.train_prior.config import load_training_config
    from sjc3d.train_prior.loop import adamw

    weight = torch.nn.Parameter(torch.zeros(2))
    assert adamw([weight], 1e-3, 0.0, torch.device("cpu")).defaults["betas"] == (0.9, 0.999)
    assert adamw([weight], 1e-3, 0.0, torch.device("cpu"), beta2=0.99).defaults["betas"] == (0.9, 0.99)
    assert load_training_config("toy", ["diffusion.adam_beta2=0.99"]).diffusion.adam_beta2 == 0.99
    with pytest.raises(ConfigError, match="diffusion.adam_beta2"):
        load_training_config("toy", ["diffusion.adam_beta2=1"])


@pytest.mark.parametrize("saved_layout, resumed_layout", [
    (torch.contiguous_format, torch.channels_last),  # a compiled run resumes a plain run's checkpoint
    (torch.channels_last, torch.contiguous_format),  # and the other way round
])
def test_a_resumed_optimizer_state_takes_its_parameters_memory_layout(saved_layout, resumed_layout):
    """Fused AdamW walks weights, gradients and moments as flat memory: a resumed step must update
    each element as if the run had never stopped, whatever layout each side's weights had."""
    from sjc3d.train_prior.loop import adamw, load_optimizer_state

    torch.manual_seed(0)
    weight, first, second = torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3)
    cpu = torch.device("cpu")

    def two_steps(layout_before: torch.memory_format, layout_after: torch.memory_format) -> torch.Tensor:
        p = torch.nn.Parameter(weight.clone(memory_format=layout_before))
        optimizer = adamw([p], 1e-2, 0.0, cpu)
        p.grad = first.clone(memory_format=layout_before)  # autograd gives gradients the weight's layout
        optimizer.step()
        q = torch.nn.Parameter(p.detach().clone(memory_format=layout_after))
        resumed = adamw([q], 1e-2, 0.0, cpu)
        load_optimizer_state(resumed, optimizer.state_dict())
        q.grad = second.clone(memory_format=layout_after)
        resumed.step()
        return q.detach().contiguous()

    uninterrupted = two_steps(torch.contiguous_format, torch.contiguous_format)
    torch.testing.assert_close(two_steps(saved_layout, resumed_layout), uninterrupted)


def test_the_cosine_schedule_warms_up_halves_midway_and_ends_at_zero():
    total, warmup = 1000, 100
    scale = [dm.learning_rate_scale(step, warmup, "cosine", total) for step in range(total)]
    assert scale[0] == pytest.approx(0.01) and scale[warmup - 1] == pytest.approx(1.0)  # the same warm-up
    assert scale[warmup] == pytest.approx(1.0)  # decay starts from the peak
    assert scale[(warmup + total - 1) // 2] == pytest.approx(0.5, abs=2e-3)  # half-way down midway
    assert scale[-1] == pytest.approx(0.0, abs=1e-12)  # the last step's rate is zero
    assert all(a >= b for a, b in zip(scale[warmup:], scale[warmup + 1:]))  # and it only decreases
    assert dm.learning_rate_scale(999, warmup, "constant", total) == 1.0


def test_the_loss_profile_shows_a_spike_the_final_loss_hides(tmp_path):
    """800 logged steps at 0.03 but for a collapse to 1.0 over steps 601–650: the seventh eighth's
    mean rises, the highest loss names its step, and the warm-up's own high losses are left out."""
    import json

    from sjc3d.train_prior.card import diffusion_loss_profile

    def loss(step: int) -> float:
        return 5.0 if step <= 10 else (1.0 if 600 < step <= 650 else 0.03)

    lines = [json.dumps({"stage": "autoencoder", "step": s, "l1": 0.5}) for s in range(1, 5)]
    lines += [json.dumps({"stage": "diffusion", "step": s, "loss": loss(s) + s * 1e-6}) for s in range(1, 801)]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(lines) + "\n")
    means, highest, at_step = diffusion_loss_profile(metrics, warmup=10)
    assert len(means) == 8
    assert means[6] == pytest.approx((50 * 1.0 + 50 * 0.03) / 100, abs=1e-3)
    assert means[7] == pytest.approx(0.03, abs=1e-3) and means[5] == pytest.approx(0.03, abs=1e-3)
    assert (round(highest, 3), at_step) == (1.001, 650)
    # A run without a diffusion step (diffusion.steps=0) has no profile, rather than a crash at export.
    metrics.write_text("\n".join(lines[:4]) + "\n")
    assert diffusion_loss_profile(metrics, warmup=10) is None


def test_object_crops_stay_on_the_object_and_scaling_gives_unit_variance():
    images = torch.ones(4, 3, 32, 32)
    images[:, :, 20:24, 4:8] = -1.0  # a small dark object in the lower left
    crops = ae.object_crops(images, 8, torch.Generator().manual_seed(0))
    assert crops.shape == (4, 3, 8, 8)
    assert ((crops < 0).flatten(1).any(1)).all()  # every window sees part of the object
    latents = 3.0 * torch.randn(1000, 4, 2, 2)
    assert (latents * ae.scaling_factor(latents)).std().item() == pytest.approx(1.0, rel=1e-3)


def test_the_autoencoder_loss_decodes_the_mean_unless_given_noise():
    """eps=None trains on z = μ (the default; the engine only uses μ), eps on z = μ + σ·eps."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[8, 8], down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=1, latent_channels=2)
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        mean = vae.encode(images).latent_dist.mean
        from_mean = (vae.decode(mean).sample - images).abs().mean()
        _, l1 = ae.autoencoder_loss(vae, images, None, 1e-6)
        _, l1_sampled = ae.autoencoder_loss(vae, images, torch.randn(mean.shape), 1e-6)
    assert l1.item() == pytest.approx(from_mean.item(), rel=1e-6)
    assert abs(l1_sampled.item() - from_mean.item()) > 1e-4


def test_the_toy_config_builds_the_shipped_architecture():
    """`make prior` (configs/prior/toy.yaml) must rebuild the model in assets/zero123-toy: every
    architecture entry of its VAE and UNet configs, GroupNorm grouping included."""
    import json
    from pathlib import Path

    from sjc3d.train_prior.config import load_training_config
    from sjc3d.train_prior.model import unet_config, vae_config

    shipped = Path(__file__).resolve().parent.parent / "assets" / "zero123-toy"
    if not shipped.is_dir():
        pytest.skip("assets/zero123-toy is not in this checkout")
    model = load_training_config("toy").model
    for part, built in (("vae", vae_config(model)), ("unet", unet_config(model))):
        saved = json.loads((shipped / part / "config.json").read_text())
        for key, value in built.items():
            if key == "scaling_factor":
                continue  # measured after the autoencoder is trained
            assert saved[key] == (list(value) if isinstance(value, tuple) else value), (part, key)


def test_the_toy_config_trains_the_shipped_recipe():
    """`make prior` must train the shipped model's recipe: the data and diffusion settings recorded
    in the shipped card's configuration block are those of configs/prior/toy.yaml.  A key the card
    lacks was added to the library after the model was trained, which then ran at its default."""
    from pathlib import Path

    import yaml

    from sjc3d.config import config_to_dict
    from sjc3d.train_prior.config import PriorTrainingConfig, load_training_config

    card = Path(__file__).resolve().parent.parent / "assets" / "zero123-toy" / "MODEL.md"
    if not card.is_file():
        pytest.skip("assets/zero123-toy is not in this checkout")
    recorded = yaml.safe_load(card.read_text().split("## Configuration\n```yaml\n")[1].split("```")[0])
    toy = config_to_dict(load_training_config("toy"))
    defaults = config_to_dict(PriorTrainingConfig())["diffusion"]
    assert {**defaults, **recorded["diffusion"]} == toy["diffusion"]
    assert {k: v for k, v in recorded["data"].items() if k != "root"} == {
        k: v for k, v in toy["data"].items() if k != "root"}


def test_the_shipped_autoencoder_keeps_the_colour_of_held_out_objects():
    """The shipped VAE must return a coloured object, not a grey one (the first shipped model
    did: one GroupNorm group per channel and sampled latents; train_prior/config.py).

    Chroma = a pixel's deviation from its own grey (the mean of R, G, B).  On the object's pixels
    of held-out views, the reconstruction's chroma error must be well under the chroma itself
    (which is what a grey reconstruction's error would be).
    """
    from pathlib import Path

    from diffusers import AutoencoderKL

    from sjc3d.datasets.make_views import ViewsSpec, procedural_object
    from sjc3d.datasets.raytrace import composite_on_white, render_views

    shipped = Path(__file__).resolve().parent.parent / "assets" / "zero123-toy"
    if not shipped.is_dir():
        pytest.skip("assets/zero123-toy is not in this checkout")
    vae = AutoencoderKL.from_pretrained(shipped / "vae", torch_dtype=torch.float32).eval()
    cameras = spherical_to_c2w(torch.tensor([10.0, 20.0]), torch.tensor([30.0, 200.0]), torch.tensor([2.0, 2.0]))
    views = torch.cat([composite_on_white(render_views(procedural_object(ViewsSpec(seed=0, split="test"), k), cameras, 64))
                       for k in range(4)]).permute(0, 3, 1, 2) * 2 - 1  # [8, 3, 64, 64] in [-1, 1]
    with torch.no_grad():
        reconstruction = vae.decode(vae.encode(views).latent_dist.mean).sample.clamp(-1, 1)
    on_object = (views < 0.95).any(1, keepdim=True).float()
    chroma = views - views.mean(1, keepdim=True)
    chroma_error = chroma - (reconstruction - reconstruction.mean(1, keepdim=True))
    mean_chroma, mean_error = (float((x.abs() * on_object).sum() / (3 * on_object.sum())) for x in (chroma, chroma_error))
    assert mean_chroma > 0.1  # the objects are coloured
    assert mean_error < 0.5 * mean_chroma


def test_the_context_reaches_the_resnets_through_the_time_embedding():
    """`model.unet_context_to_time`: with every cross-attention's value path cut, the UNet's output
    still depends on the context (it is added to the timestep embedding); without the option it
    does not.  The UNet keeps Zero-1-to-3's call signature."""
    from diffusers import UNet2DConditionModel

    from sjc3d.train_prior.config import ModelConfig
    from sjc3d.train_prior.model import unet_config

    def output_change(**options) -> float:
        cfg = ModelConfig(image_size=16, vae_channels=(8, 8), unet_channels=(16, 16), unet_cross_attention=(False, True),
                          embedding_dim=16, **options)
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**unet_config(cfg)).eval()
        for name, module in unet.named_modules():
            if name.endswith("attn2.to_v"):  # cross-attention can no longer carry the context
                torch.nn.init.zeros_(module.weight)
        x, t = torch.randn(2, 8, 8, 8), torch.tensor([10, 500])
        context = torch.randn(2, 1, 16)
        with torch.no_grad():
            a = unet(x, t, encoder_hidden_states=context).sample
            b = unet(x, t, encoder_hidden_states=-context).sample
        return float((a - b).abs().max())

    assert output_change() == 0.0
    assert output_change(unet_context_to_time=True) > 1e-3


def test_film_scales_each_resnets_features_by_the_time_embedding():
    """`model.unet_film`: every ResNet block's timestep projection gives a scale and a shift per
    channel (twice the channels; diffusers' "scale_shift" norm) instead of one bias, and the
    embedding still changes the block's output."""
    from diffusers import UNet2DConditionModel

    from sjc3d.train_prior.config import ModelConfig
    from sjc3d.train_prior.model import unet_config

    def first_resnet(**options):
        cfg = ModelConfig(image_size=16, vae_channels=(8, 8), unet_channels=(16, 16), unet_cross_attention=(False, True),
                          embedding_dim=16, unet_context_to_time=True, **options)
        torch.manual_seed(0)
        return UNet2DConditionModel(**unet_config(cfg)).eval().down_blocks[0].resnets[0]

    def embedding_effect(resnet) -> float:
        """How much changing the time embedding changes the block's output on fixed features."""
        x = torch.randn(1, 16, 8, 8)
        with torch.no_grad():
            a = resnet(x, torch.zeros(1, resnet.time_emb_proj.in_features))
            b = resnet(x, 3 * torch.ones(1, resnet.time_emb_proj.in_features))
        return float((a - b).abs().mean())

    film, bias = first_resnet(unet_film=True), first_resnet()
    assert film.time_emb_proj.out_features == 2 * 16 and bias.time_emb_proj.out_features == 16
    assert film.time_embedding_norm == "scale_shift" and bias.time_embedding_norm == "default"
    assert embedding_effect(film) > 1e-3
