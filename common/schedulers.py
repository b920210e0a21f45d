"""Noise schedulers with the timestep grid the PIG authors used.

MONAI's ``DDIMScheduler.set_timesteps(n)`` places timesteps at ``linspace(T-1, 0, n).round()`` but its ``step`` jumps to
``t - T // n``. When ``T % n != 0`` the two disagree (e.g. T=1000, n=50: it evaluates the model at 958 after stepping
to 959). :class:`UniformDDIMScheduler` uses the uniform stride grid of the DDIM paper and the authors' code
(``range(0, T, T // n)`` reversed: 1020, 1016, ..., 4, 0 for T=1024, n=256) so every step lands exactly on the next
timestep, and the last step goes to alpha_bar = 1 (``set_alpha_to_one``).
"""

from __future__ import annotations

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

__all__ = ["UniformDDIMScheduler", "build_scheduler", "prediction_type", "SCHEDULER_NAMES"]


class UniformDDIMScheduler(DDIMScheduler):
    """MONAI's DDIM with uniformly strided timesteps that agree with its own ``step`` (sigma=0 when ``eta=0``)."""

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        if not 1 <= num_inference_steps <= self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in [1, {self.num_train_timesteps}], got {num_inference_steps}."
            )
        self.num_inference_steps = num_inference_steps
        stride = self.num_train_timesteps // num_inference_steps
        steps = torch.arange(num_inference_steps - 1, -1, -1, device=device) * stride + self.steps_offset
        self.timesteps = steps.long()


def prediction_type(scheduler) -> str:
    """A scheduler's parameterisation as a plain string: MONAI's enum attribute or diffusers' config value."""
    value = getattr(scheduler, "prediction_type", None)
    if value is None and hasattr(scheduler, "config"):
        value = scheduler.config.prediction_type
    return str(getattr(value, "value", value or "epsilon"))


_SCHEDULERS = {"ddim": UniformDDIMScheduler, "ddpm": DDPMScheduler}
_DIFFUSERS_BETA_SCHEDULES = {"linear_beta": "linear", "scaled_linear_beta": "scaled_linear"}
SCHEDULER_NAMES = ("ddim", "ddpm", "dpmsolver++")


def _dpm_solver_pp(num_train_timesteps: int, schedule: str, beta_start: float, beta_end: float, **kwargs):
    """diffusers' multistep DPM-Solver++ (Lu et al. 2022) on the same beta schedule as the MONAI schedulers.

    diffusers is imported here only (it takes seconds to import). ``solver_order`` 2 is diffusers' recommendation for
    guided sampling (3 for unconditional); ``thresholding`` is Imagen's dynamic thresholding of x0 (the DiffuseExpand
    authors' setting); ``prediction_type`` must match training.
    """
    if schedule not in _DIFFUSERS_BETA_SCHEDULES:
        raise ValueError(
            f"schedule '{schedule}' has no DPM-Solver++ equivalent; use one of {sorted(_DIFFUSERS_BETA_SCHEDULES)}."
        )
    from diffusers import DPMSolverMultistepScheduler

    kwargs.pop("clip_sample", None)
    prediction = kwargs.pop("prediction_type", "epsilon")
    return DPMSolverMultistepScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=_DIFFUSERS_BETA_SCHEDULES[schedule],
        beta_start=beta_start,
        beta_end=beta_end,
        algorithm_type="dpmsolver++",
        prediction_type=str(getattr(prediction, "value", prediction)),
        **kwargs,
    )


def build_scheduler(
    name: str = "ddim",
    num_train_timesteps: int = 1000,
    schedule: str = "linear_beta",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    solver_order: int = 2,
    thresholding: bool = False,
    **kwargs,
):
    """One place that builds a training/sampling scheduler from config values.

    ``name``: ``"ddim"`` (MONAI DDIM on a uniform stride, sigma=0), ``"ddpm"`` (MONAI, ancestral) or ``"dpmsolver++"``
    (diffusers, sampling only: fewer steps for the same quality; ``solver_order`` and ``thresholding`` apply to it
    only). ``clip_sample`` defaults to False for the MONAI ones
    (MONAI's default True clips x0_hat to [-1, 1] inside ``step``, which the papers do not do).
    """
    if name not in SCHEDULER_NAMES:
        raise ValueError(f"scheduler name must be one of {list(SCHEDULER_NAMES)}, got '{name}'.")
    if name == "dpmsolver++":
        return _dpm_solver_pp(
            num_train_timesteps,
            schedule,
            beta_start,
            beta_end,
            solver_order=solver_order,
            thresholding=thresholding,
            **kwargs,
        )
    kwargs.setdefault("clip_sample", False)
    return _SCHEDULERS[name](
        num_train_timesteps=num_train_timesteps,
        schedule=schedule,
        beta_start=beta_start,
        beta_end=beta_end,
        **kwargs,
    )
