"""Samplers by name, built from a model's own scheduler config."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

SCHEDULER_NAMES = ("ddim", "dpm++", "euler", "euler-a", "model")


def make_scheduler(name: str, current: SchedulerMixin) -> SchedulerMixin:
    """A scheduler of kind `name` sharing `current`'s noise schedule; 'model' keeps `current`.

    DDIM is set up as in the official SD 2.1 script: no sample clipping, no final alpha of one. A
    flow-matching model (SD3, FLUX.1) keeps its own flow-matching Euler sampler for 'model', 'euler' and
    'ddim' (deterministic DDIM on the straight noise path is that Euler step); the others are refused.
    """
    config = current.config
    if name == "model":
        return current
    if isinstance(current, FlowMatchEulerDiscreteScheduler):
        if name in ("ddim", "euler"):
            return current
        if name in SCHEDULER_NAMES:
            raise ValueError(f"scheduler {name!r} is for noise-prediction models; this flow-matching model (SD3, "
                             f"FLUX.1) samples with flow-matching Euler: use ddim, euler or model")
    if name == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=False)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "euler-a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    raise ValueError(f"scheduler {name!r} is not one of {', '.join(SCHEDULER_NAMES)}")
