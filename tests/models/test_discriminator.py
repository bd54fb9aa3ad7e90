"""EncoderUNetModel.forward_features, ClassifierFeatureDiscriminator (frozen classifier features + trainable head) and
MLPDiscriminator."""
from __future__ import annotations

import pytest
import torch

from fastdiff.diffusion import create_gaussian_diffusion
from fastdiff.models import ClassifierFeatureDiscriminator, EncoderUNetModel, MLPDenoiser, MLPDiscriminator
from fastdiff.training import DiscriminatorObjective, TrainConfig, Trainer, discriminator_dataset
from tests.models.conftest import randomize_

pytestmark = pytest.mark.usefixtures("one_thread")


def _classifier(pool="adaptive", dropout=0.0, channel_mult=(1, 2)):
    """A randomised 8x8 noisy classifier; attention at downsample rate 2 when there are two levels."""
    return randomize_(EncoderUNetModel(image_size=8, in_channels=3, model_channels=32, out_channels=5,
                                       num_res_blocks=1, attention_resolutions=(2,) if len(channel_mult) > 1 else (),
                                       channel_mult=channel_mult,
                                       num_head_channels=32, pool=pool, dropout=dropout))


def _inputs(n=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 1000, (n,), generator=g)


# ---------------------------------------------------------------------------------------------------- features


@pytest.mark.parametrize("pool", ["adaptive", "attention", "spatial_v2"])
def test_forward_features_shape_and_what_forward_pools(pool):
    m = _classifier(pool).eval()
    x, t = _inputs()
    z = m.forward_features(x, t)
    assert (m.feature_channels, m.feature_downsample) == (64, 2)
    assert z.shape == (3, 64, 4, 4) and z.dtype == torch.float32
    with torch.no_grad():
        if pool == "spatial_v2":  # the last spatial mean is that of the middle block
            h, means = m._torso(x, t, spatial_means=True)
            torch.testing.assert_close(means[-1], z.mean(dim=(2, 3)))
            torch.testing.assert_close(h, z)
        else:  # the head (GN, SiLU, pool, projection) applied to the features is forward
            torch.testing.assert_close(m.out(z), m(x, t), rtol=1e-5, atol=1e-5)


def test_forward_features_one_level():
    m = _classifier(channel_mult=(1,))
    x, t = _inputs()
    assert m.forward_features(x, t).shape == (3, 32, 8, 8) and m.feature_downsample == 1


# ---------------------------------------------------------------------------------------------------- DG discriminator


def test_classifier_feature_discriminator_shapes_and_state():
    clf = _classifier("attention")
    disc = ClassifierFeatureDiscriminator.from_classifier(clf, model_channels=32, num_res_blocks=1)
    assert disc.head.in_channels == 64 and disc.head.image_size == 4 and disc.head.out_channels == 1
    x, t = _inputs()
    assert disc(x, t).shape == (3,)
    keys = list(disc.state_dict())
    assert {k.split(".")[0] for k in keys} == {"classifier", "head"}
    assert [k[len("classifier."):] for k in keys if k.startswith("classifier.")] == list(clf.state_dict())
    fresh = ClassifierFeatureDiscriminator.from_classifier(_classifier("attention"), model_channels=32,
                                                           num_res_blocks=1)
    fresh.load_state_dict(disc.state_dict())
    randomize_(disc.head)
    fresh.load_state_dict(disc.state_dict())
    torch.testing.assert_close(fresh(x, t), disc(x, t))


def test_gradient_reaches_x_through_the_frozen_classifier():
    """∇ₓ logit (the DG correction, eq. 9) flows through the classifier, whose parameters get no gradient."""
    disc = ClassifierFeatureDiscriminator.from_classifier(_classifier(), model_channels=32, num_res_blocks=1)
    randomize_(disc.head)  # ADM zero-initialises the head's output: the logit would not depend on x
    disc.classifier.requires_grad_(False)  # randomize_ kept requires_grad; the wrapper set it off already
    x, t = _inputs()
    x.requires_grad_(True)
    disc(x, t).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in disc.classifier.parameters())
    assert all(p.grad is not None for p in disc.head.parameters())
    # the same gradient as the composition written out
    x2 = x.detach().clone().requires_grad_(True)
    disc.head(disc.classifier.forward_features(x2, t), t).sum().backward()
    torch.testing.assert_close(x2.grad, x.grad)


