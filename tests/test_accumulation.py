"""GradCache accumulation equals the full-batch gradient for every parameter, dropout on."""

import copy

import pytest
import torch

import vlkit
from vlkit.losses.contrastive import clip_loss
from vlkit.losses.sigmoid import sigmoid_loss
from vlkit.training.accumulation import accumulated_contrastive_backward


def _model(siglip: bool):
    config = copy.deepcopy(vlkit.PRESETS["tiny"])
    for tower in (config.vision, config.text):
        tower.dropout, tower.attention_dropout, tower.drop_path = 0.1, 0.1, 0.1
    if siglip:
        config.init_logit_bias = -10.0
        config.init_logit_scale = 2.3
    model = vlkit.create_model(config).train()
    if siglip:
        with torch.no_grad():
            model.logit_bias.fill_(-2.0)  # a bias where gradients are not vanishingly small
    return model


def _reference_grads(model, loss_fn, images, texts, micro):
    """The full-batch loss with one autograd graph, the micro-batches run in the same order and
    from the same RNG state, so dropout draws the same masks as the accumulated version."""
    model.zero_grad()
    image_parts, text_parts = [], []
    for start in range(0, images.shape[0], micro):
        image_parts.append(model.encode_image(images[start : start + micro], normalize=True))
        text_parts.append(model.encode_text(texts[start : start + micro], normalize=True))
    loss = loss_fn(torch.cat(image_parts), torch.cat(text_parts), model.temperature(),
                   model.logit_bias)  # fmt: skip
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("loss_name", ["clip", "siglip"])
@pytest.mark.parametrize("micro", [1, 3, 8, 16])
def test_accumulated_gradient_equals_full_batch_gradient(loss_name, micro):
    loss_fn = clip_loss if loss_name == "clip" else sigmoid_loss
    model = _model(loss_name == "siglip")
    images = torch.randn(16, 3, 32, 32)
    texts = torch.randint(1, 49000, (16, 32))
    texts[:, 10] = 49407

    torch.manual_seed(123)
    expected_loss, expected = _reference_grads(model, loss_fn, images, texts, micro)
    after_reference = torch.get_rng_state()

    model.zero_grad()
    torch.manual_seed(123)
    loss = accumulated_contrastive_backward(model, loss_fn, images, texts, micro)
    assert torch.equal(torch.get_rng_state(), after_reference)  # training continues identically

    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-6)
    for name, grad in expected.items():
        got = model.get_parameter(name).grad
        scale = grad.abs().max().clamp_min(1e-12)
        assert ((got - grad).abs().max() / scale) < 1e-5, name
    assert expected["logit_scale"].abs() > 0
    if loss_name == "siglip":
        assert expected["logit_bias"].abs() > 0


def test_dropout_actually_changes_the_embeddings():
    """Guards the test above: with dropout on, two passes differ unless the RNG is replayed."""
    model = _model(False)
    images = torch.randn(4, 3, 32, 32)
    first, second = model.encode_image(images), model.encode_image(images)
    assert not torch.allclose(first, second)


def test_batch_norm_statistics_are_updated_once():
    config = vlkit.CLIPConfig(
        vision=vlkit.models.ResNetConfig(
            image_size=64, layers=(1, 1, 1, 1), width=16, heads=4, output_dim=32
        ),  # fmt: skip
        text=copy.deepcopy(vlkit.PRESETS["tiny"].text),
        embed_dim=32,
        vision_projection=False,
    )
    model = vlkit.create_model(config).train()
    reference = copy.deepcopy(model)
    images, texts = torch.randn(8, 3, 64, 64), torch.randint(1, 49000, (8, 32))
    accumulated_contrastive_backward(model, clip_loss, images, texts, micro_batch_size=4)
    for start in (0, 4):
        reference.encode_image(images[start : start + 4])
    for (name, value), (_, expected) in zip(
        model.named_buffers(), reference.named_buffers(), strict=True
    ):
        torch.testing.assert_close(value, expected, msg=name)
