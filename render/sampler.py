"""The structure-guided video sampler: our own denoising loop over the render's diffusers components.

One readable loop in the manner of diffusers' ``AnimateDiffControlNetPipeline.__call__`` (whose math it
reproduces exactly with ``tau=1``), plus what Animate-A-Story's renderer needs::

    from render.sampler import StructureGuidedSampler

    sampler = StructureGuidedSampler(components)             # a render.RenderComponents
    result = sampler("a knight riding a horse", negative_prompt="blurry",
                     conditioning=controlnet_condition(depth),  # T x 3 x H x W in [0, 1]
                     steps=25, guidance_scale=7.5, tau=0.6, seed=0)
    result.frames      # T x H x W x 3 float in [0, 1] ("pt"), uint8 numpy ("np"), None ("latent")
    result.latents     # 1 x 4 x T x H/8 x W/8, the final latents

* **Structure window** ``tau``: the ControlNet conditions step ``i`` only while ``(i + 1) / steps <= tau``
  (diffusers' ``control_guidance_end=tau``); after that it is not called at all.
* **Control strength** ``controlnet_scale``: a float, per step, or per step and frame
  (:mod:`render.control_schedule`); a step whose frames all have strength 0 skips the ControlNet.
* **Per-step text embeddings** ``prompt_embeds_for_step(step_index, timestep) -> (cond, uncond or None)``
  (TimeInv characters: one embedding per timestep); ``None`` for uncond keeps the negative prompt's.
* **Long shots**: more frames than ``context_window`` (16) are denoised in overlapping windows (stride 8)
  through UNet *and* ControlNet, noise predictions fused with pyramid weights (:mod:`render.context_windows`).
* **IP-Adapter image conditioning** ``ip_adapter_image_embeds``: one tensor per IP-Adapter installed on the UNet
  (:mod:`render.ip_adapter`), each batched ``[uncond, cond]`` with classifier-free guidance (2 x images x D, or
  2 x images x tokens x D for the plus variants; 1 x ... without guidance), the layout of diffusers'
  ``prepare_ip_adapter_image_embeds``. They reach the UNet as ``added_cond_kwargs={"image_embeds": ...}``
  unrepeated: the motion UNet projects them and repeats them per frame itself (``UNetMotionModel.forward``), as
  diffusers' ``AnimateDiffControlNetPipeline`` relies on; the ControlNet does not get them (nor does it there).
  One image conditioning for all frames (and all context windows).
* **SparseCtrl** ``sparse_controlnet`` + ``sparse_condition`` (:mod:`render.sparse_control`): a
  ``SparseControlNetModel`` conditioned on a few frames (a keyframe at frame 0, or the first and last frames of a
  transition), prepared as diffusers' ``AnimateDiffSparseControlNetPipeline`` does (VAE latents for the RGB model,
  a mask channel at the conditioned frames), called at every step (the pipeline has no control_guidance_start /
  end for it, so no window of its own) with the 5-D latents and batch-1 conditions. Its residuals are *added* to
  the depth ControlNet's when both run (diffusers' ``MultiControlNetModel`` sums them); the depth ControlNet keeps
  its tau window, strengths and call count. With ``conditioning=None`` there is no depth ControlNet at all (give
  ``num_frames``; the size defaults to the sparse images'); with only SparseCtrl the loop equals the pipeline's.
  In context windows the conditioned frames are renumbered inside each window that contains one; a window that
  contains none gets **no** SparseCtrl residuals (rather than a call with an empty mask, which would still add
  the model's unconditioned residuals to frames far from any keyframe); its frames are steered only through
  the overlap fusion with conditioned windows. ``SampleResult.sparse_calls`` counts its calls (per window).
* **Prompt travel** ``prompt_travel`` (a :class:`PromptTravel`): frame ``f`` sees ``(1 - w[f])`` times the
  prompt's embeddings plus ``w[f]`` times a second prompt's (both halves with guidance, each with its own per-step
  hook), as AnimateDiff's prompt travel and ComfyUI's prompt schedules interpolate conditionings per frame; the
  motion modules keep the frames one clip. A generated transition travels from one shot's caption to the next's
  (:mod:`render.transitions`). Without it every frame gets the same text (the text rows repeated per frame).
* **A batch of independent samples** (a story's keyframes, :mod:`render.keyframes`): ``prompt_embeds`` with B rows
  (or B prompts), ``conditioning`` with B x T frames (sample after sample), ``seed`` a list of B seeds. Each sample
  gets its own noise from its own generator (``randn_tensor`` with a list of generators, as diffusers does for
  ``num_images_per_prompt``), and so does each stochastic scheduler step (DDIM with eta > 0, LCM), so every
  sample is the one its seed would give alone, up to float rounding of the larger matrix products. Negative
  embeddings have B rows, or one row for all samples. Batches of several samples take a single context window,
  no SparseCtrl, and IP-Adapter embeddings with 2 x B rows (``[uncond x B, cond x B]``); ``frames`` then holds
  B x T frames.
* FreeU (``freeu=True`` or a dict of s1, s2, b1, b2), VAE slicing / tiling, autocast on CUDA, and model CPU
  offload (``components.enable_model_cpu_offload()``: each model on the GPU only for its phase).

Classifier-free guidance batches ``[uncond, cond]`` like diffusers; ``guidance_scale <= 1`` turns it off.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from render.context_windows import context_windows, window_weights
from render.control_schedule import ScaleSpec, step_scales
from render.sparse_control import PreparedSparseCondition, SparseCondition, check_sparse_controlnet

FREEU_SD15 = {"s1": 0.9, "s2": 0.2, "b1": 1.5, "b2": 1.6}  # FreeU paper values for SD1.5
OUTPUT_TYPES = ("pt", "np", "latent")

EmbedsHook = Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class PromptTravel:
    """A second prompt the frames travel to: frame ``f``'s text is ``(1 - weights[f]) * prompt + weights[f] * this``
    (``weights``: one number in [0, 1] per frame). ``negative_prompt_embeds`` None: the sampler's own negative;
    ``prompt_embeds_for_step``: this prompt's per-step hook (TimeInv characters), as the sampler's."""

    prompt_embeds: torch.Tensor
    weights: tuple[float, ...]
    negative_prompt_embeds: torch.Tensor | None = None
    prompt_embeds_for_step: EmbedsHook | None = None

    @classmethod
    def linear(cls, prompt_embeds: torch.Tensor, num_frames: int, **kwargs) -> PromptTravel:
        """From the sampler's prompt at frame 0 to this one at the last frame, in equal steps."""
        return cls(prompt_embeds, tuple(f / max(num_frames - 1, 1) for f in range(num_frames)), **kwargs)


