"""Checkpoint formats without real weights: state dicts in each published key layout, from random values.

Each file is written the way its project publishes it (OpenAI's TorchScript archive and its state dict, Long-CLIP /
LRSCLIP with `positional_embedding_res`, RemoteCLIP / GeoRSCLIP plain state dicts, SkyCLIP's open_clip training
checkpoint with a `state_dict` wrapper and `module.` prefixes, an open_clip hub folder) and loaded by the product's
`load_backbone`; the tests check architecture, context length, activation and weights.
"""

from __future__ import annotations

import functools
import json
import math
import warnings

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU

from fedrsclip.backbone import BackboneError, load_backbone
from fedrsclip.checkpoints import (
    KNOWN_FILES,
    LONG_CONTEXT,
    CheckpointError,
    kps_stretch,
    read_checkpoint,
    splice_long_positions,
)
from fedrsclip.config import ModelConfig, PromptConfig
from fedrsclip.prompts import PromptLearner

TINY = "fedrsclip-tiny"
SCALARS = {"input_resolution": 64, "context_length": 77, "vocab_size": 49408}


def kps_reference(table: torch.Tensor) -> torch.Tensor:
    """The issue's recipe, row by row: keep rows 0-19; for p >= 20, q = 20 + (p - 20) / 4, linear between rows
    floor(q) and floor(q) + 1; rows past the table's end extrapolate its last step."""
    rows = table.shape[0]
    out = []
    for p in range(4 * rows - 60):
        if p < 20:
            out.append(table[p])
            continue
        q = 20 + (p - 20) / 4
        i = math.floor(q)
        a = q - i
        if i + 1 < rows:
            out.append((1 - a) * table[i] + a * table[i + 1])
        else:  # beyond row rows-1: continue the line through rows rows-2 and rows-1
            out.append(table[rows - 1] + (q - (rows - 1)) * (table[rows - 1] - table[rows - 2]))
    return torch.stack(out)


def activation(model) -> type:
    kinds = {type(block.mlp.gelu) for block in model.transformer.resblocks}
    kinds |= {type(block.mlp.gelu) for block in model.visual.transformer.resblocks}
    assert len(kinds) == 1
    return kinds.pop()


