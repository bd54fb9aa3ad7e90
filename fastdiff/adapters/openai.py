"""OpenAI guided-diffusion / improved-diffusion checkpoints on fastdiff's models and samplers.

    model, diffusion = load("256x256_diffusion.pt", "--image_size 256 --class_cond True --learn_sigma True ...")
    classifier, _ = load_classifier("256x256_classifier.pt", image_size=256, classifier_depth=2)

Flags are the ones those repositories' scripts take (`script_util.model_and_diffusion_defaults()`,
`classifier_defaults()`), with their defaults and meaning: pass the MODEL_FLAGS / CLASSIFIER_FLAGS a checkpoint
was trained with, as keyword arguments or as the command-line string. `variant="improved"` selects
improved-diffusion's flag set (no channel_mult / num_head_channels / resblock_updown / use_fp16 /
use_new_attention_order; sigma_small; rescale_timesteps and rescale_learned_sigmas default to True; channel_mult
fixed per image_size 256 / 64 / 32). Both build fastdiff's `UNetModel` / `EncoderUNetModel`, whose state-dict keys
are the upstream ones, and load the checkpoint with strict key and shape checks.

`RespacedModel` feeds a model (or classifier) the timesteps it was trained on when a sampler runs over the
respaced process, as guided-diffusion's `_WrappedModel` does (`fastdiff.app.runs.load_openai_run` samples an
OpenAI checkpoint this way for `fastdiff sample --openai-ckpt`).
"""
from __future__ import annotations

import difflib
import re
import shlex
from pathlib import Path

import torch
from torch import nn

from fastdiff import _deprecated
from fastdiff.diffusion import create_gaussian_diffusion
from fastdiff.errors import CorruptCheckpointError, state_dict_mismatch
from fastdiff.models.unet import EncoderUNetModel, UNetModel, parse_attention_resolutions

__all__ = ["FLAG_DEFAULTS", "RespacedModel", "build", "load", "load_classifier",
           "parse_flags"]

NUM_CLASSES = 1000
VARIANTS = ("guided", "improved")
KINDS = ("model", "classifier")

_GUIDED_DIFFUSION = {"learn_sigma": False, "diffusion_steps": 1000, "noise_schedule": "linear", "timestep_respacing": "",
                         "use_kl": False, "predict_xstart": False, "rescale_timesteps": False, "rescale_learned_sigmas": False}
_GUIDED_MODEL = {"image_size": 64, "num_channels": 128, "num_res_blocks": 2, "num_heads": 4, "num_heads_upsample": -1,
                     "num_head_channels": -1, "attention_resolutions": "16,8", "channel_mult": "", "dropout": 0.0,
                     "class_cond": False, "use_checkpoint": False, "use_scale_shift_norm": True, "resblock_updown": False,
                     "use_fp16": False, "use_new_attention_order": False}
_GUIDED_CLASSIFIER = {"image_size": 64, "classifier_use_fp16": False, "classifier_width": 128, "classifier_depth": 2,
                          "classifier_attention_resolutions": "32,16,8", "classifier_use_scale_shift_norm": True,
                          "classifier_resblock_updown": True, "classifier_pool": "attention"}
_IMPROVED_MODEL = {"image_size": 64, "num_channels": 128, "num_res_blocks": 2, "num_heads": 4, "num_heads_upsample": -1,
                       "attention_resolutions": "16,8", "dropout": 0.0, "learn_sigma": False, "sigma_small": False,
                       "class_cond": False, "diffusion_steps": 1000, "noise_schedule": "linear", "timestep_respacing": "",
                       "use_kl": False, "predict_xstart": False, "rescale_timesteps": True, "rescale_learned_sigmas": True,
                       "use_checkpoint": False, "use_scale_shift_norm": True}

