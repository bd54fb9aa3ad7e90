"""Discriminators d_φ(x_t, t) for Discriminator Guidance (Kim et al. 2023), each returning the logit
log(d_φ/(1 − d_φ)) as float [N]: the quantity whose input gradient is the score correction c_φ (§3.2) and what
`fastdiff.training.DiscriminatorObjective` trains with BCE (L_φ, Algorithm 1).

- `ClassifierFeatureDiscriminator`: the paper's pixel-space network (image experiments, "Discriminator network"): a
  frozen pretrained ADM noisy classifier extracts z_t = features(x_t, t), a small trainable U-Net encoder reads
  (z_t, t).
- `MLPDiscriminator`: the 2-D toy experiment's network ("4-layer MLP with 256 units").
- From scratch (the paper's latent-space discriminator) it is just `EncoderUNetModel(..., out_channels=1)`: its
  [N, 1] output is accepted wherever a logit is.
"""
from __future__ import annotations

import torch
from torch import nn

from fastdiff.models.mlp import MLPDenoiser
from fastdiff.models.unet import EncoderUNetModel


class ClassifierFeatureDiscriminator(nn.Module):
    """logit_φ(x_t, t) = head(classifier.forward_features(x_t, t), t): x: [N, C, H, W], timesteps: [N] -> [N].

    classifier: a pretrained noisy EncoderUNetModel; it is frozen here (requires_grad False on every parameter, and
    eval mode kept even under `.train()`, so dropout stays off), yet differentiable: gradients flow through it to
    x_t, as guidance needs. head: a trainable EncoderUNetModel with in_channels = classifier.feature_channels,
    image_size = H / classifier.feature_downsample and out_channels = 1 (`from_classifier` builds one).

    The state dict holds both, under "classifier." and "head.", so a checkpoint alone rebuilds the discriminator;
    the Trainer's optimizer and EMA see only the head (the trainable parameters). `head.state_dict()` alone is the
    official DG repository's checkpoint layout (discriminator weights next to a separately loaded ADM classifier).
    """

    def __init__(self, classifier: EncoderUNetModel, head: EncoderUNetModel):
        super().__init__()
        for name, net in (("classifier", classifier), ("head", head)):
            if not isinstance(net, EncoderUNetModel):
                raise TypeError(f"{name} must be an EncoderUNetModel, got {type(net).__name__}")
        if head.in_channels != classifier.feature_channels:
            raise ValueError(f"head.in_channels must equal classifier.feature_channels = "
                             f"{classifier.feature_channels}, got {head.in_channels}")
        if head.out_channels != 1:
            raise ValueError(f"head.out_channels must be 1 (one logit), got {head.out_channels}")
        self.classifier = classifier.requires_grad_(False).eval()
        self.head = head

    @classmethod
    def from_classifier(cls, classifier: EncoderUNetModel, model_channels: int = 128, num_res_blocks: int = 2,
                        channel_mult=(1,), attention_resolutions=(), pool: str = "adaptive",
                        **head_kwargs) -> ClassifierFeatureDiscriminator:
        """A fresh head on `classifier`'s features (image_size and in_channels from the classifier; other keyword
        arguments go to EncoderUNetModel). The defaults follow the DG repository's head: width 128, depth 2,
        scale-shift norm and resblock up/down (its classifier_defaults); attention pooling there, adaptive here (no
        head channels to choose)."""
        head_kwargs.setdefault("use_scale_shift_norm", True)
        head_kwargs.setdefault("resblock_updown", True)
        head = EncoderUNetModel(
            image_size=classifier.image_size // classifier.feature_downsample,
            in_channels=classifier.feature_channels, model_channels=model_channels, out_channels=1,
            num_res_blocks=num_res_blocks, attention_resolutions=attention_resolutions, channel_mult=channel_mult,
            pool=pool, **head_kwargs)
        return cls(classifier, head)

    def train(self, mode: bool = True) -> ClassifierFeatureDiscriminator:
        """Set the head's mode; the frozen classifier stays in eval mode."""
        super().train(mode)
        self.classifier.eval()
        return self

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x: [N, C, H, W], timesteps: [N] -> logit [N] (z_t: [N, C', H', W'] in between)."""
        z = self.classifier.forward_features(x, timesteps)
        return self.head(z, timesteps)[:, 0]


class MLPDiscriminator(MLPDenoiser):
    """logit_φ(x_t, t[, y]) for 2-D toys (Kim et al. 2023, 2-D toy experiment: "4-layer MLP with 256 units"): MLPDenoiser's
    time-embedded residual MLP with one output. x: [N, data_dim], timesteps: [N] (y: [N] when num_classes is set)
    -> [N]. depth=1 gives 4 linear layers on the data path (input, the residual block's two, output)."""

    def __init__(self, data_dim: int = 2, width: int = 256, depth: int = 1, num_classes: int | None = None,
                 time_dim: int = 128):
        super().__init__(data_dim=data_dim, width=width, depth=depth, out_dim=1, num_classes=num_classes,
                         time_dim=time_dim)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """x: [N, data_dim], timesteps: [N] -> logit [N]."""
        return super().forward(x, timesteps, y)[:, 0]