def test_classifier_stays_in_eval_mode():
    """Dropout in the frozen classifier stays off under .train(): its features are deterministic."""
    disc = ClassifierFeatureDiscriminator.from_classifier(_classifier(dropout=0.5), model_channels=32,
                                                          num_res_blocks=1, dropout=0.0)
    disc.train()
    assert disc.training and disc.head.training and not disc.classifier.training
    x, t = _inputs()
    torch.testing.assert_close(disc.classifier.forward_features(x, t), disc.classifier.forward_features(x, t))
    disc.classifier.train()  # the wrapper's guarantee is what makes the line above pass
    assert not torch.equal(disc.classifier.forward_features(x, t), disc.classifier.forward_features(x, t))


def test_trainer_updates_only_the_head(tmp_path):
    torch.manual_seed(0)
    disc = ClassifierFeatureDiscriminator.from_classifier(_classifier(),
                                                          model_channels=32, num_res_blocks=1)
    frozen = {k: v.clone() for k, v in disc.classifier.state_dict().items()}
    head = {k: v.clone() for k, v in disc.head.state_dict().items()}
    data = discriminator_dataset(torch.rand(8, 3, 8, 8), -torch.rand(8, 3, 8, 8))
    trainer = Trainer(disc, DiscriminatorObjective(create_gaussian_diffusion(steps=100)), data,
                      TrainConfig(total_steps=3, batch_size=8, lr=1e-2, save_interval=3), tmp_path, device="cpu")
    trainer.train()
    assert all(name.startswith("head.") for name in trainer._param_names)
    assert all(torch.equal(v, disc.classifier.state_dict()[k]) for k, v in frozen.items())
    assert any(not torch.equal(v, disc.head.state_dict()[k]) for k, v in head.items())


def test_bad_discriminator_parts():
    clf = _classifier()
    head = EncoderUNetModel(image_size=4, in_channels=64, model_channels=32, out_channels=1, num_res_blocks=1,
                            attention_resolutions=(), channel_mult=(1,))
    ClassifierFeatureDiscriminator(clf, head)
    with pytest.raises(ValueError, match="head.in_channels must equal classifier.feature_channels = 64, got 32"):
        ClassifierFeatureDiscriminator(clf, EncoderUNetModel(image_size=4, in_channels=32, model_channels=32,
                                                             out_channels=1, num_res_blocks=1,
                                                             attention_resolutions=(), channel_mult=(1,)))
    with pytest.raises(ValueError, match="head.out_channels must be 1"):
        ClassifierFeatureDiscriminator(clf, EncoderUNetModel(image_size=4, in_channels=64, model_channels=32,
                                                             out_channels=2, num_res_blocks=1,
                                                             attention_resolutions=(), channel_mult=(1,)))
    with pytest.raises(TypeError, match="classifier must be an EncoderUNetModel, got Linear"):
        ClassifierFeatureDiscriminator(torch.nn.Linear(2, 2), head)


# ---------------------------------------------------------------------------------------------------- toy MLP


def test_mlp_discriminator():
    d = MLPDiscriminator()
    assert isinstance(d, MLPDenoiser)
    x, t = torch.randn(7, 2), torch.randint(0, 1000, (7,))
    assert d(x, t).shape == (7,)
    data_path = [d.inp, d.blocks[0].fc1, d.blocks[0].fc2, d.out[-1]]  # "4-layer MLP with 256 units"
    assert [m.out_features for m in data_path] == [256, 256, 256, 1] and len(d.blocks) == 1
    cond = MLPDiscriminator(num_classes=3, width=16)
    assert cond(x, t, torch.tensor([0, 1, 2, 0, 1, 2, 0])).shape == (7,)
    with pytest.raises(ValueError, match=r"x must be \[N, 2\]"):
        d(torch.randn(7, 3), t)