#: (variant, kind) -> {flag: default}, as the upstream scripts' argparsers build them.
FLAG_DEFAULTS = {
    ("guided", "model"): {**_GUIDED_MODEL, **_GUIDED_DIFFUSION},
    ("guided", "classifier"): {**_GUIDED_CLASSIFIER, **_GUIDED_DIFFUSION},
    ("improved", "model"): dict(_IMPROVED_MODEL),
}

# channel_mult per image_size when the flags leave it "" (guided-diffusion's create_model / create_classifier,
# improved-diffusion's create_model, which has no channel_mult flag).
_GUIDED_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
_IMPROVED_MULT = {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}

# Flags of the upstream sampling / training scripts that do not describe the checkpoint.
_SCRIPT_FLAGS = {
    "batch_size": "--batch-size", "num_samples": "--num-samples", "use_ddim": "--sampler ddim",
    "classifier_scale": "--guidance cg=SCALE", "clip_denoised": None, "model_path": "--openai-ckpt",
    "classifier_path": "--openai-classifier", "lr": None, "microbatch": None, "ema_rate": None,
    "log_interval": None, "save_interval": None, "resume_checkpoint": None, "data_dir": None,
    "schedule_sampler": None, "weight_decay": None, "lr_anneal_steps": None, "fp16_scale_growth": None,
}
_TRUE, _FALSE = ("yes", "true", "t", "y", "1"), ("no", "false", "f", "n", "0")


# ----------------------------------------------------------------------------------------------- flags


