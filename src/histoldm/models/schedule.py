"""PathLDM's noise schedule as diffusers schedulers (one place, so training and sampling agree).

1000 steps, CompVis "linear" = linspace(sqrt(0.0015), sqrt(0.0195))**2 = diffusers "scaled_linear";
DDIM with leading spacing and steps_offset 1 gives timesteps 1, 21, ..., 981 for 50 steps.
"""

from __future__ import annotations

from typing import Any

SCHEDULE: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_schedule="scaled_linear",
    beta_start=0.0015,
    beta_end=0.0195,
)


def ddpm_scheduler(prediction_type: str = "epsilon"):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULE, prediction_type=prediction_type, clip_sample=False)


def ddim_scheduler(prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        **SCHEDULE,
        prediction_type=prediction_type,
        steps_offset=1,
        set_alpha_to_one=False,
        clip_sample=False,
        timestep_spacing="leading",
    )


def dpm_solver_scheduler(prediction_type: str = "epsilon"):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        **SCHEDULE,
        prediction_type=prediction_type,
        algorithm_type="dpmsolver++",
        solver_order=2,
        steps_offset=1,
        timestep_spacing="leading",
    )
