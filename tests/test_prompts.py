import pytest
import torch

from fedrsclip.config import ModelConfig, PromptConfig
from fedrsclip.prompts import PromptLearner

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
        torch.testing.assert_close(learner.text_features(), full_length_features(learner, tiny_backbone),
                                   atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def vit_b16():
    """ViT-B/16's real text tower (random weights: equality does not depend on them)."""
    from fedrsclip.backbone import load_backbone

    return load_backbone(ModelConfig(arch="ViT-B-16", pretrained=None, random_init=True))


def test_vit_b16_shared_prompt_is_2048_values_and_truncation_exact(vit_b16):
    learner = PromptLearner(vit_b16, CLASSES, PromptConfig())
    assert learner.shared_ctx.numel() == 2048
    with torch.no_grad():
        torch.testing.assert_close(learner.text_features(), full_length_features(learner, vit_b16),
                                   atol=1e-5, rtol=0)


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