def _check_choice(name: str, value: str, choices: tuple) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _convert(name: str, value, default):
    """value converted to the type of the flag's default (the upstream argparser's `type`); bools as str2bool."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"flag --{name} expects a boolean (True/False, yes/no, 1/0), got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"flag --{name} expects an integer, got {value!r}")  # noqa: TRY004 - a wrong flag value
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"flag --{name} expects an integer, got {value!r}") from None
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"flag --{name} expects a number, got {value!r}")  # noqa: TRY004 - a wrong flag value
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"flag --{name} expects a number, got {value!r}") from None
    if isinstance(value, (list, tuple)):  # attention_resolutions=(16, 8) from Python
        return ",".join(str(int(v)) for v in value)
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ValueError(f"flag --{name} expects a string, got {value!r}")  # noqa: TRY004 - a wrong flag value
    return str(value)


def _tokens(text: str) -> dict:
    """'--a 1 --b=2' -> {'a': '1', 'b': '2'} (each flag once)."""
    out, words = {}, shlex.split(text)
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--") or len(word) == 2:
            raise ValueError(f"flags: expected --name VALUE, got {word!r} in {text!r}")
        name, eq, value = word[2:].partition("=")
        if not eq:
            if i + 1 >= len(words) or words[i + 1].startswith("--"):
                raise ValueError(f"flag --{name} has no value in {text!r}")
            value, i = words[i + 1], i + 1
        if name in out:
            raise ValueError(f"flag --{name} is given twice")
        out[name] = value
        i += 1
    return out


def _unknown_flag_message(name: str, variant: str, kind: str) -> str:
    known = FLAG_DEFAULTS[(variant, kind)]
    msg = f"unknown {variant}-diffusion {kind} flag --{name}"
    if name in _SCRIPT_FLAGS:
        hint = _SCRIPT_FLAGS[name]
        msg += (" (a flag of the upstream sampling/training script, not of the checkpoint"
                + (f"; fastdiff sample takes {hint}" if hint else "") + ")")
    else:
        others = [(v, k) for (v, k), d in FLAG_DEFAULTS.items() if name in d and (v, k) != (variant, kind)]
        if others:
            msg += " (it is a flag of " + ", ".join(f"variant={v!r} kind={k!r}" for v, k in others) + ")"
        else:
            close = difflib.get_close_matches(name, known, n=1)
            if close:
                msg += f" (did you mean --{close[0]}?)"
    return msg + f"; known flags: {', '.join(sorted(known))}"


def parse_flags(flags: str | dict | None = None, *, variant: str = "guided", kind: str = "model",
                **kwargs) -> dict:
    """Every flag of the upstream script for (variant, kind), defaults filled in and values typed.

    flags: the command-line string ("--image_size 64 --class_cond True", `--name=value` too) or a dict;
    kwargs: more flags (a flag may not appear in both). Unknown flags and values of the wrong type raise
    ValueError naming the flag.
    """
    _check_choice("variant", variant, VARIANTS)
    _check_choice("kind", kind, KINDS)
    if (variant, kind) not in FLAG_DEFAULTS:
        raise ValueError(f"{variant}-diffusion has no {kind} checkpoints (no noisy classifiers); use variant='guided'")
    given = {}
    if isinstance(flags, str):
        given = _tokens(flags)
    elif isinstance(flags, dict):
        given = dict(flags)
    elif flags is not None:
        raise ValueError(f"flags must be a string like '--image_size 64' or a dict, got {type(flags).__name__}")
    for name, value in kwargs.items():
        if name in given:
            raise ValueError(f"flag --{name} is given twice (in the flags string and as a keyword)")
        given[name] = value
    defaults = FLAG_DEFAULTS[(variant, kind)]
    out = dict(defaults)
    for name, value in given.items():
        name = name.replace("-", "_")
        if name not in defaults:
            raise ValueError(_unknown_flag_message(name, variant, kind))
        out[name] = _convert(name, value, defaults[name])
    return out


# ----------------------------------------------------------------------------------------------- building


def _channel_mult(flags: dict, variant: str, image_size: int, table: dict) -> tuple:
    text = flags.get("channel_mult", "")
    if text:
        try:
            return tuple(int(m) for m in text.split(","))
        except ValueError:
            raise ValueError(f"flag --channel_mult must be comma-separated integers, got {text!r}") from None
    if image_size not in table:
        extra = " or pass --channel_mult" if variant == "guided" else ""
        raise ValueError(f"flag --image_size {image_size}: {variant}-diffusion has no default channel_mult for it "
                         f"(sizes {sorted(table)}){extra}")
    return table[image_size]


def _rates(text: str, image_size: int, flag: str) -> tuple:
    try:
        return parse_attention_resolutions(text, image_size)
    except ValueError as err:
        raise ValueError(f"flag --{flag} {text!r}: {err}") from None


def build(flags: dict, *, variant: str = "guided", kind: str = "model"):
    """(model, diffusion) built from complete flags (`parse_flags`'s output), untrained: fastdiff's UNetModel
    (kind "model") or EncoderUNetModel (kind "classifier", 1000 logits) and the SpacedDiffusion of the flags."""
    size = flags["image_size"]
    diffusion = create_gaussian_diffusion(
        steps=flags["diffusion_steps"], learn_sigma=flags["learn_sigma"], sigma_small=flags.get("sigma_small", False),
        noise_schedule=flags["noise_schedule"], use_kl=flags["use_kl"], predict_xstart=flags["predict_xstart"],
        rescale_timesteps=flags["rescale_timesteps"], rescale_learned_sigmas=flags["rescale_learned_sigmas"],
        timestep_respacing=flags["timestep_respacing"])
    if kind == "classifier":
        model = EncoderUNetModel(
            image_size=size, in_channels=3, model_channels=flags["classifier_width"], out_channels=NUM_CLASSES,
            num_res_blocks=flags["classifier_depth"],
            attention_resolutions=_rates(flags["classifier_attention_resolutions"], size,
                                         "classifier_attention_resolutions"),
            channel_mult=_channel_mult({}, "guided", size, _GUIDED_MULT), use_fp16=flags["classifier_use_fp16"],
            num_head_channels=64, use_scale_shift_norm=flags["classifier_use_scale_shift_norm"],
            resblock_updown=flags["classifier_resblock_updown"],
            pool=_check_choice("flag --classifier_pool", flags["classifier_pool"],
                               ("adaptive", "attention", "spatial", "spatial_v2")))
        return model, diffusion
    mult = _channel_mult(flags, variant, size, _GUIDED_MULT if variant == "guided" else _IMPROVED_MULT)
    model = UNetModel(
        image_size=size, in_channels=3, model_channels=flags["num_channels"],
        out_channels=6 if flags["learn_sigma"] else 3, num_res_blocks=flags["num_res_blocks"],
        attention_resolutions=_rates(flags["attention_resolutions"], size, "attention_resolutions"),
        dropout=flags["dropout"], channel_mult=mult, num_classes=NUM_CLASSES if flags["class_cond"] else None,
        use_checkpoint=flags["use_checkpoint"], use_fp16=flags.get("use_fp16", False),
        num_heads=flags["num_heads"], num_head_channels=flags.get("num_head_channels", -1),
        num_heads_upsample=flags["num_heads_upsample"], use_scale_shift_norm=flags["use_scale_shift_norm"],
        resblock_updown=flags.get("resblock_updown", False),
        use_new_attention_order=flags.get("use_new_attention_order", False))
    return model, diffusion


def _state_dict(checkpoint) -> tuple[dict, str]:
    """(state dict, description) of a path to a torch.save'd state dict, or of a state dict."""
    if isinstance(checkpoint, (str, Path)):
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        where = f"checkpoint {str(path)!r}"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # unpickling arbitrary bytes raises anything (KeyError, UnpicklingError, ...)
            first = (str(e).splitlines() or [""])[0][:160]
            raise CorruptCheckpointError(f"{where} is not a torch.save'd state dict ({type(e).__name__}: "
                                         f"{first})") from None
    else:
        state, where = checkpoint, "the state dict"
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{where} must be a non-empty state dict (name -> tensor), got {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{where} is not a plain state dict: entries {bad[:5]} are not tensors (a training "
                         f"checkpoint? pass its model weights)")
    return state, where


def _inferred_flags(state: dict, kind: str) -> dict:
    """The flags a checkpoint's keys and shapes reveal (a subset: what the error hint can say for sure)."""
    out = {}
    prefix = "classifier_" if kind == "classifier" else ""
    w = state.get("time_embed.0.weight")
    if w is not None and w.dim() == 2:
        out[prefix + ("width" if kind == "classifier" else "num_channels")] = int(w.shape[1])
    if kind == "model":
        out["class_cond"] = "label_emb.weight" in state
        o = state.get("out.2.weight")
        if o is not None and o.dim() >= 1 and o.shape[0] in (3, 6):
            out["learn_sigma"] = int(o.shape[0]) == 6
    e, n = state.get("input_blocks.1.0.emb_layers.1.weight"), state.get("input_blocks.1.0.out_layers.0.weight")
    if e is not None and n is not None:
        out[prefix + "use_scale_shift_norm"] = int(e.shape[0]) == 2 * int(n.shape[0])
    if any(re.fullmatch(r"input_blocks\.\d+\.0\.op\.weight", k) for k in state):
        out[prefix + "resblock_updown"] = False  # strided-conv Downsample blocks
    elif any(re.fullmatch(r"output_blocks\.\d+\.[12]\.in_layers\.0\.weight", k) for k in state):
        out[prefix + "resblock_updown"] = True  # an up-ResBlock after an output block's first ResBlock
    return out


def _load_strict(model: nn.Module, state: dict, where: str, flags: dict, variant: str, kind: str) -> None:
    """load_state_dict(strict=True) with an error that lists missing / unexpected / mis-shaped keys and the flags
    the checkpoint contradicts."""
    missing, unexpected, shapes = state_dict_mismatch(state, model.state_dict())
    if not (missing or unexpected or shapes):
        model.load_state_dict(state, strict=True)
        return
    hints = [f"--{name} {value}" for name, value in _inferred_flags(state, kind).items()
             if name in flags and flags[name] != value]
    more = lambda keys: ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
    lines = [(f"{where} does not match the {variant}-diffusion {kind} these flags build "
              f"(image_size={flags['image_size']}):")]
    if missing:
        lines.append(f"  missing keys: {more(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys: {more(unexpected)}")
    if shapes:
        lines.append(f"  shape mismatches: {more(shapes)}")
    if hints:
        lines.append(f"  the checkpoint was probably trained with {' '.join(hints)}")
    else:
        lines.append("  check the flags that set the layout: image_size, channel_mult, num_res_blocks, "
                     "attention_resolutions, resblock_updown, num_channels (the MODEL_FLAGS it was trained with)"
                     + ("; or variant='improved'/'guided'" if kind == "model" else ""))
    raise ValueError("\n".join(lines))


def load(checkpoint, flags: str | dict | None = None, *, variant: str = "guided", kind: str = "model",
         device="cpu", **kwargs):
    """(model, diffusion) of a guided-diffusion / improved-diffusion checkpoint.

    checkpoint: path of the .pt state dict, or the state dict; flags / kwargs: the flags it was trained with
    (`parse_flags`); kind "classifier" loads a noisy classifier (see `load_classifier`). The model is in eval
    mode on `device`, converted to fp16 when use_fp16 (classifier_use_fp16) is set, as the upstream scripts do;
    diffusion is the SpacedDiffusion of the diffusion flags (timestep_respacing, learn_sigma -> learned range).
    model(x: [N, 3, S, S], t: [N] base timesteps[, y: [N] classes]) -> [N, 3 or 6, S, S] (classifier: [N, 1000]).
    Raises ValueError naming the flag for unknown flags and bad values, and for a checkpoint that does not fit
    the flags (missing / unexpected keys, shapes, the flags the checkpoint suggests).
    """
    parsed = parse_flags(flags, variant=variant, kind=kind, **kwargs)
    state, where = _state_dict(checkpoint)
    model, diffusion = build(parsed, variant=variant, kind=kind)
    _load_strict(model, state, where, parsed, variant, kind)
    if parsed.get("use_fp16") or parsed.get("classifier_use_fp16"):
        model.convert_to_fp16()
    model.to(device).eval()
    model.openai_flags = dict(parsed, variant=variant, kind=kind)
    return model, diffusion


def load_classifier(checkpoint, flags: str | dict | None = None, *, device="cpu", **kwargs):
    """(classifier, diffusion) of a guided-diffusion noisy-classifier checkpoint: an EncoderUNetModel
    classifier(x_t: [N, 3, S, S], t: [N] base timesteps) -> logits [N, 1000], as
    `fastdiff.samplers.guidance.ClassifierGuidance` calls it. Flags: classifier_defaults() + diffusion flags."""
    return load(checkpoint, flags, variant="guided", kind="classifier", device=device, **kwargs)


# ----------------------------------------------------------------------------------------------- sampling


class RespacedModel(nn.Module):
    """model(x, timestep_map[t] (· 1000 / T_base when rescale_timesteps), **kwargs) for step indices t: [N] of a
    (respaced) SpacedDiffusion — what guided-diffusion's _WrappedModel feeds the model and the classifier.

    Keeps the wrapped module's out_channels (ClassifierGuidance reads it to check labels)."""

    def __init__(self, model: nn.Module, diffusion):
        super().__init__()
        self.model = model
        base = getattr(diffusion, "timestep_map", None) or list(range(diffusion.num_timesteps))
        table = torch.tensor(base, dtype=torch.int64)
        if getattr(diffusion, "rescale_timesteps", False):
            table = table.float() * (1000.0 / getattr(diffusion, "original_num_steps", len(base)))
        self.register_buffer("timestep_map", table, persistent=False)
        self.out_channels = getattr(model, "out_channels", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.model(x, self.timestep_map.to(t.device)[t], **kwargs)


# The sampling run of `fastdiff sample --openai-ckpt` is application code: fastdiff.app.runs.
__getattr__ = _deprecated.moved_names(__name__, {"load_run": "fastdiff.app.runs:load_openai_run",
                                                "OpenAIRun": "fastdiff.app.runs"})
