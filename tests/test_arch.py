"""arch.py: the thesis' layouts exactly at the defaults, other sizes by the same code, freezing, init."""
import pytest
import torch
import torch.nn as nn

import arch


# ---- the thesis code's modules, written out from the appendix (repr) of the thesis ----------------------

def thesis_generator():
    def block(i, o, k=4, s=2, p=1):
        return nn.Sequential(nn.ConvTranspose2d(i, o, k, s, p), nn.BatchNorm2d(o), nn.ReLU(True))

    class Generator(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer1 = block(100, 2048, 4, 1, 0)
            self.layer2 = block(2048, 1024)
            self.layer3 = block(1024, 512)
            self.layer4 = block(512, 256)
            self.layer5 = block(256, 128)
            self.final = nn.Sequential(nn.ConvTranspose2d(128, 3, 4, 2, 1))
            self.output = nn.Tanh()
    return Generator()


def thesis_generator_kd():
    def block(i, o, k=4, s=2, p=1):
        return nn.Sequential(nn.ConvTranspose2d(i, o, k, s, p), nn.BatchNorm2d(o), nn.ReLU(True))

    class GeneratorKD(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer1 = block(100, 512, 4, 1, 0)
            self.layer2 = block(512, 256, 8, 4, 2)
            self.layer3 = block(256, 128)
            self.layer4 = block(128, 64)
            self.final = nn.Sequential(nn.ConvTranspose2d(64, 3, 4, 2, 1))
            self.output = nn.Tanh()
    return GeneratorKD()


def thesis_discriminator(sigmoid=False):
    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 4, 2, 1), nn.InstanceNorm2d(o, affine=True), nn.LeakyReLU(0.2, True))

    class Discriminator(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer1, self.layer2, self.layer3 = block(3, 64), block(64, 128), block(128, 256)
            self.layer4, self.layer5 = block(256, 512), block(512, 1024)
            self.output = nn.Sequential(nn.Conv2d(1024, 1, 4, 1, 0), *([nn.Sigmoid()] if sigmoid else []))
    return Discriminator()


@pytest.mark.parametrize("ours, theirs, n_params", [
    (arch.Generator, thesis_generator, 47_859_331),
    (arch.GeneratorKD, thesis_generator_kd, 9_869_123),
    (arch.Discriminator, thesis_discriminator, 11_166_529),
])
def test_defaults_are_the_thesis_models(ours, theirs, n_params):
    torch.manual_seed(0)
    mine, thesis = ours(), theirs()
    assert arch.count_params(mine) == n_params == sum(p.numel() for p in thesis.parameters())
    assert repr(mine) == repr(thesis)  # module names, order, layer types and hyper-parameters
    sd = thesis.state_dict()
    assert {k: v.shape for k, v in mine.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    mine.load_state_dict(sd, strict=True)  # a state_dict saved by the thesis code loads strictly
    thesis.load_state_dict(mine.state_dict(), strict=True)  # and ours loads there


def test_dcgan_discriminator_matches_thesis_and_returns_logits():
    mine, thesis = arch.DCGANDiscriminator(img_size=128), thesis_discriminator(sigmoid=True)
    assert repr(mine).replace("DCGANDiscriminator(", "Discriminator(", 1) == repr(thesis)
    thesis.load_state_dict(mine.state_dict(), strict=True)
    x = torch.randn(2, 3, 128, 128)
    mine.eval(), thesis.eval()
    with torch.no_grad():
        logits = mine(x)
        prob_thesis = thesis_forward(thesis, x)
    assert logits.shape == (2,)
    torch.testing.assert_close(torch.sigmoid(logits), prob_thesis)
    torch.testing.assert_close(mine.probability(x).detach(), prob_thesis)


def thesis_forward(model, x):
    for m in model.children():
        x = m(x)
    return x.view(-1)


def test_file_sizes_match_the_thesis():
    # thesis: 186 MB teacher, 38 MB student (fp32 state_dict files)
    assert round(arch.param_bytes(arch.Generator()) / 2**20, 1) == 182.6
    assert round(arch.param_bytes(arch.GeneratorKD()) / 2**20, 1) == 37.7


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_every_size_runs_and_round_trips_its_config(size):
    z = torch.randn(2, 100, 1, 1)
    for cls in (arch.Generator, arch.GeneratorKD):
        g = cls(img_size=size, width=0.125)
        assert g(z).shape == (2, 3, size, size)
        assert arch.infer_config(g.state_dict()) == g.config
        assert arch.build(g.config).config == g.config
    d = arch.Discriminator(img_size=size, width=0.125)
    assert d(torch.randn(2, 3, size, size)).shape == (2,)
    assert arch.infer_config(d.state_dict()) == d.config


def test_width_scales_channels_and_bad_sizes_fail():
    assert arch.Generator(img_size=64, width=0.5).layer1[0].out_channels == 512
    assert arch.count_params(arch.Generator(img_size=64, width=0.25)) < arch.count_params(arch.Generator(img_size=64)) / 10
    for bad in (48, 8, 100):
        with pytest.raises(ValueError):
            arch.Generator(img_size=bad)


def test_weights_init_is_dcgan():
    torch.manual_seed(0)
    g = arch.Generator(img_size=64, width=0.5)
    g.apply(arch.weights_init)
    w = g.layer2[0].weight
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    assert abs(g.layer2[1].weight.mean().item() - 1) < 0.01 and abs(g.layer2[1].weight.std().item() - 0.02) < 0.01
    assert torch.count_nonzero(g.layer2[0].bias) == 0 and torch.count_nonzero(g.layer2[1].bias) == 0


def test_freezable_layers_and_freeze():
    g, d = arch.Generator(img_size=64, width=0.25), arch.Discriminator(img_size=64, width=0.25)
    assert arch.freezable_layers(g) == ["layer1", "layer2", "layer3", "layer4", "final"]
    assert arch.freezable_layers(d) == ["layer1", "layer2", "layer3", "layer4", "output"]
    assert arch.freeze_layers(g, 2) == ["layer1", "layer2"]
    assert not any(p.requires_grad for p in g.layer2.parameters()) and all(p.requires_grad for p in g.layer3.parameters())
    g.train()
    assert not g.layer1[1].training and g.layer3[1].training  # frozen BatchNorm stays in eval mode
    with pytest.raises(ValueError, match="has 5"):
        arch.freeze_layers(d, 6)


def test_frozen_prefix_keeps_no_graph_but_passes_image_gradients():
    d = arch.Discriminator(img_size=32, width=0.25)
    arch.freeze_layers(d, 2)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        d(torch.randn(2, 3, 32, 32)).sum().backward()
    frozen_free = sum(saved)
    saved.clear()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        d(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the gradient reaches the image through frozen blocks
    assert frozen_free < sum(saved)  # without an image gradient the frozen blocks saved nothing
    assert all(p.grad is None for p in d.layer1.parameters())
