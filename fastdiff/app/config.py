"""Run configurations: one TOML file per experiment (`configs/*.toml`) with [data], [model], [diffusion], [train]
and [sample] tables, read into dataclasses, plus the builders that turn them into a data set, a model, a diffusion
and a training objective. Unknown keys and bad values raise ValueError naming the key.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

MODEL_KINDS = ("unet", "mlp", "classifier")


@dataclass
class DataConfig:
    """`name` of a `fastdiff.data.get_dataset` set; every other key of [data] is passed to it as an option."""
    name: str = "digits"
    options: dict = field(default_factory=dict)


@dataclass
class ModelConfig:
    """kind "unet" (ADM UNetModel; attention_resolutions in pixels, as guided-diffusion's scripts), "mlp"
    (MLPDenoiser for 2-D data) or "classifier" (ADM noisy classifier: EncoderUNetModel with the unet keys and `pool`,
    trained with NoisyClassifierObjective on the [diffusion]'s q(x_t | x_0)). class_cond adds a label embedding (one
    more row, the null class, when the diffusion's p_uncond > 0); a classifier is trained on labels, so for it
    class_cond defaults to (and must be) true."""
    kind: str = "unet"
    model_channels: int = 64
    num_res_blocks: int = 2
    attention_resolutions: tuple = (4,)
    channel_mult: tuple = (1, 2)
    dropout: float = 0.0
    num_heads: int = 4
    num_head_channels: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    use_new_attention_order: bool = False
    use_checkpoint: bool = False
    class_cond: bool = False
    width: int = 256  # mlp
    depth: int = 3  # mlp
    pool: str = "attention"  # classifier: EncoderUNetModel's head (adaptive, attention, spatial, spatial_v2)


@dataclass
class DiffusionConfig:
    """`create_gaussian_diffusion`'s arguments, the training timestep sampler and classifier-free label dropout."""
    steps: int = 1000
    noise_schedule: str = "linear"
    learn_sigma: bool = False
    sigma_small: bool = False
    use_kl: bool = False
    predict_xstart: bool = False
    rescale_learned_sigmas: bool = False
    schedule_sampler: str = "uniform"
    p_uncond: float = 0.0


@dataclass
class SampleConfig:
    """Defaults of `fastdiff sample` for this run."""
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    guidance: float = 0.0
    num_samples: int = 64
    batch_size: int = 256
    clip_denoised: bool = True


@dataclass
class RunConfig:
    name: str
    data: DataConfig
    model: ModelConfig
    diffusion: DiffusionConfig
    train: dict  # the [train] table, checked by fastdiff.training.TrainConfig
    sample: SampleConfig
    out_dir: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _parse_value(text: str):
    """A TOML value ("1e-4", "true", "[1, 2]", '"cosine"'), or the bare string when it is not one."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _table(cls, values: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    out = cls(**values)
    for f in dataclasses.fields(cls):  # TOML arrays come as lists; the defaults are tuples
        if isinstance(getattr(out, f.name), list):
            setattr(out, f.name, tuple(getattr(out, f.name)))
    return out


def from_dict(raw: dict, where: str = "config") -> RunConfig:
    """RunConfig from the parsed TOML (or `RunConfig.to_dict()`, as stored in checkpoints)."""
    raw = dict(raw)
    sections = {"data", "model", "diffusion", "train", "sample"}
    unknown = sorted(set(raw) - sections - {"name", "out_dir"})
    if unknown:
        raise ValueError(f"{where}: unknown top-level key(s) {unknown}; valid: name, out_dir, {sorted(sections)}")
    model = dict(raw.get("model", {}))
    if model.get("kind") == "classifier":
        model.setdefault("class_cond", True)  # its labels are the targets
    data = dict(raw.get("data", {}))
    options = dict(data.pop("options", {}))
    options.update({k: v for k, v in data.items() if k != "name"})
    cfg = RunConfig(
        name=str(raw.get("name", "run")), out_dir=raw.get("out_dir"),
        data=DataConfig(name=data.get("name", "digits"), options=options),
        model=_table(ModelConfig, model, f"{where} [model]"),
        diffusion=_table(DiffusionConfig, raw.get("diffusion", {}), f"{where} [diffusion]"),
        train=dict(raw.get("train", {})), sample=_table(SampleConfig, raw.get("sample", {}), f"{where} [sample]"))
    if cfg.model.kind not in MODEL_KINDS:
        raise ValueError(f"{where} [model] kind must be one of {MODEL_KINDS}, got {cfg.model.kind!r}")
    if not 0.0 <= cfg.diffusion.p_uncond < 1.0:
        raise ValueError(f"{where} [diffusion] p_uncond must lie in [0, 1), got {cfg.diffusion.p_uncond}")
    if cfg.diffusion.p_uncond > 0 and not cfg.model.class_cond:
        raise ValueError(f"{where}: [diffusion] p_uncond > 0 (classifier-free label dropout) needs [model] "
                         "class_cond = true")
    if cfg.model.kind == "classifier":
        _check_classifier(cfg, where)
    train_config(cfg)  # validate [train] now, not after the data are loaded
    return cfg


def _check_classifier(cfg: RunConfig, where: str) -> None:
    """The settings a noisy classifier cannot use are errors, not silently ignored."""
    from fastdiff.models.unet import POOLS

    if not cfg.model.class_cond:
        raise ValueError(f"{where}: [model] kind = 'classifier' is trained on the data's labels; class_cond must be "
                         "true (the default)")
    if cfg.model.pool not in POOLS:
        raise ValueError(f"{where} [model] pool must be one of {POOLS}, got {cfg.model.pool!r}")
    if cfg.diffusion.p_uncond > 0:
        raise ValueError(f"{where}: [diffusion] p_uncond (label dropout) does not apply to [model] kind = "
                         f"'classifier', got {cfg.diffusion.p_uncond}")
    if cfg.diffusion.schedule_sampler != "uniform":
        raise ValueError(f"{where}: [model] kind = 'classifier' trains on uniform timesteps; [diffusion] "
                         f"schedule_sampler must be 'uniform', got {cfg.diffusion.schedule_sampler!r}")


CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def config_names() -> list[str]:
    """Names of the run configs shipped in fastdiff/configs (also `configs/` in a checkout)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_config(path, overrides=()) -> RunConfig:
    """Read a TOML run config (a path, or a shipped one by name: "digits_cfg" or "configs/digits_cfg.toml" from
    any directory); `overrides` are
    "section.key=value" strings (value in TOML syntax) applied on top."""
    path = Path(path)
    shipped = CONFIG_DIR / f"{path.stem}.toml"
    if not path.is_file() and shipped.is_file() and str(path.parent) in (".", "configs"):
        path = shipped
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist (shipped configs: {config_names()})")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config {path}: not valid TOML: {e}") from None
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} must look like section.key=value")
        *parents, leaf = key.strip().split(".")
        table = raw
        for p in parents:
            table = table.setdefault(p, {})
            if not isinstance(table, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a table")
        table[leaf] = _parse_value(value.strip())
    return from_dict(raw, where=f"config {path.name}")


def train_config(cfg: RunConfig):
    """The [train] table as fastdiff.training.TrainConfig (its own checks name a bad field)."""
    from fastdiff.training import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(cfg.train) - names)
    if unknown:
        raise ValueError(f"[train]: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.train.items()}
    return TrainConfig(**values)


def build_dataset(cfg: RunConfig):
    """The [data] set (fastdiff.data.get_dataset)."""
    from fastdiff.data import get_dataset

    return get_dataset(cfg.data.name, **cfg.data.options)


def label_count(cfg: RunConfig, dataset) -> int | None:
    """Rows of the model's label embedding: the data's classes (+ 1 null class with label dropout), or None."""
    if not cfg.model.class_cond:
        return None
    if not dataset.num_classes:
        raise ValueError(f"[model] class_cond = true but data set {cfg.data.name!r} has no labels")
    return dataset.num_classes + (1 if cfg.diffusion.p_uncond > 0 else 0)


def build_model(cfg: RunConfig, dataset) -> nn.Module:
    """The model for `dataset`'s shape: UNetModel (ε-model) for images [C, H, H], MLPDenoiser for vectors [D],
    EncoderUNetModel (noisy classifier, logits over the data's classes) for kind "classifier"."""
    from fastdiff.models import EncoderUNetModel, MLPDenoiser, UNetModel

    m, shape = cfg.model, tuple(dataset.data_shape)
    classes = label_count(cfg, dataset)
    sigma = 2 if cfg.diffusion.learn_sigma else 1
    if m.kind == "mlp":
        if len(shape) != 1:
            raise ValueError(f"[model] kind = 'mlp' needs vector data, got data shape {shape}")
        return MLPDenoiser(data_dim=shape[0], width=m.width, depth=m.depth, out_dim=sigma * shape[0],
                           num_classes=classes)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"[model] kind = {m.kind!r} needs square images [C, H, H], got data shape {shape}")
    size = shape[1]
    bad = [r for r in m.attention_resolutions if r < 1 or size % r]
    if bad:
        raise ValueError(f"[model] attention_resolutions {bad} must divide the image size {size}")
    torso = {"image_size": size, "in_channels": shape[0], "model_channels": m.model_channels,
             "num_res_blocks": m.num_res_blocks,
             "attention_resolutions": tuple(size // r for r in m.attention_resolutions), "dropout": m.dropout,
             "channel_mult": m.channel_mult, "use_checkpoint": m.use_checkpoint, "num_heads": m.num_heads,
             "num_head_channels": m.num_head_channels, "use_scale_shift_norm": m.use_scale_shift_norm,
             "resblock_updown": m.resblock_updown, "use_new_attention_order": m.use_new_attention_order}
    if m.kind == "classifier":
        return EncoderUNetModel(out_channels=classes, pool=m.pool, **torso)
    return UNetModel(out_channels=sigma * shape[0], num_classes=classes, **torso)


def model_from_run_config(meta: dict, where: str = "checkpoint") -> tuple[RunConfig, nn.Module]:
    """(config, freshly built model) from a Trainer checkpoint's run_config {"config", "data_shape",
    "num_classes"} (what `fastdiff.app.runs.make_trainer` stores)."""
    from types import SimpleNamespace

    if "config" not in (meta or {}):
        raise ValueError(f"{where} was not written by a fastdiff run (no run_config['config'])")
    cfg = from_dict(meta["config"], where=where)
    return cfg, build_model(cfg, SimpleNamespace(data_shape=tuple(meta["data_shape"]),
                                                 num_classes=meta["num_classes"]))


def build_diffusion(cfg: RunConfig, timestep_respacing=""):
    """The (respaced) GaussianDiffusion of [diffusion] (fastdiff.diffusion.create_gaussian_diffusion)."""
    from fastdiff.diffusion import create_gaussian_diffusion

    d = cfg.diffusion
    return create_gaussian_diffusion(
        steps=d.steps, learn_sigma=d.learn_sigma, sigma_small=d.sigma_small, noise_schedule=d.noise_schedule,
        use_kl=d.use_kl, predict_xstart=d.predict_xstart, rescale_learned_sigmas=d.rescale_learned_sigmas,
        timestep_respacing=timestep_respacing)


def build_objective(cfg: RunConfig, diffusion, dataset):
    """The training objective: fastdiff.training.DiffusionObjective of [diffusion], or NoisyClassifierObjective
    (cross-entropy on x_t ~ q(x_t | x_0)) for [model] kind = "classifier"."""
    from fastdiff.training import DiffusionObjective, NoisyClassifierObjective

    if cfg.model.kind == "classifier":
        return NoisyClassifierObjective(diffusion, num_classes=label_count(cfg, dataset))
    return DiffusionObjective(diffusion=diffusion, schedule_sampler=cfg.diffusion.schedule_sampler,
                              p_uncond=cfg.diffusion.p_uncond,
                              num_classes=dataset.num_classes if cfg.model.class_cond else None)
