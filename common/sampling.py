"""The paired sampler of PIG (Alg. 2), independent of the noise scheduler.

Each step: the guider predicts the mask noise from (x_t, y_t); Eq. (6) turns it into the mask estimate x0_hat and the
scheduler moves the mask to x_{t-1}; the image model, conditioned on x0_hat, predicts the image noise and the scheduler
moves the image to y_{t-1}. With MONAI's DDIM (eta=0) the scheduler step is exactly Eq. (7) with sigma_t = 0.

Any object with ``set_timesteps``, ``timesteps``, ``alphas_cumprod`` and ``step(model_output, t, sample)`` works:
MONAI's DDIM/DDPM/PNDM and diffusers' schedulers (whose ``step`` returns an object with ``prev_sample``). Each stream
gets its own deep copy of the scheduler, because multistep solvers keep a history of model outputs.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from common.paired_model import PairedDiffusionModel, predict_x0

__all__ = ["PairedSampler", "scheduler_step"]

logger = logging.getLogger(__name__)


def scheduler_step(scheduler: Any, model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """x_{t-1} from a scheduler's ``step``, whichever return convention it has (MONAI tuple or diffusers output)."""
    out = scheduler.step(model_output, timestep, sample)
    if isinstance(out, tuple):
        return out[0]
    return out.prev_sample


class PairedSampler:
    """Generate (mask, image) pairs from noise with a :class:`PairedDiffusionModel` (PIG Alg. 2).

    Args:
        scheduler: a configured scheduler; ``set_timesteps(num_inference_steps)`` is called on a copy per stream.
        num_inference_steps: sampling steps (the paper: 256 DDIM steps of T=1024).
        progress_every: log a line every this many steps (0 = silent).
    """

    def __init__(self, scheduler: Any, num_inference_steps: int = 50, progress_every: int = 0) -> None:
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps
        self.progress_every = progress_every

    def _stream_scheduler(self, device: torch.device) -> Any:
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(self.num_inference_steps, device=device)
        return scheduler

    @torch.no_grad()
    def __call__(
        self, model: PairedDiffusionModel, mask_noise: torch.Tensor, image_noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run Alg. 2 from (x_T, y_T) = (mask_noise, image_noise); returns the continuous (x_0, y_0)."""
        device = mask_noise.device
        mask_scheduler = self._stream_scheduler(device)
        image_scheduler = self._stream_scheduler(device)
        alphas_cumprod = mask_scheduler.alphas_cumprod.to(device)
        x_t = mask_noise * getattr(mask_scheduler, "init_noise_sigma", 1.0)
        y_t = image_noise * getattr(image_scheduler, "init_noise_sigma", 1.0)
        timesteps = mask_scheduler.timesteps
        for i, t in enumerate(timesteps):
            t_batch = torch.full((x_t.shape[0],), int(t), device=device, dtype=torch.long)
            eps_x = model.guider_noise(x_t, y_t, t_batch)
            x0_hat = predict_x0(x_t, eps_x, alphas_cumprod[int(t)])
            x_t = scheduler_step(mask_scheduler, eps_x, t, x_t)
            eps_y = model.image_noise(model.condition_from_estimate(x0_hat), y_t, t_batch)
            y_t = scheduler_step(image_scheduler, eps_y, t, y_t)
            if self.progress_every and (i + 1) % self.progress_every == 0:
                logger.info("sampling step %d/%d (t=%d)", i + 1, len(timesteps), int(t))
        return x_t, y_t
