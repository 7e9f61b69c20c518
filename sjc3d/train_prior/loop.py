"""`sjc3d train-prior`: train (or fine-tune) a view-conditioned latent diffusion model.

    views ──► stage 1: autoencoder (new models only) ──► frozen; scaling factor; cache latents
          ──► stage 2: UNet + image encoder + pose projection on the Zero-1-to-3 objective
          ──► EMA weights ──► <run>/model/  (diffusers folder, public layout) + MODEL.md

One process or many: the same command runs under `accelerate launch` (multi-GPU, multi-node,
or several CPU processes with gloo).  Each step draws its samples for the whole global batch
from a generator seeded by (seed, step) and every process takes its slice, so a run's loss
curve does not depend on the number of processes, and `--resume` continues exactly.  Only the
main process writes files.

The run directory:

    <run>/config.yaml            the resolved configuration
    <run>/metrics.jsonl          {"stage", "step", "loss", ...} every run.log_every steps
    <run>/checkpoints/last.pt    stage, step, weights, EMA, optimiser (atomic)
    <run>/samples/*.png          held-out views: input | truth | DDIM sample
    <run>/model/                 the trained prior: `sjc3d fit --model <run>/model`
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from sjc3d.atomic import atomic_write_text
from sjc3d.config import dump_config
from sjc3d.priors.zero123 import epsilon_from_velocity, prediction_type_of
from sjc3d.progress import ProgressBar
from sjc3d.train_prior import autoencoder as ae
from sjc3d.train_prior import diffusion as dm
from sjc3d.train_prior.config import PriorTrainingConfig
from sjc3d.train_prior.data import ViewSet, split_objects
from sjc3d.train_prior.model import PriorComponents

VALIDATION_PAIRS = 256


@dataclass(frozen=True)
class PriorRunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def model(self) -> Path:
        return self.root / "model"


@dataclass
class StageLog:
    """What a stage reports to the model card."""

    steps: int = 0
    wall_time: float = 0.0
    final_loss: float = float("nan")  # mean training loss over the stage's last log interval
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- wrappers


class ConditionedDenoiser(nn.Module):
    """ε_θ(x_t ‖ c_concat, t, P([CLIP(x_cond) ‖ T])): the trainable part of stage 2 in one module.

    One module so that one DistributedDataParallel wrapper synchronises all of its gradients.
    """

    def __init__(self, parts: PriorComponents, null_context: str):
        super().__init__()
        self.unet, self.image_encoder, self.projection = parts.unet, parts.image_encoder, parts.projection
        self.null_context = null_context

    def forward(self, x_t: Tensor, concat: Tensor, t: Tensor, cond_images: Tensor, pose: Tensor,
                drop_image: Tensor) -> Tensor:
        context = dm.cross_attention_context(self.image_encoder, self.projection, cond_images, pose, drop_image,
                                             self.null_context)
        return self.unet(torch.cat([x_t, concat], dim=1), t, encoder_hidden_states=context).sample


class AutoencoderObjective(nn.Module):
    """Stage 1's loss as a module's forward (for the same reason)."""

    def __init__(self, vae: nn.Module, kl_weight: float):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, images: Tensor, eps: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        return ae.autoencoder_loss(self.vae, images, eps, self.kl_weight)


# ----------------------------------------------------------------------------- helpers


def rank_slice(batch: int, accelerator) -> tuple[int, int]:
    """This process's share [start, stop) of a global batch (equal shares)."""
    world, rank = accelerator.num_processes, accelerator.process_index
    if batch % world:
        from sjc3d.errors import ConfigError

        raise ConfigError(f"the global batch {batch} does not split evenly over {world} processes")
    share = batch // world
    return rank * share, (rank + 1) * share


