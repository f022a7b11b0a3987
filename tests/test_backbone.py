import os
import subprocess
import sys

import pytest
import torch

from conftest import tiny_config
from fedrsclip.backbone import BackboneError, load_backbone
from fedrsclip.config import ModelConfig


def test_random_weights_only_when_asked(tiny_backbone):
    assert "RANDOM" in tiny_backbone.description
    assert all(not p.requires_grad for p in tiny_backbone.model.parameters())
    assert not tiny_backbone.model.training
    with pytest.raises(BackboneError, match="choose one"):
        load_backbone(ModelConfig(arch="fedrsclip-tiny", pretrained="openai", random_init=True))


def test_same_seed_same_weights_on_every_site(tiny_backbone):
    other = load_backbone(tiny_config().model)
    for a, b in zip(tiny_backbone.model.state_dict().values(), other.model.state_dict().values()):
        assert torch.equal(a, b)
    assert other.fingerprint == tiny_backbone.fingerprint


def test_unknown_arch_and_missing_checkpoint(tmp_path):
    with pytest.raises(BackboneError, match="not an open_clip model"):
        load_backbone(ModelConfig(arch="ViT-Q-99"))
    with pytest.raises(BackboneError, match="does not exist"):
        load_backbone(ModelConfig(arch="fedrsclip-tiny", pretrained=str(tmp_path / "clip.pt")))


def test_local_checkpoint_file_loads(tiny_backbone, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_backbone.model.state_dict(), path)
    with pytest.raises(BackboneError, match="model.quick_gelu"):  # a bare state dict does not say its activation
        load_backbone(ModelConfig(arch="fedrsclip-tiny", pretrained=str(path)))
    loaded = load_backbone(ModelConfig(arch="fedrsclip-tiny", pretrained=str(path), quick_gelu=False))
    assert "tiny.pt" in loaded.description and "file=" in loaded.fingerprint
    for a, b in zip(tiny_backbone.model.state_dict().values(), loaded.model.state_dict().values()):
        assert torch.equal(a, b)
    bad = tmp_path / "wrong.pt"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(BackboneError, match="not a CLIP"):
        load_backbone(ModelConfig(arch="fedrsclip-tiny", pretrained=str(bad), quick_gelu=False))
    other = tmp_path / "other-arch.pt"
    torch.save({**tiny_backbone.model.state_dict(), "token_embedding.weight": torch.zeros(10, 64)}, other)
    with pytest.raises(BackboneError, match="(?s)cannot load checkpoint .* model.arch"):
        load_backbone(ModelConfig(arch="fedrsclip-tiny", pretrained=str(other), quick_gelu=False))


def test_openai_weights_use_quickgelu(monkeypatch):
    import open_clip

    seen = {}

    def fake_create(*args, **kwargs):  # only inspects the call: no weights are needed to check the flag
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake_create)
    with pytest.raises(BackboneError):
        load_backbone(ModelConfig(arch="ViT-B-16", pretrained="openai"))
    assert seen["force_quick_gelu"] is True and seen["require_pretrained"] is True
    with pytest.raises(BackboneError):
        load_backbone(ModelConfig(arch="ViT-B-16", pretrained="laion2b_s34b_b88k"))
    assert seen["force_quick_gelu"] is False
    # not only "openai": open_clip's own table says which tags were trained with QuickGELU
    with pytest.raises(BackboneError, match="model.quick_gelu: true"):
        load_backbone(ModelConfig(arch="ViT-B-32", pretrained="laion400m_e31"))
    assert seen["force_quick_gelu"] is True
    with pytest.raises(BackboneError):
        load_backbone(ModelConfig(arch="ViT-B-32", pretrained="laion400m_e31", quick_gelu=False))  # the user's say
    assert seen["force_quick_gelu"] is False


def test_offline_pretrained_fails_with_instructions():
    """With the hub unreachable, asking for OpenAI weights stops and says how to pass a local file."""
    code = (
        "from fedrsclip.backbone import load_backbone; from fedrsclip.config import ModelConfig; "
        "load_backbone(ModelConfig(arch='ViT-B-16', pretrained='openai'))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "model.pretrained: /path/to/that/file" in proc.stderr
    assert "model.quick_gelu: true" in proc.stderr  # a bare file does not carry the activation
    assert "Model initialized randomly" not in proc.stderr


def test_encode_images_gives_projected_patch_tokens(tiny_backbone):
    pooled, tokens = tiny_backbone.encode_images(torch.randn(2, 3, 64, 64))
    assert pooled.shape == (2, tiny_backbone.embed_dim)
    assert tokens.shape == (2, (64 // 8) ** 2, tiny_backbone.embed_dim)
