import json

import pytest
import torch
import yaml

from fedrsclip.config import ConfigError, ModelConfig, PromptConfig
from fedrsclip.features import FeatureSet
from fedrsclip.prompts import PromptLearner, class_texts, load_class_descriptions
from fedrsclip.zeroshot import zero_shot_accuracy

CLASSES = ["dense residential", "airplane", "golf course", "storage tanks", "baseball diamond"]


def full_length_features(learner: PromptLearner, backbone) -> torch.Tensor:
    """The reference: the stock 77-token text encoder, with the prompt embeddings spliced in."""
    clip = backbone.model
    base = clip.token_embedding(learner.token_ids).float()
    emb = learner.embeddings(torch.stack(learner.contexts))
    out = []
    for p in range(emb.shape[0]):
        x = base.clone()
        x[:, : learner.length] = emb[p]
        x = clip.transformer(x + clip.positional_embedding, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)[torch.arange(len(CLASSES)), learner.eot_index]
        out.append(x @ clip.text_projection)
    return torch.stack(out)


@pytest.mark.parametrize("position", ["middle", "end", "front"])
def test_truncated_encoder_equals_full_length(tiny_backbone, position):
    learner = PromptLearner(tiny_backbone, CLASSES, PromptConfig(class_position=position))
    assert learner.length < 20
    with torch.no_grad():
        torch.testing.assert_close(
            learner.text_features(), full_length_features(learner, tiny_backbone), atol=1e-5, rtol=0
        )


@pytest.fixture(scope="module")
def vit_b16():
    """ViT-B/16's real text tower (random weights: equality does not depend on them)."""
    from fedrsclip.backbone import load_backbone

    return load_backbone(ModelConfig(arch="ViT-B-16", pretrained=None, random_init=True))


def test_vit_b16_shared_prompt_is_2048_values_and_truncation_exact(vit_b16):
    learner = PromptLearner(vit_b16, CLASSES, PromptConfig())
    assert learner.shared_ctx.numel() == 2048
    with torch.no_grad():
        torch.testing.assert_close(learner.text_features(), full_length_features(learner, vit_b16), atol=1e-5, rtol=0)


def test_class_in_the_middle(tiny_backbone):
    learner = PromptLearner(tiny_backbone, ["airplane"], PromptConfig(n_ctx=4, class_position="middle"))
    ids = learner.token_ids[0].tolist()
    x = tiny_backbone.tokenizer.encode("X")[0]
    airplane = tiny_backbone.tokenizer.encode("airplane")
    # [SOS] X X airplane X X . [EOT]
    assert ids[1:3] == [x, x] and ids[3 : 3 + len(airplane)] == airplane
    assert learner.ctx_positions[0].tolist() == [1, 2, 3 + len(airplane), 4 + len(airplane)]


def test_shared_init_is_identical_across_sites_private_is_not(tiny_backbone):
    a = PromptLearner(tiny_backbone, CLASSES, PromptConfig(), seed=0, private_seed=11)
    b = PromptLearner(tiny_backbone, CLASSES, PromptConfig(), seed=0, private_seed=12)
    assert torch.equal(a.shared_ctx, b.shared_ctx)
    assert not torch.equal(a.private_ctx, b.private_ctx)


def test_phrase_initialisation(tiny_backbone):
    learner = PromptLearner(tiny_backbone, CLASSES, PromptConfig(init="a satellite photo of"))
    ids = tiny_backbone.tokenizer.encode("a satellite photo of")
    assert learner.n_ctx == len(ids)
    expected = tiny_backbone.model.token_embedding(torch.tensor(ids)).float()
    torch.testing.assert_close(learner.shared_ctx.detach(), expected)


def test_single_prompt_has_no_private(tiny_backbone):
    learner = PromptLearner(tiny_backbone, CLASSES, PromptConfig(), dual=False)
    assert learner.private_ctx is None and learner.text_features().shape[0] == 1


def test_gradient_reaches_context(tiny_backbone):
    learner = PromptLearner(tiny_backbone, CLASSES, PromptConfig())
    learner.text_features().sum().backward()
    assert learner.shared_ctx.grad.abs().sum() > 0 and learner.private_ctx.grad.abs().sum() > 0


# ---- long class descriptions (prompt.class_descriptions) and 248-position backbones ------------------------------

SCENE = (
    "seen from above, {} lie in regular rows between straight paved roads, with small gardens, parked cars, "
    "trees along the pavements and a few larger buildings at the corners of the blocks"
)


def long_descriptions(repeat: int) -> dict[str, str]:
    return {c: f"{c}: " + "; ".join([SCENE.format(c)] * repeat) + "." for c in CLASSES}


@pytest.fixture(scope="module")
def tiny_long():
    """The tiny CLIP with 248 text positions (KPS of its 77-row table)."""
    from fedrsclip.backbone import load_backbone

    return load_backbone(ModelConfig(arch="fedrsclip-tiny", pretrained=None, random_init=True, context_length=248))