def adamw(params, lr: float, weight_decay: float, device: torch.device, beta2: float = 0.999) -> torch.optim.AdamW:
    """AdamW, with torch's fused kernel where it has one (CPU, CUDA): the same update in one pass
    over all tensors instead of a loop over them (≈ 0.03 s of the toy UNet's 0.3 s step on 2 CPU cores).
    `beta2` is the decay of the squared-gradient average (torch's default 0.999)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, beta2), weight_decay=weight_decay, fused=fused or None)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """`optimizer.load_state_dict(state)`, each moment laid out in memory as its parameter is.

    A checkpoint written by a run whose weights were channels-last (`diffusion.compile`) holds
    channels-last moments, and one from a plain run contiguous ones; torch's fused AdamW walks
    parameter, gradient and moments as flat memory, so a moment laid out unlike its parameter is
    silently applied to the wrong elements.
    """
    optimizer.load_state_dict(state)
    for param, moments in optimizer.state.items():
        for key, value in moments.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                moments[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def autocast(device: torch.device, arithmetic: str):
    """A stage's forward-pass context: bf16 autocast when `arithmetic` is "bf16", else float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=arithmetic == "bf16")


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class Metrics:
    """metrics.jsonl of the main process (other processes write nothing)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def load_training_checkpoint(path: Path) -> dict:
    """A train-prior checkpoint, read without executing pickled code; a bad file is one line."""
    from sjc3d.errors import InputError

    if not path.is_file():
        raise InputError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise InputError(f"checkpoint {path} is corrupt or not a train-prior checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("stage") not in ("autoencoder", "diffusion"):
        raise InputError(f"checkpoint {path} is not a train-prior checkpoint (no training stage recorded)")
    return state


def truncate_metrics(path: Path, stage: str, step: int) -> None:
    """Drop lines logged after the checkpoint being resumed (a killed run may have written them)."""
    if not path.is_file():
        return
    order = {"autoencoder": 0, "diffusion": 1}
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (order.get(record.get("stage"), 2), record.get("step", 0)) <= (order[stage], step):
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


# ----------------------------------------------------------------------------- the trainer


class PriorTrainer:
    """Runs the stages for one configuration into one run directory (see the module doc)."""

    def __init__(self, cfg: PriorTrainingConfig, views: ViewSet, parts: PriorComponents, run_dir: Path,
                 accelerator, progress: bool = True, stop=None):
        self.cfg, self.views, self.parts, self.accelerator = cfg, views, parts, accelerator
        self.paths = PriorRunPaths(Path(run_dir))
        self.main = accelerator.is_main_process
        self.progress = progress and self.main
        self.stop = stop  # anything with is_set(): checkpoint and return at the next step
        self.train_objects, self.val_objects = split_objects(views.n_objects, cfg.data.held_out_objects, cfg.run.seed)
        self.metrics = Metrics(self.paths.metrics, self.main)
        # Wall time and losses by stage; "setup" is the rest (data, caching, samples, export).
        self.logs = {"setup": StageLog(), "autoencoder": StageLog(), "diffusion": StageLog()}
        self.latents: Optional[Tensor] = None  # [N, c, h, w] unscaled posterior means of every view
        self.ema: Optional[nn.Module] = None
        self.stopped = False

    # -- checkpoints --------------------------------------------------------------------------

    def save(self, stage: str, step: int, trainable: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        from sjc3d.rundir import save_checkpoint

        if not self.main:
            return
        state = {
            "stage": stage, "step": step,
            "vae": self.parts.vae.state_dict(),
            "denoiser": self.accelerator.unwrap_model(trainable).state_dict() if stage == "diffusion" else None,
            "ema": self.ema.state_dict() if (stage == "diffusion" and self.ema is not None) else None,
            "optimizer": optimizer.state_dict(),
            "scaling_factor": float(self.parts.vae.config.scaling_factor),
            "logs": {k: vars(v) for k, v in self.logs.items()},
        }
        from sjc3d.preemption import signals_deferred

        with signals_deferred():  # a SIGTERM/Ctrl-C arriving now waits until the file is whole
            save_checkpoint(self.paths.checkpoint, state)

    # -- stage 1 -------------------------------------------------------------------------------

    def train_autoencoder(self, resume: Optional[dict]) -> None:
        cfg, acc = self.cfg.autoencoder, self.accelerator
        objective = AutoencoderObjective(self.parts.vae, cfg.kl_weight)
        optimizer = adamw(self.parts.vae.parameters(), cfg.lr, cfg.weight_decay, acc.device)
        start = 0
        if resume is not None:
            self.parts.vae.load_state_dict(resume["vae"])
            load_optimizer_state(optimizer, resume["optimizer"])
            start = int(resume["step"])
        objective, optimizer = acc.prepare(objective, optimizer)
        train_views = self.views.views_of(self.train_objects)
        lo, hi = rank_slice(cfg.batch, acc)
        factor = 2 ** (len(self.parts.vae.config.block_out_channels) - 1)
        crop = cfg.crop if 0 < cfg.crop < self.views.image_size else self.views.image_size
        latent_shape = (self.parts.vae.config.latent_channels, crop // factor, crop // factor)
        log = self.logs["autoencoder"]
        bar = ProgressBar(cfg.steps, "autoencoder", start, self.cfg.run.log_every, enabled=self.progress)
        t0, recent = time.perf_counter(), []
        session_start = t0  # rates over this session (t0 restarts at each checkpoint for the wall-time record)
        for step in range(start + 1, cfg.steps + 1):
            g = dm.step_generator(self.cfg.run.seed + 17, step)
            index = train_views[torch.randint(len(train_views), (cfg.batch,), generator=g)]
            images = ae.object_crops(self.views.model_input(index), crop, g)
            eps = None  # decode the posterior mean
            if cfg.sample_posterior:
                eps = torch.randn((cfg.batch, *latent_shape), generator=g)[lo:hi].to(acc.device)
            with autocast(acc.device, cfg.autocast):
                loss, l1 = objective(images[lo:hi].to(acc.device), eps)
            optimizer.zero_grad(set_to_none=True)
            acc.backward(loss)
            optimizer.step()
            recent.append(l1.detach())
            if step % self.cfg.run.log_every == 0 or step == cfg.steps:
                mean_l1 = float(acc.reduce(torch.stack(recent).mean(), "mean"))
                recent = []
                log.final_loss, log.steps = mean_l1, step
                rate = (step - start) / (time.perf_counter() - session_start)
                self.metrics.write({"stage": "autoencoder", "step": step, "l1": mean_l1, "it_per_s": rate})
                bar.update(step, f"L1 {mean_l1:.4f}  {rate:.2f} it/s")
            stopping = self._stop_requested()
            if step % self.cfg.run.checkpoint_every == 0 or step == cfg.steps or stopping:
                log.wall_time += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save("autoencoder", step, objective, optimizer)
                if stopping and step < cfg.steps:
                    self.stopped = True
                    break
        bar.close()
        log.wall_time += time.perf_counter() - t0
        self.parts.vae = acc.unwrap_model(objective).vae

    # -- between the stages ----------------------------------------------------------------------

    def freeze_autoencoder(self, measure_scale: bool) -> None:
        """Freeze the VAE, cache every view's latent, and (new models) set its scaling factor."""
        device = self.accelerator.device
        vae = self.parts.vae.to(device).eval().requires_grad_(False)
        images = self.views.model_input(torch.arange(len(self.views.images)))
        with autocast(device, self.cfg.autoencoder.autocast):  # the stage's own arithmetic (bf16: 2.2x faster)
            self.latents = ae.latent_means(vae, images.to(device)).cpu()
        if measure_scale:
            train_latents = self.latents[self.views.views_of(self.train_objects)]
            vae.register_to_config(scaling_factor=ae.scaling_factor(train_latents))

    # -- stage 2 -------------------------------------------------------------------------------

    def train_diffusion(self, resume: Optional[dict]) -> None:
        cfg, acc, parts = self.cfg.diffusion, self.accelerator, self.parts
        parts.image_encoder.requires_grad_(cfg.train_image_encoder)
        denoiser = ConditionedDenoiser(parts, cfg.null_context).to(acc.device).train()
        if cfg.compile:
            # Channels-last (NHWC) weights: the compiled step is ~10 % faster with them (README,
            # "Training time").  The EMA copy inherits the layout; the exported weights are contiguous.
            denoiser = denoiser.to(memory_format=torch.channels_last)
        trainable = [p for p in denoiser.parameters() if p.requires_grad]
        optimizer = adamw(trainable, cfg.lr, cfg.weight_decay, acc.device, cfg.adam_beta2)
        self.ema = copy.deepcopy(denoiser).eval().requires_grad_(False)
        start = 0
        if resume is not None and resume["stage"] == "diffusion":
            denoiser.load_state_dict(resume["denoiser"])
            self.ema.load_state_dict(resume["ema"])
            load_optimizer_state(optimizer, resume["optimizer"])
            start = int(resume["step"])
        ema_params = [p for p in self.ema.parameters()]
        live_params = [p for p in denoiser.parameters()]
        denoiser, optimizer = acc.prepare(denoiser, optimizer)
        # The compiled module runs the steps; `denoiser` itself is what is checkpointed (a compiled
        # module's state_dict names every tensor `_orig_mod.…`, which a resumed run could not load).
        forward = denoiser
        if cfg.compile:
            # diffusers' up-samplers call an lru_cache'd version check; Dynamo warns about it at every
            # trace, pages of text that say nothing to a user.
            warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
            forward = torch.compile(denoiser)

        alphas = _alphas_cumprod(parts.scheduler_config)
        scale = float(parts.vae.config.scaling_factor)
        lo, hi = rank_slice(cfg.batch, acc)
        log = self.logs["diffusion"]
        bar = ProgressBar(cfg.steps, "diffusion", start, self.cfg.run.log_every, enabled=self.progress)
        t0, recent = time.perf_counter(), []
        session_start = t0  # rates over this session (t0 restarts at each checkpoint for the wall-time record)
        for step in range(start + 1, cfg.steps + 1):
            lr_scale = dm.learning_rate_scale(step - 1, cfg.warmup, cfg.lr_schedule, cfg.steps)
            set_learning_rate(optimizer, cfg.lr * lr_scale)
            draw = dm.draw_pairs(self.views.offsets, self.train_objects, cfg.batch, tuple(self.latents.shape[1:]),
                                 len(alphas), dm.step_generator(self.cfg.run.seed, step),
                                 cfg.same_view_fraction).slice(lo, hi)
            loss = self._denoising_loss(forward, draw, alphas, scale, cfg.snr_gamma, cfg.autocast)
            optimizer.zero_grad(set_to_none=True)
            acc.backward(loss)
            if cfg.grad_clip > 0:
                acc.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            dm.ema_update(ema_params, live_params, dm.ema_decay_at(step, cfg.ema_decay))
            recent.append(loss.detach())
            if step % self.cfg.run.log_every == 0 or step == cfg.steps:
                mean = float(acc.reduce(torch.stack(recent).mean(), "mean"))
                recent = []
                log.final_loss, log.steps = mean, step
                rate = (step - start) / (time.perf_counter() - session_start)
                self.metrics.write({"stage": "diffusion", "step": step, "loss": mean, "it_per_s": rate,
                                    "lr": optimizer.param_groups[0]["lr"]})
                bar.update(step, f"loss {mean:.4f}  {rate:.2f} it/s")
            sample_now = self.cfg.run.sample_every > 0 and step % self.cfg.run.sample_every == 0 and step < cfg.steps
            if sample_now:
                self.write_samples(f"step_{step:06d}")
            stopping = self._stop_requested()
            if step % self.cfg.run.checkpoint_every == 0 or step == cfg.steps or stopping:
                log.wall_time += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save("diffusion", step, denoiser, optimizer)
                if stopping and step < cfg.steps:
                    self.stopped = True
                    break
        bar.close()
        log.wall_time += time.perf_counter() - t0

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts, as its scheduler config records it ("epsilon" or "v_prediction")."""
        return prediction_type_of(self.parts.scheduler_config)

    def _denoising_loss(self, denoiser: nn.Module, draw: dm.PairBatch, alphas: Tensor, scale: float,
                        snr_gamma: float = 0.0, arithmetic: str = "float32", as_epsilon: bool = False) -> Tensor:
        """The loss of one batch of pairs against the model's own target (ε or v; weighted when
        `snr_gamma` > 0).  `as_epsilon`: the plain ε loss whatever the model predicts (its prediction
        turned into ε first), so that validation losses compare across prediction types."""
        device, u = self.accelerator.device, self.cfg.diffusion.uncond
        z0 = self.latents[draw.target].to(device) * scale
        noise, t = draw.noise.to(device), draw.t.to(device)
        x_t = dm.noisy_latents(z0, noise, t, alphas)
        drop_image, drop_concat = dm.dropout_masks(draw.r, u)
        concat = self.latents[draw.cond].to(device) * (~drop_concat).float().view(-1, 1, 1, 1).to(device)
        pose = dm.relative_poses(self.views.c2w, draw.cond, draw.target).to(device)
        cond_images = self.views.model_input(draw.cond).to(device)
        with autocast(device, arithmetic):
            prediction = denoiser(x_t, concat, t, cond_images, pose, drop_image.to(device))
        prediction = prediction.float()  # the loss in float32
        if as_epsilon:
            if self.prediction_type == "v_prediction":
                prediction = epsilon_from_velocity(prediction, x_t, alphas.to(device)[t].float())
            return dm.prediction_loss(prediction, noise, torch.ones_like(t, dtype=torch.float32))
        weights = dm.min_snr_weights(t, alphas, snr_gamma, self.prediction_type)
        target = dm.prediction_target(z0, noise, t, alphas, self.prediction_type)
        return dm.prediction_loss(prediction, target, weights)

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean ε loss of the EMA model on fixed pairs of held-out objects (no dropout, unweighted)."""
        alphas = _alphas_cumprod(self.parts.scheduler_config)
        scale = float(self.parts.vae.config.scaling_factor)
        draw = dm.draw_pairs(self.views.offsets, self.val_objects, VALIDATION_PAIRS, tuple(self.latents.shape[1:]),
                             len(alphas), dm.step_generator(self.cfg.run.seed + 1, 0))
        draw.r.fill_(1.0)  # conditional: nothing dropped
        losses = [self._denoising_loss(self.ema.to(self.accelerator.device), draw.slice(i, i + 64), alphas, scale,
                                       as_epsilon=True)
                  for i in range(0, VALIDATION_PAIRS, 64)]
        return float(torch.stack(losses).mean())

    # -- samples and export --------------------------------------------------------------------

    def ema_components(self) -> PriorComponents:
        """The EMA networks with the frozen VAE: the model that is shipped."""
        return PriorComponents(self.ema.unet, self.parts.vae, self.ema.image_encoder, self.ema.projection,
                               self.parts.scheduler_config)

    @torch.no_grad()
    def write_samples(self, name: str) -> Optional[Path]:
        """Grid of held-out pairs: input | true target | DDIM sample of the EMA model (one row each)."""
        if not self.main:
            return None
        from sjc3d.image import save_png
        from sjc3d.train_prior.samples import sample_grid

        grid = sample_grid(self.ema_components(), self.views, self.val_objects, self.cfg.run.samples,
                           self.cfg.run.sample_steps, self.cfg.run.sample_guidance, self.cfg.run.seed)
        return save_png(self.paths.samples / f"{name}.png", grid)

    def export(self) -> Path:
        from sjc3d.train_prior.card import write_model_card
        from sjc3d.train_prior.model import save_components

        dtype = getattr(torch, self.cfg.run.weights_dtype)
        folder = save_components(self.ema_components(), self.paths.model, dtype)
        write_model_card(folder, self.cfg, self.views, self.train_objects, self.val_objects, self.logs,
                         self.validation_loss(), self.paths.metrics)
        return folder

    def _stop_requested(self) -> bool:
        """Whether any process was asked to stop (checked once per step by every process).

        With several processes a signal may reach them at different steps; they agree on the
        maximum (one scalar all-reduce a step) so that all checkpoint and leave at the same step.
        """
        local = self.stop is not None and self.stop.is_set()
        if self.accelerator.num_processes == 1:
            return local
        flag = torch.tensor([1.0 if local else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.gather(flag).max().item() > 0)


def _alphas_cumprod(scheduler_config: dict) -> Tensor:
    from sjc3d.priors.zero123 import alphas_cumprod_from_config

    return alphas_cumprod_from_config(scheduler_config)


def write_config(paths: PriorRunPaths, cfg: PriorTrainingConfig) -> None:
    atomic_write_text(paths.config, dump_config(cfg))
