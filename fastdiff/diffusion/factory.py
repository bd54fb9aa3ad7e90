"""`create_gaussian_diffusion`: guided-diffusion's factory (script_util.py), same arguments and meaning."""
from __future__ import annotations

from fastdiff.diffusion.gaussian_diffusion import LossType, ModelMeanType, ModelVarType
from fastdiff.diffusion.respace import SpacedDiffusion
from fastdiff.schedules import get_named_beta_schedule, space_timesteps


def create_gaussian_diffusion(*, steps: int = 1000, learn_sigma: bool = False, sigma_small: bool = False,
                              noise_schedule: str = "linear", use_kl: bool = False, predict_xstart: bool = False,
                              rescale_timesteps: bool = False, rescale_learned_sigmas: bool = False,
                              timestep_respacing="") -> SpacedDiffusion:
    """A (respaced) diffusion over `steps` base timesteps of the "linear" (DDPM) or "cosine" (Improved DDPM eq. 17)
    schedule.

    Loss: use_kl -> RESCALED_KL (L_vlb alone, Improved DDPM eq. 4-6); rescale_learned_sigmas -> RESCALED_MSE
    (the hybrid L_simple + λ·L_vlb with λ = 0.001 for learned Σ, eq. 16); else MSE (DDPM's L_simple, eq. 14).
    Variance: learn_sigma -> LEARNED_RANGE (eq. 15, 2C output channels); else FIXED_SMALL (β̃_t) with sigma_small,
    FIXED_LARGE (β_t) without. timestep_respacing: "" (all steps), "ddimN" or section counts ("10,10,5").
    """
    try:
        betas = get_named_beta_schedule(noise_schedule, steps)
    except (TypeError, ValueError) as exc:  # name this function's argument, not the schedule's
        raise type(exc)(str(exc).replace("num_diffusion_timesteps", "steps")) from None
    if use_kl:
        loss_type = LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = LossType.RESCALED_MSE
    else:
        loss_type = LossType.MSE
    if learn_sigma:
        var_type = ModelVarType.LEARNED_RANGE
    else:
        var_type = ModelVarType.FIXED_SMALL if sigma_small else ModelVarType.FIXED_LARGE
    return SpacedDiffusion(
        use_timesteps=space_timesteps(steps, timestep_respacing or [steps]), betas=betas,
        model_mean_type=ModelMeanType.START_X if predict_xstart else ModelMeanType.EPSILON,
        model_var_type=var_type, loss_type=loss_type, rescale_timesteps=rescale_timesteps)