@functools.lru_cache(maxsize=None)
def shapes(arch: str) -> dict[str, torch.Size]:
    """The real key layout of an open_clip architecture, without building its weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {k: v.shape for k, v in open_clip.create_model(arch, device="meta").state_dict().items()}


def light_state(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values in `arch`'s real shapes, each tensor one random row repeated (a small file for a big model)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes(arch).items():
        if not shape:
            out[key] = torch.randn((), generator=gen)
            continue
        row = torch.randn(shape[-1], generator=gen)
        out[key] = row.as_strided(tuple(shape), (0,) * (len(shape) - 1) + (1,))
    return out


@pytest.fixture(scope="module")
def original(tiny_backbone):
    """A stock 77-position CLIP state dict (the tiny architecture, random weights)."""
    return {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}


def long_clip_state(original: dict, seed: int = 1) -> dict:
    """Long-CLIP's layout: `positional_embedding` is KPS of the original (its rows 0-19 are frozen in training),
    `positional_embedding_res` the trained table whose rows 20-247 the encoder uses."""
    gen = torch.Generator().manual_seed(seed)
    pos = kps_stretch(original["positional_embedding"])
    res = pos + 0.1 * torch.randn(pos.shape, generator=gen)
    return {**original, "positional_embedding": pos, "positional_embedding_res": res}


def assert_weights(model, expected: dict, skip=("positional_embedding",)):
    state = model.state_dict()
    for key, value in expected.items():
        if key not in skip:
            torch.testing.assert_close(state[key], value.to(state[key].dtype), rtol=0, atol=0, msg=key)


# ---- KPS --------------------------------------------------------------------------------------------------------


def test_kps_matches_the_recipe_row_by_row():
    table = torch.randn(77, 16, dtype=torch.float64)
    stretched = kps_stretch(table)
    assert stretched.shape == (248, 16) and LONG_CONTEXT == 248
    reference = kps_reference(table)
    for p in range(248):
        torch.testing.assert_close(stretched[p], reference[p], rtol=0, atol=1e-12, msg=f"row {p}")
    assert torch.equal(stretched[:20], table[:20])
    assert torch.equal(stretched[20::4][:57], table[20:])  # every 4th row from 20 is an original row (20..76)
    assert torch.allclose(stretched[247], table[76] + 0.75 * (table[76] - table[75]))


def test_kps_is_not_open_clips_linear_resize():
    from open_clip.model import resize_text_pos_embed

    table = torch.randn(77, 8)
    model = torch.nn.Module()
    model.positional_embedding = torch.nn.Parameter(torch.zeros(248, 8))
    state = {"positional_embedding": table}
    resize_text_pos_embed(state, model)
    assert not torch.allclose(state["positional_embedding"], kps_stretch(table))
    with pytest.raises(CheckpointError, match="too short"):
        kps_stretch(torch.randn(20, 8))


def test_splice_takes_rows_0_19_and_res_20_on():
    pos, res = torch.randn(248, 4), torch.randn(248, 4)
    out = splice_long_positions({"positional_embedding": pos, "positional_embedding_res": res, "x": torch.ones(1)})
    assert set(out) == {"positional_embedding", "x"}
    assert torch.equal(out["positional_embedding"][:20], pos[:20])
    assert torch.equal(out["positional_embedding"][20:], res[20:])


# ---- each format loads to the right architecture, context length and activation ---------------------------------


def test_openai_state_dict_is_recognised_by_its_keys(original, tmp_path):
    path = tmp_path / "my-openai-copy.pt"
    torch.save({**original, **{k: torch.tensor(v) for k, v in SCALARS.items()}}, path)
    backbone = load_backbone(ModelConfig(arch=TINY, pretrained=str(path)))
    assert activation(backbone.model) is QuickGELU and backbone.quick_gelu
    assert backbone.context_length == 77 and "OpenAI CLIP" in backbone.description
    assert_weights(backbone.model, original, skip=())


def test_openai_torchscript_archive_loads(tmp_path):
    """OpenAI publishes TorchScript archives, which torch.load(weights_only=True) refuses."""
    model = open_clip.create_model(TINY, force_quick_gelu=True).eval()
    for key, value in SCALARS.items():
        model.__dict__.pop(key, None)
        model.register_buffer(key, torch.tensor(value))
    path = tmp_path / "ViT-tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notices
        torch.jit.save(torch.jit.script(model), str(path))
        backbone = load_backbone(ModelConfig(arch=TINY, pretrained=str(path)))
    assert backbone.quick_gelu and activation(backbone.model) is QuickGELU and backbone.context_length == 77
    expected = {k: v for k, v in model.state_dict().items() if k not in SCALARS}
    assert_weights(backbone.model, expected, skip=())


def test_long_clip_layout_loads_at_248_with_quickgelu(original, tmp_path):
    state = long_clip_state(original)
    path = tmp_path / "long.pt"
    torch.save(state, path)
    backbone = load_backbone(ModelConfig(arch=TINY, pretrained=str(path)))
    assert backbone.context_length == 248 and backbone.tokenizer.context_length == 248
    assert activation(backbone.model) is QuickGELU and "Long-CLIP/LRSCLIP" in backbone.description
    table = backbone.model.positional_embedding
    assert torch.equal(table[:20], state["positional_embedding"][:20])
    assert torch.equal(table[20:], state["positional_embedding_res"][20:])
    assert backbone.model.attn_mask.shape == (248, 248)
    assert_weights(backbone.model, original)
    assert "ctx=248" in backbone.fingerprint  # the feature-cache key tells it from the 77-position model


def test_long_clip_with_scalars_and_module_prefix_loads(original, tmp_path):
    state = {**long_clip_state(original), **{k: torch.tensor(v) for k, v in SCALARS.items()}}
    path = tmp_path / "longclip-run.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    backbone = load_backbone(ModelConfig(arch=TINY, pretrained=str(path)))
    assert backbone.context_length == 248 and backbone.quick_gelu


@pytest.mark.parametrize(
    "name, arch, family, quick",
    [
        ("RemoteCLIP-ViT-B-32.pt", "ViT-B-32", "RemoteCLIP", True),
        ("RS5M_ViT-B-32.pt", "ViT-B-32", "GeoRSCLIP", True),
        ("SkyCLIP_ViT_B32_top50pct/epoch_20.pt", "ViT-B-32", "SkyCLIP", False),
        ("LRSCLIP_ViT-B-16.pt", "ViT-B-16", "LRSCLIP", True),
    ],
)
def test_published_files_load_in_their_real_shapes(tmp_path, name, arch, family, quick):
    state = light_state(arch)
    if family == "LRSCLIP":
        pos = state["positional_embedding"]
        state["positional_embedding"] = kps_stretch(pos.contiguous())
        state["positional_embedding_res"] = kps_stretch(pos.contiguous()) + 1.0
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    if family == "SkyCLIP":  # open_clip's training checkpoint, saved from DistributedDataParallel
        torch.save(
            {
                "epoch": 20,
                "name": "skyclip",
                "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-9, "params": [0]}]},
            },
            path,
        )
    else:
        torch.save(state, path)
    backbone = load_backbone(ModelConfig(arch=arch, pretrained=str(path), device="cpu"))
    assert family in backbone.description
    assert backbone.quick_gelu is quick
    assert activation(backbone.model) is (QuickGELU if quick else torch.nn.GELU)
    assert backbone.context_length == (248 if family == "LRSCLIP" else 77)
    assert backbone.text_width == shapes(arch)["token_embedding.weight"][1]
    assert torch.equal(backbone.model.visual.conv1.weight, state["visual.conv1.weight"])


def test_published_name_with_another_arch_says_which(tmp_path, original):
    path = tmp_path / "RemoteCLIP-ViT-B-32.pt"
    torch.save(original, path)
    with pytest.raises(BackboneError, match="set model.arch: ViT-B-32"):
        load_backbone(ModelConfig(arch=TINY, pretrained=str(path)))
    fake = tmp_path / "longclip-B.pt"
    torch.save(original, fake)
    with pytest.raises(BackboneError, match="positional_embedding_res"):
        load_backbone(ModelConfig(arch="ViT-B-16", pretrained=str(fake)))


def test_known_table_entries_name_real_architectures():
    for name, known in KNOWN_FILES.items():
        assert known.arch in open_clip.list_models(), name
        assert known.why


def test_open_clip_hub_folder_is_recognised_by_its_config(original, tmp_path):
    from safetensors.torch import save_file

    config = {"model_cfg": {**open_clip.get_model_config(TINY), "quick_gelu": True}, "preprocess_cfg": {}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in original.items()}, tmp_path / "open_clip_model.safetensors")
    backbone = load_backbone(ModelConfig(arch=TINY, pretrained=str(tmp_path / "open_clip_model.safetensors")))
    assert backbone.quick_gelu and activation(backbone.model) is QuickGELU


# ---- QuickGELU is never a silent guess --------------------------------------------------------------------------


def test_unrecognised_file_needs_quick_gelu(original, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(original, path)
    with pytest.raises(BackboneError, match=r"model.quick_gelu: true .* model.quick_gelu: false"):
        load_backbone(ModelConfig(arch=TINY, pretrained=str(path)))
    for quick, kind in ((True, QuickGELU), (False, torch.nn.GELU)):
        backbone = load_backbone(ModelConfig(arch=TINY, pretrained=str(path), quick_gelu=quick))
        assert activation(backbone.model) is kind and backbone.quick_gelu is quick
        assert f"quickgelu={quick}" in backbone.fingerprint


def test_quickgelu_arch_counts_as_the_choice():
    # the package's tiny config has no -quickgelu twin: ViT-B-32's (the check stops before building it)
    with pytest.raises(BackboneError, match="builds QuickGELU but model.quick_gelu is false"):
        load_backbone(ModelConfig(arch="ViT-B-32-quickgelu", pretrained=None, random_init=True, quick_gelu=False))


def test_unreadable_file_names_it(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="cannot read checkpoint .*broken.pt"):
        load_backbone(ModelConfig(arch=TINY, pretrained=str(path), quick_gelu=False))
    with pytest.raises(CheckpointError, match="no 'positional_embedding'"):
        torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
        read_checkpoint(tmp_path / "other.pt")


# ---- context length: KPS on a stock CLIP ------------------------------------------------------------------------


def tiny_cfg(**kw) -> ModelConfig:
    return ModelConfig(arch=TINY, pretrained=None, random_init=True, **kw)


def test_context_length_248_applies_kps(tiny_backbone):
    long = load_backbone(tiny_cfg(context_length=248))
    assert long.context_length == 248 and long.tokenizer.context_length == 248
    torch.testing.assert_close(
        long.model.positional_embedding, kps_stretch(tiny_backbone.model.positional_embedding), rtol=0, atol=0
    )
    assert_weights(long.model, tiny_backbone.model.state_dict())
    assert long.fingerprint == tiny_backbone.fingerprint + "|ctx=248"


def test_impossible_context_lengths_are_refused(original, tmp_path):
    with pytest.raises(BackboneError, match="model.context_length: 100 is not possible .* 77, or 248"):
        load_backbone(tiny_cfg(context_length=100))
    with pytest.raises(BackboneError, match="model.context_length: 100 is not possible for ViT-B-16/openai"):
        load_backbone(ModelConfig(arch="ViT-B-16", pretrained="openai", context_length=100))  # before downloading
    path = tmp_path / "long.pt"
    torch.save(long_clip_state(original), path)
    with pytest.raises(BackboneError, match="model.context_length: 77 is not possible .*248 positions"):
        load_backbone(ModelConfig(arch=TINY, pretrained=str(path), context_length=77))
    from fedrsclip.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model.context_length"):
        load_config(overrides=["model.context_length=0"])


SHORT = ["airplane", "golf course", "storage tanks"]


def _features(backbone, texts=SHORT, **prompt):
    learner = PromptLearner(backbone, texts, PromptConfig(**prompt))
    with torch.no_grad():
        return learner.text_features(), backbone.encode_text([f"a satellite photo of {t}." for t in texts])


def test_short_prompts_identical_through_77_and_248_rows(tiny_backbone, original, tmp_path):
    """A prompt shorter than 20 tokens sees rows 0-19 only: KPS and the splice keep those rows."""
    base_prompt, base_text = _features(tiny_backbone)
    kps_prompt, kps_text = _features(load_backbone(tiny_cfg(context_length=248)))
    torch.testing.assert_close(kps_prompt, base_prompt, rtol=0, atol=1e-5)
    torch.testing.assert_close(kps_text, base_text, rtol=0, atol=1e-5)
    path = tmp_path / "long.pt"
    torch.save(long_clip_state(original), path)
    spliced = load_backbone(ModelConfig(arch=TINY, pretrained=str(path), quick_gelu=False))  # same activation
    long_prompt, long_text = _features(spliced)
    torch.testing.assert_close(long_prompt, base_prompt, rtol=0, atol=1e-5)
    torch.testing.assert_close(long_text, base_text, rtol=0, atol=1e-5)


def test_long_text_uses_res_rows_as_long_clip_does(original, tmp_path):
    """Past row 19 the spliced model equals Long-CLIP's encode_text: pos * mask1 + pos_res * mask2."""
    state = long_clip_state(original)
    path = tmp_path / "long.pt"
    torch.save(state, path)
    backbone = load_backbone(ModelConfig(arch=TINY, pretrained=str(path), quick_gelu=False))
    text = "a satellite photo of " + " and ".join(["a runway with parked airplanes"] * 8)
    tokens = backbone.tokenizer([text])
    assert int(tokens.argmax(-1)) > 40
    clip = backbone.model
    mask1 = (torch.arange(248) < 20).float()[:, None]
    positions = state["positional_embedding"] * mask1 + state["positional_embedding_res"] * (1 - mask1)
    with torch.no_grad():
        x = clip.token_embedding(tokens) + positions
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        expected = x[0, tokens.argmax(-1)] @ clip.text_projection
        torch.testing.assert_close(backbone.encode_text([text]), expected, rtol=0, atol=1e-5)