def write(tmp_path, data, name="descriptions.yaml"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("position", ["middle", "end", "front"])
def test_truncation_exact_for_200_token_descriptions_at_248(tiny_long, tmp_path, position):
    path = write(tmp_path, long_descriptions(repeat=6), "descriptions.json")
    learner = PromptLearner(tiny_long, CLASSES, PromptConfig(class_position=position, class_descriptions=path))
    assert learner.token_ids.shape[1] == 248
    assert 200 < learner.length <= 248
    with torch.no_grad():
        torch.testing.assert_close(learner.text_features(), full_length_features(learner, tiny_long), atol=1e-5, rtol=0)


def test_description_takes_the_class_position(tiny_long, tmp_path):
    text = "an airport with two runways and parked airplanes"
    path = write(tmp_path, {"airplane": text + ".", "unused": "another class"})
    learner = PromptLearner(tiny_long, ["airplane"], PromptConfig(n_ctx=4, class_descriptions=path))
    tok = tiny_long.tokenizer
    body, x, dot = tok.encode(text), tok.encode("X")[0], tok.encode(".")
    ids = learner.token_ids[0].tolist()
    # [SOS] X X description X X . [EOT]: the description's own final period is not doubled
    assert ids[: 7 + len(body)] == [tok.sot_token_id, x, x, *body, x, x, *dot, tok.eot_token_id]
    assert learner.ctx_positions[0].tolist() == [1, 2, 3 + len(body), 4 + len(body)]


def test_too_long_description_names_the_class_and_the_limit(tiny_backbone, tiny_long, tmp_path):
    path = write(tmp_path, long_descriptions(repeat=2))
    with pytest.raises(ConfigError, match=r"class 'dense residential'.* limit of 77 tokens.*context_length: 248"):
        PromptLearner(tiny_backbone, CLASSES, PromptConfig(class_descriptions=path))
    path = write(tmp_path, long_descriptions(repeat=8), "longer.yaml")
    with pytest.raises(ConfigError, match=r"class 'dense residential'.* limit of 248 tokens"):
        PromptLearner(tiny_long, CLASSES, PromptConfig(class_descriptions=path))


def test_bad_descriptions_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="prompt.class_descriptions: .*missing.yaml does not exist"):
        load_class_descriptions(tmp_path / "missing.yaml", CLASSES)
    folders = write(tmp_path, {"dense_residential": "houses", "airplane": "planes"}, "folders.yaml")
    assert load_class_descriptions(folders, ["dense residential"]) == {"dense residential": "houses"}
    twice = write(tmp_path, {"golf_course": "a", "golf course": "b"}, "twice.yaml")
    with pytest.raises(ConfigError, match="twice.yaml names a class twice"):
        load_class_descriptions(twice, CLASSES)
    partial = write(tmp_path, {"airplane": "planes"})
    with pytest.raises(ConfigError, match=r"no description for 4 class\(es\): 'dense residential'"):
        load_class_descriptions(partial, CLASSES)
    bad = write(tmp_path, {c: ["not", "text"] for c in CLASSES}, "bad.yaml")
    with pytest.raises(ConfigError, match="bad.yaml: each entry must map a class name to a non-empty text"):
        load_class_descriptions(bad, CLASSES)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_class_descriptions(tmp_path / "list.yaml", CLASSES)


def test_class_texts_names_and_descriptions():
    assert class_texts(["baseball_diamond"]) == ["baseball diamond"]
    assert class_texts(["a"], {"a": "  long text ending in a period.  "}) == ["long text ending in a period"]
    with pytest.raises(ConfigError, match="'b'"):
        class_texts(["a", "b"], {"a": "x"})


def test_zero_shot_uses_the_descriptions(tiny_long, tmp_path):
    descriptions = long_descriptions(repeat=1)
    texts = [f"a satellite photo of {t}." for t in class_texts(CLASSES, descriptions)]
    # images whose features are exactly their class's zero-shot text feature: every one is right only if the
    # zero-shot classifier is built from those same description texts
    feats = tiny_long.encode_text(texts)
    features = FeatureSet(feats, feats[:, None], torch.arange(len(CLASSES)), [f"{c}.png" for c in CLASSES])
    result = zero_shot_accuracy(tiny_long, CLASSES, features, descriptions=descriptions)
    assert result["accuracy"] == 100.0 and result["samples"] == len(CLASSES)
    by_name = tiny_long.encode_text([f"a satellite photo of {c}." for c in CLASSES])
    assert not torch.allclose(by_name, feats, atol=1e-3)  # names alone would be another classifier


def test_zero_shot_too_long_stops_instead_of_cutting(tiny_backbone):
    descriptions = long_descriptions(repeat=2)
    features = FeatureSet(torch.zeros(1, 64), torch.zeros(1, 1, 64), torch.zeros(1, dtype=torch.long), ["x.png"])
    with pytest.raises(ConfigError, match=r"class 'dense residential'.* limit of 77 tokens"):
        zero_shot_accuracy(tiny_backbone, CLASSES, features, descriptions=descriptions)
