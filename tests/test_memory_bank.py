"""Memory-bank InfoNCE: FIFO queue semantics, equality with InfoNCE on explicit negatives, EMA."""

import torch
import torch.nn.functional as F

import vlkit
from vlkit.losses.contrastive import clip_loss
from vlkit.losses.memory_bank import MemoryBankInfoNCE, MomentumEncoder


def _unit(*shape):
    return F.normalize(torch.randn(*shape), dim=-1)


def test_empty_bank_equals_clip_loss():
    image, text = _unit(6, 8), _unit(6, 8)
    loss = MemoryBankInfoNCE(8, size=10)(image, text, 14.0)
    torch.testing.assert_close(loss, clip_loss(image, text, 14.0))


def test_queued_embeddings_are_extra_negatives():
    bank = MemoryBankInfoNCE(8, size=10)
    old_image, old_text = _unit(4, 8), _unit(4, 8)
    bank(old_image, old_text, 10.0)  # enqueues
    image, text = _unit(3, 8), _unit(3, 8)
    loss = bank(image, text, 10.0)
    labels = torch.arange(3)
    i2t = 10.0 * image @ torch.cat([text, old_text]).T
    t2i = 10.0 * text @ torch.cat([image, old_image]).T
    expected = (F.cross_entropy(i2t, labels) + F.cross_entropy(t2i, labels)) / 2
    torch.testing.assert_close(loss, expected)


def test_queue_is_first_in_first_out_and_bounded():
    bank = MemoryBankInfoNCE(2, size=5)
    batches = [torch.full((3, 2), float(i)) for i in range(3)]
    for batch in batches:
        bank.enqueue(batch, batch)
    assert int(bank.filled) == 5
    # Sample k of the stream sits in row k % 5: the newest five are samples 4..8, i.e. rows
    # 0..4 hold samples 5, 6, 7, 8, 4 from batches 1, 2, 2, 2, 1; batch 0 is gone.
    assert bank.image_queue[:, 0].tolist() == [1.0, 2.0, 2.0, 2.0, 1.0]
    assert int(bank.pointer) == 9 % 5


def test_gradients_do_not_flow_into_the_queue():
    bank = MemoryBankInfoNCE(8, size=8)
    bank(_unit(4, 8), _unit(4, 8), 10.0)
    image = _unit(4, 8).requires_grad_(True)
    bank(image, _unit(4, 8), 10.0).backward()
    assert image.grad is not None and not bank.image_queue.requires_grad


def test_momentum_encoder_is_an_exponential_moving_average():
    model = vlkit.create_model("tiny")
    ema = MomentumEncoder(model, momentum=0.9)
    before = {n: p.clone() for n, p in ema.model.named_parameters()}
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)
    ema.update(model)
    for name, param in ema.model.named_parameters():
        expected = 0.9 * before[name] + 0.1 * model.get_parameter(name)
        torch.testing.assert_close(param, expected)
    image_keys, text_keys = ema(torch.randn(2, 3, 32, 32), torch.randint(1, 1000, (2, 32)))
    assert not image_keys.requires_grad and image_keys.shape == (2, 64)