@dataclass
class SampleResult:
    """``frames``: T x H x W x 3 (float tensor in [0, 1] for "pt", uint8 array for "np", None for "latent");
    ``latents``: B x C x T x h x w (B: the batch, 1 but for a batch of samples; ``frames`` then B x T, sample after
    sample); ``controlnet_calls``: ControlNet forward calls (per window); ``windows``:
    the frame index lists denoised together; ``timesteps``: the schedule; ``sparse_calls``: SparseCtrl forward
    calls (per window)."""

    frames: torch.Tensor | np.ndarray | None
    latents: torch.Tensor
    controlnet_calls: int = 0
    windows: list[list[int]] = field(default_factory=list)
    timesteps: list[int] = field(default_factory=list)
    sparse_calls: int = 0


class StructureGuidedSampler:
    """Depth-guided AnimateDiff + ControlNet sampling over a :class:`storyreel.models.loading.RenderComponents`."""

    def __init__(self, components, scheduler=None):
        self.components = components
        self.scheduler = scheduler if scheduler is not None else components.scheduler

    # -- text ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompt: str | list[str]) -> torch.Tensor:
        """Plain CLIP encoding (the pipeline's ``encode_prompt`` without LoRA scale or clip skip): B x L x D."""
        c = self.components
        tokens = c.tokenizer(prompt, padding="max_length", max_length=c.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        mask = None
        if getattr(c.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(c.text_encoder.device)
        embeds = c.text_encoder(tokens.input_ids.to(c.text_encoder.device), attention_mask=mask)[0]
        return embeds.to(dtype=c.text_encoder.dtype, device=c.device)

    # -- sampling ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | None = None, negative_prompt: str | None = None, *,
                 conditioning: torch.Tensor | list[torch.Tensor] | None, num_frames: int | None = None,
                 height: int | None = None, width: int | None = None, steps: int = 25,
                 guidance_scale: float = 7.5, tau: float = 1.0, controlnet_scale: ScaleSpec = 1.0,
                 seed: int | list[int] | None = None, generator: torch.Generator | list | None = None,
                 eta: float = 0.0,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 prompt_embeds_for_step: EmbedsHook | None = None, latents: torch.Tensor | None = None,
                 context_window: int = 16, context_stride: int = 8, context_weighting: str = "pyramid",
                 output_type: str = "pt", decode_chunk_size: int = 16, freeu: bool | dict = False,
                 vae_slicing: bool = False, vae_tiling: bool = False, autocast_dtype: torch.dtype | None = None,
                 callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                 ip_adapter_image_embeds: list[torch.Tensor] | None = None, sparse_controlnet=None,
                 sparse_condition: SparseCondition | None = None,
                 prompt_travel: PromptTravel | None = None) -> SampleResult:
        c = self.components
        scheduler = self.scheduler
        device = c.device
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; choose one of {', '.join(OUTPUT_TYPES)}")

        if (sparse_controlnet is None) != (sparse_condition is None):
            raise ValueError("SparseCtrl needs both sparse_controlnet (a SparseControlNetModel) and sparse_condition "
                             "(a render.sparse_control.SparseCondition)")
        if sparse_controlnet is not None:
            check_sparse_controlnet(sparse_controlnet, c)
        batch = _batch_size(prompt, prompt_embeds, seed)
        if batch > 1 and sparse_controlnet is not None:
            raise ValueError(f"a batch of {batch} samples cannot take SparseCtrl: render them one at a time")

        # 1. Conditioning: T x 3 x H x W in [0, 1] (a list of 3 x H x W frames is stacked); None: no depth ControlNet.
        if conditioning is None:
            if num_frames is None:
                raise ValueError("without a depth conditioning, give num_frames")
            if (height is None or width is None) and sparse_condition is None:
                raise ValueError("without a depth conditioning, give height and width")
            sparse_height, sparse_width = sparse_condition.size if sparse_condition is not None else (None, None)
            height, width = height or sparse_height, width or sparse_width
            cond = None
        else:
            cond = torch.stack(list(conditioning)) if isinstance(conditioning, (list, tuple)) else conditioning
            if cond.ndim != 4 or cond.shape[1] != 3:
                raise ValueError(f"conditioning must be T x 3 x H x W, got shape {tuple(cond.shape)}")
            num_frames = num_frames or cond.shape[0] // batch
            if cond.shape[0] != batch * num_frames:
                raise ValueError(f"conditioning has {cond.shape[0]} frames for num_frames={num_frames}"
                                 + (f" in each of {batch} samples" if batch > 1 else ""))
            height = height or cond.shape[2]
            width = width or cond.shape[3]
        scale = c.vae_scale_factor
        if height % scale or width % scale:
            raise ValueError(f"height and width must be multiples of {scale}, got {height}x{width}")
        if cond is not None:
            cond = cond.to(dtype=torch.float32)
            if tuple(cond.shape[2:]) != (height, width):
                cond = F.interpolate(cond, size=(height, width), mode="bilinear", align_corners=False)
            cond = cond.to(device=device, dtype=c.controlnet.dtype)

        # 2. Text: [uncond, cond] for classifier-free guidance.
        do_cfg = guidance_scale > 1.0
        if prompt_embeds is None or (do_cfg and negative_prompt_embeds is None):
            c.use("text_encoder")  # CPU offload: only the text encoder on the GPU (no-op otherwise)
        if prompt_embeds is None:
            if prompt is None:
                raise ValueError("give a prompt or prompt_embeds")
            prompt_embeds = self.encode_prompt(prompt)
        prompt_embeds = _as_batch(prompt_embeds).to(device=device, dtype=c.text_encoder.dtype)
        if do_cfg and negative_prompt_embeds is None:
            negative_prompt_embeds = self.encode_prompt(negative_prompt or "")
        if prompt_embeds.shape[0] != batch:
            raise ValueError(f"prompt_embeds has {prompt_embeds.shape[0]} rows for a batch of {batch} samples")
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = _as_batch(negative_prompt_embeds).to(device=device, dtype=prompt_embeds.dtype)
            negative_prompt_embeds = _rows_for_batch(negative_prompt_embeds, batch, "negative_prompt_embeds")
            if do_cfg:
                check_same_length(prompt_embeds, negative_prompt_embeds)
        travel = None
        if prompt_travel is not None:  # the second prompt's embeddings and the per-frame weights
            if batch > 1:
                raise ValueError("prompt_travel takes one sample, not a batch")
            if len(prompt_travel.weights) != num_frames:
                raise ValueError(f"prompt_travel has {len(prompt_travel.weights)} weights for {num_frames} frames")
            end_cond = _as_batch(prompt_travel.prompt_embeds).to(device=device, dtype=prompt_embeds.dtype)
            end_uncond = prompt_travel.negative_prompt_embeds
            end_uncond = (negative_prompt_embeds if end_uncond is None
                          else _as_batch(end_uncond).to(device=device, dtype=prompt_embeds.dtype))
            check_same_length(prompt_embeds, end_cond, " (the prompt and prompt_travel's prompt)")
            weights_f = torch.tensor(prompt_travel.weights, device=device, dtype=prompt_embeds.dtype)
            travel = (end_cond, end_uncond, prompt_travel.prompt_embeds_for_step, weights_f)
        image_embeds = _ip_adapter_embeds(c.unet, ip_adapter_image_embeds, do_cfg, device, batch)
        sparse = None
        if sparse_condition is not None:  # the keyframes through the VAE (RGB SparseCtrl), placed at their frames
            c.use("vae")
            sparse = sparse_condition.prepare(sparse_controlnet, c.vae, num_frames, height, width, device=device)

        # 3. Schedule, noise, control strengths, windows.
        scheduler.set_timesteps(steps, device=device)
        timesteps = scheduler.timesteps
        if generator is None and seed is not None:  # a batch: one generator per sample, seeded with its seed
            generator = ([torch.Generator(device="cpu").manual_seed(s) for s in seed] if isinstance(seed, list)
                         else torch.Generator(device="cpu").manual_seed(seed))
        shape = (batch, c.unet.config.in_channels, num_frames, height // scale, width // scale)
        if latents is None:
            from diffusers.utils.torch_utils import randn_tensor
            latents = randn_tensor(shape, generator=generator, device=device, dtype=prompt_embeds.dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents have shape {tuple(latents.shape)}; this sampling needs {shape}")
            latents = latents.to(device=device, dtype=prompt_embeds.dtype)
        latents = latents * scheduler.init_noise_sigma
        step_kwargs = _extra_step_kwargs(scheduler, generator, eta)
        scales = step_scales(controlnet_scale, tau, len(timesteps), num_frames)
        if cond is None:  # no depth ControlNet
            scales = [None] * len(timesteps)
        windows = context_windows(num_frames, context_window, context_stride)
        if batch > 1 and len(windows) > 1:
            raise ValueError(f"a batch of {batch} samples of {num_frames} frames needs context windows: "
                             f"render them one at a time, or at most {context_window} frames each")
        weights = window_weights(context_window, context_weighting).to(device=device, dtype=latents.dtype)
        controlnet_calls = 0
        sparse_calls = 0
        sparse_windows = [sparse.window(frames) if sparse is not None else None for frames in windows]

        # CPU offload: the denoising models (and the text encoder when embeddings change per step) on the GPU.
        c.use("unet", *(("controlnet",) if cond is not None else ()),
              *(("text_encoder",) if prompt_embeds_for_step is not None else ()))
        with contextlib.ExitStack() as stack:
            stack.enter_context(_freeu(c.unet, freeu))
            stack.callback(c.use)  # CPU offload: everything back on the CPU when the render ends or fails
            if sparse_controlnet is not None:
                stack.enter_context(_sparse_on(sparse_controlnet, device, c.offload is not None))
            if autocast_dtype is not None and device.type == "cuda":
                stack.enter_context(torch.autocast("cuda", dtype=autocast_dtype))
            # 4. The denoising loop.
            for i, t in enumerate(timesteps):
                text = self._text_for_step(i, t, prompt_embeds, negative_prompt_embeds, do_cfg,
                                           prompt_embeds_for_step)
                if travel is None:  # rows x frames x L x D: the same text for every frame
                    text = text[:, None].expand(-1, num_frames, -1, -1)
                else:  # prompt travel: each frame its blend of the two prompts
                    end = self._text_for_step(i, t, travel[0], travel[1], do_cfg, travel[2])
                    check_same_length(text, end, f" (prompt_travel's prompt at step {i})")
                    w = travel[3].view(1, -1, 1, 1)
                    text = (1 - w) * text[:, None] + w * end[:, None]
                if len(windows) == 1:
                    noise_pred, calls, s_calls = self._predict(latents, t, text, cond, scales[i], do_cfg,
                                                               guidance_scale, image_embeds, sparse)
                    controlnet_calls += calls
                    sparse_calls += s_calls
                else:
                    fused = torch.zeros_like(latents)
                    total = torch.zeros((num_frames,), device=device, dtype=latents.dtype)
                    for frames, sparse_w in zip(windows, sparse_windows):
                        scale_i = scales[i]
                        if isinstance(scale_i, torch.Tensor):
                            scale_i = scale_i[frames]
                            scale_i = None if bool((scale_i == 0).all()) else scale_i
                        pred, calls, s_calls = self._predict(latents[:, :, frames], t, text[:, frames],
                                                             cond[frames] if cond is not None else None, scale_i,
                                                             do_cfg, guidance_scale, image_embeds, sparse_w)
                        controlnet_calls += calls
                        sparse_calls += s_calls
                        w = weights[: len(frames)]
                        fused[:, :, frames] += pred * w.view(1, 1, -1, 1, 1)
                        total[frames] += w
                    noise_pred = fused / total.view(1, 1, -1, 1, 1)
                latents = scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample
                if callback is not None:
                    callback(i, t, latents)

            # 5. Decode.
            frames_out = None
            if output_type != "latent":
                c.use("vae")
                frames_out = self.decode(latents, decode_chunk_size, vae_slicing, vae_tiling)
                if output_type == "np":
                    frames_out = (frames_out.cpu().numpy() * 255).round().astype(np.uint8)
        return SampleResult(frames=frames_out, latents=latents, controlnet_calls=controlnet_calls, windows=windows,
                            timesteps=[int(t) for t in timesteps], sparse_calls=sparse_calls)

    def _text_for_step(self, i, t, cond_embeds, uncond_embeds, do_cfg, hook) -> torch.Tensor:
        """The text batch of one step, B or 2 x B rows ordered [uncond, cond] (before the per-frame text)."""
        if hook is not None:
            step_cond, step_uncond = hook(i, t)
            cond_embeds = _as_batch(step_cond).to(device=cond_embeds.device, dtype=cond_embeds.dtype)
            if step_uncond is not None:
                uncond_embeds = _as_batch(step_uncond).to(device=cond_embeds.device, dtype=cond_embeds.dtype)
            if do_cfg:
                uncond_embeds = _rows_for_batch(uncond_embeds, cond_embeds.shape[0], "the negative embeddings")
                check_same_length(cond_embeds, uncond_embeds, f" (from prompt_embeds_for_step at step {i})")
        return torch.cat([uncond_embeds, cond_embeds]) if do_cfg else cond_embeds

    def _predict(self, latents, t, text, cond, scale, do_cfg, guidance_scale, image_embeds=None,
                 sparse: PreparedSparseCondition | None = None) -> tuple[torch.Tensor, int, int]:
        """Guided noise prediction for ``latents`` (B x C x F x h x w) and its B x F conditioning frames
        (``text``: rows x F x L x D, each frame's text; ``image_embeds``: the IP-Adapters' per-adapter tensors, for
        the UNet only; ``sparse``: the SparseCtrl condition of these F frames, its residuals added to the depth
        ControlNet's). Returns the prediction and the ControlNet and SparseCtrl calls made."""
        c = self.components
        model_input = torch.cat([latents] * 2) if do_cfg else latents
        model_input = self.scheduler.scale_model_input(model_input, t)
        text = text.reshape(-1, *text.shape[2:])  # (rows * F, L, D), sample after sample, [uncond..., cond...]
        residuals = {}
        calls = 0
        if scale is not None:
            control_input = model_input.transpose(1, 2).reshape(-1, *model_input.shape[1:2], *model_input.shape[3:])
            control_cond = torch.cat([cond] * 2) if do_cfg else cond
            frame_scale = isinstance(scale, torch.Tensor)
            down, mid = c.controlnet(control_input, t, encoder_hidden_states=text, controlnet_cond=control_cond,
                                     conditioning_scale=1.0 if frame_scale else scale, guess_mode=False,
                                     return_dict=False)
            calls = 1
            if frame_scale:  # per-frame strengths: scale each frame's residuals (of every sample of a batch)
                s = scale.to(device=mid.device, dtype=mid.dtype).repeat(latents.shape[0])
                s = (torch.cat([s] * 2) if do_cfg else s).view(-1, 1, 1, 1)
                down = [d * s for d in down]
                mid = mid * s
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        sparse_calls = 0
        if sparse is not None:
            down, mid = self._sparse_residuals(sparse, latents, model_input, t, text, do_cfg)
            sparse_calls = 1
            if residuals:  # both ControlNets: their residuals add up (diffusers' MultiControlNetModel)
                down = [d + s for d, s in zip(residuals["down_block_additional_residuals"], down)]
                mid = residuals["mid_block_additional_residual"] + mid
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        if image_embeds is not None:  # IP-Adapters: the UNet projects and repeats them per frame itself
            residuals = {**residuals, "added_cond_kwargs": {"image_embeds": image_embeds}}
        noise_pred = c.unet(model_input, t, encoder_hidden_states=text, **residuals).sample
        if do_cfg:
            uncond, cond_pred = noise_pred.chunk(2)
            noise_pred = uncond + guidance_scale * (cond_pred - uncond)
        return noise_pred, calls, sparse_calls

    def _sparse_residuals(self, sparse: PreparedSparseCondition, latents, model_input, t, text, do_cfg):
        """SparseCtrl's down and mid residuals for the UNet batch (``AnimateDiffSparseControlNetPipeline``'s call:
        the 5-D latents, the batch-1 condition and mask broadcast over [uncond, cond]; in guess mode with
        classifier-free guidance only the conditional half, the unconditional half padded with zeros)."""
        guess_cfg = sparse.guess_mode and do_cfg
        if guess_cfg:
            control_input = self.scheduler.scale_model_input(latents, t)
            control_text = text.chunk(2)[1]
        else:
            control_input, control_text = model_input, text
        down, mid = sparse.controlnet(control_input, t, encoder_hidden_states=control_text,
                                      controlnet_cond=sparse.cond, conditioning_mask=sparse.mask,
                                      conditioning_scale=sparse.scale, guess_mode=sparse.guess_mode,
                                      return_dict=False)
        if guess_cfg:
            down = [torch.cat([torch.zeros_like(d), d]) for d in down]
            mid = torch.cat([torch.zeros_like(mid), mid])
        return list(down), mid

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, decode_chunk_size: int = 16, slicing: bool = False,
               tiling: bool = False) -> torch.Tensor:
        """B x C x T x h x w latents → B*T x H x W x 3 float frames in [0, 1], sample after sample (the pipeline's
        decode + postprocess)."""
        vae = self.components.vae
        latents = latents / vae.config.scaling_factor
        b, ch, t, h, w = latents.shape
        flat = latents.permute(0, 2, 1, 3, 4).reshape(b * t, ch, h, w)
        with _vae_modes(vae, slicing, tiling):
            video = torch.cat([vae.decode(flat[i:i + decode_chunk_size]).sample
                               for i in range(0, flat.shape[0], decode_chunk_size)])
        video = video.float()
        return (video / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


def sample_video(components, prompt: str | None = None, negative_prompt: str | None = None,
                 **kwargs) -> SampleResult:
    """Functional form of :class:`StructureGuidedSampler` (same keyword arguments)."""
    return StructureGuidedSampler(components)(prompt, negative_prompt, **kwargs)


def check_same_length(prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor, where: str = "") -> None:
    """Raise ``ValueError`` when classifier-free guidance would batch a prompt and a negative prompt of different
    token lengths (a compel prompt over 77 tokens is 154 or more long, an unweighted negative 77): encode both
    with ``WeightedPromptEncoder.encode_pair``, which pads them to one length."""
    if prompt_embeds.shape[1:] != negative_prompt_embeds.shape[1:]:
        raise ValueError(
            f"prompt_embeds are {prompt_embeds.shape[1]} tokens x {prompt_embeds.shape[-1]} but "
            f"negative_prompt_embeds are {negative_prompt_embeds.shape[1]} tokens x {negative_prompt_embeds.shape[-1]}"
            f"{where}; classifier-free guidance needs both the same length: encode the prompt and the negative "
            f"prompt together with render.prompt_weighting.WeightedPromptEncoder.encode_pair (it pads both to the "
            f"longer one) and pass both")


def _ip_adapter_embeds(unet, embeds, do_cfg, device, samples: int = 1) -> list[torch.Tensor] | None:
    """Check ``ip_adapter_image_embeds`` against the IP-Adapters installed on ``unet`` and put them on its device
    and dtype (None when there are none)."""
    projection = getattr(unet, "encoder_hid_proj", None)
    installed = (projection is not None and getattr(unet.config, "encoder_hid_dim_type", None) == "ip_image_proj")
    if embeds is None:
        if installed:
            raise ValueError("IP-Adapters are installed on the UNet: pass ip_adapter_image_embeds (one tensor per "
                             "adapter; render.ip_adapter.ActiveIPAdapters.image_embeds makes them)")
        return None
    if not installed:
        raise ValueError("ip_adapter_image_embeds given but no IP-Adapter is installed on the UNet "
                         "(render.ip_adapter.ip_adapters installs them)")
    embeds = list(embeds) if isinstance(embeds, (list, tuple)) else [embeds]
    count = len(projection.image_projection_layers)
    if len(embeds) != count:
        raise ValueError(f"{len(embeds)} ip_adapter_image_embeds for {count} installed IP-Adapters")
    batch = (2 if do_cfg else 1) * samples
    for index, tensor in enumerate(embeds):
        if tensor.ndim < 3 or tensor.shape[0] != batch:
            raise ValueError(f"ip_adapter_image_embeds[{index}] has shape {tuple(tensor.shape)}: expected {batch} x "
                             f"images x ... ({'[uncond, cond] with' if do_cfg else 'cond only without'} "
                             "classifier-free guidance" + (f", {samples} rows each" if samples > 1 else "") + ")")
    return [tensor.to(device=device, dtype=unet.dtype) for tensor in embeds]


def _as_batch(embeds: torch.Tensor) -> torch.Tensor:
    return embeds[None] if embeds.ndim == 2 else embeds


def _batch_size(prompt, prompt_embeds, seed) -> int:
    """How many samples one call makes: the rows of ``prompt_embeds`` (or the prompts); a seed list must match."""
    if prompt_embeds is not None:
        batch = _as_batch(prompt_embeds).shape[0]
    else:
        batch = len(prompt) if isinstance(prompt, (list, tuple)) else 1
    if isinstance(seed, list) and len(seed) != batch:
        raise ValueError(f"{len(seed)} seeds for a batch of {batch} samples: give one seed per sample")
    return batch


def _rows_for_batch(embeds: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """``embeds`` with ``batch`` rows: one row is used for every sample."""
    if embeds.shape[0] == batch:
        return embeds
    if embeds.shape[0] == 1:
        return embeds.expand(batch, *embeds.shape[1:])
    raise ValueError(f"{name} has {embeds.shape[0]} rows for a batch of {batch} samples")


def _extra_step_kwargs(scheduler, generator, eta) -> dict:
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


@contextlib.contextmanager
def _freeu(unet, freeu):
    if not freeu:
        yield
        return
    values = {**FREEU_SD15, **(freeu if isinstance(freeu, dict) else {})}
    unet.enable_freeu(**values)
    try:
        yield
    finally:
        unet.disable_freeu()


@contextlib.contextmanager
def _sparse_on(model, device, offloaded: bool):
    """The SparseCtrl model on the render's device for the denoising loop: under CPU offload it is moved there and
    back afterwards; otherwise it must already be there."""
    before = model.device
    if before == device or (before.type == device.type and device.index is None):
        yield
        return
    if not offloaded:
        raise ValueError(f"sparse_controlnet is on {before} but the render runs on {device}: move it there first")
    model.to(device)
    try:
        yield
    finally:
        model.to(before)


@contextlib.contextmanager
def _vae_modes(vae, slicing, tiling):
    before = (getattr(vae, "use_slicing", False), getattr(vae, "use_tiling", False))
    if slicing:
        vae.enable_slicing()
    if tiling:
        vae.enable_tiling()
    try:
        yield
    finally:
        if slicing and not before[0]:
            vae.disable_slicing()
        if tiling and not before[1]:
            vae.disable_tiling()
