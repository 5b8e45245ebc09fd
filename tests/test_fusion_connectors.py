"""Tests for vlkit.fusion: each module's defining property."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlkit.fusion import (
    IGNORE_INDEX,
    CrossModalAttention,
    GatedCrossAttentionBlock,
    LlavaProjector,
    PerceiverResampler,
    PixelShuffleConnector,
    QwenResampler,
    build_projector,
    media_time_index,
    pixel_shuffle,
    sincos_2d,
    splice_image_tokens,
)

# ---------------------------------------------------------------- cross-attention


def _mha_with_copied_weights(attn: CrossModalAttention, media_dim: int) -> nn.MultiheadAttention:
    d = attn.dim
    mha = nn.MultiheadAttention(d, attn.num_heads, batch_first=True, kdim=media_dim, vdim=media_dim)
    with torch.no_grad():
        if mha._qkv_same_embed_dim:
            mha.in_proj_weight.copy_(
                torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            )
        else:
            mha.q_proj_weight.copy_(attn.q_proj.weight)
            mha.k_proj_weight.copy_(attn.k_proj.weight)
            mha.v_proj_weight.copy_(attn.v_proj.weight)
        mha.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        mha.out_proj.weight.copy_(attn.out_proj.weight)
        mha.out_proj.bias.copy_(attn.out_proj.bias)
    return mha.eval()


@pytest.mark.parametrize("media_dim", [32, 24])
@pytest.mark.parametrize("return_attention", [False, True])
def test_cross_attention_matches_nn_multihead_attention(media_dim, return_attention):
    attn = CrossModalAttention(32, 4, media_dim=media_dim).eval()
    mha = _mha_with_copied_weights(attn, media_dim)
    text, media = torch.randn(2, 5, 32), torch.randn(2, 7, media_dim)
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[0, 4:] = False
    valid[1, 0] = False
    ref, ref_w = mha(text, media, media, key_padding_mask=~valid, average_attn_weights=False)
    out = attn(text, media, valid, return_attention=return_attention)
    if return_attention:
        out, probs = out
        torch.testing.assert_close(probs, ref_w, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_cross_attention_probabilities_and_masking():
    attn = CrossModalAttention(16, 2).eval()
    text, media = torch.randn(3, 4, 16), torch.randn(3, 6, 16)
    valid = torch.rand(3, 6) > 0.4
    valid[:, 0] = True
    out, probs = attn(text, media, valid, return_attention=True)
    assert out.shape == (3, 4, 16) and probs.shape == (3, 2, 4, 6)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 2, 4))
    assert (probs.masked_select(~valid[:, None, None, :].expand_as(probs)) == 0).all()
    # SDPA path and explicit path agree.
    torch.testing.assert_close(attn(text, media, valid), out, atol=1e-6, rtol=1e-5)


def test_cross_attention_masked_keys_do_not_matter():
    attn = CrossModalAttention(16, 2).eval()
    text, media = torch.randn(1, 4, 16), torch.randn(1, 6, 16)
    valid = torch.tensor([[True, True, False, True, False, False]])
    perturbed = media.clone()
    perturbed[~valid] = 1e3 * torch.randn_like(perturbed[~valid])
    torch.testing.assert_close(attn(text, media, valid), attn(text, perturbed, valid))


def test_cross_attention_accepts_4d_media():
    attn = CrossModalAttention(16, 2).eval()
    text, media = torch.randn(2, 3, 16), torch.randn(2, 2, 5, 16)
    torch.testing.assert_close(attn(text, media), attn(text, media.flatten(1, 2)))


def test_cross_attention_fully_masked_row_is_zero_not_nan():
    attn = CrossModalAttention(16, 2, bias=False).eval()
    text, media = torch.randn(1, 3, 16), torch.randn(1, 4, 16)
    am = torch.ones(1, 3, 4, dtype=torch.bool)
    am[0, 1] = False
    for ret in (False, True):
        out = attn(text, media, attn_mask=am, return_attention=ret)
        out = out[0] if ret else out
        assert torch.isfinite(out).all() and (out[0, 1] == 0).all()


# ---------------------------------------------------------------- gated xattn-dense


def _set_gates(block: GatedCrossAttentionBlock, xattn: float, ffw: float) -> None:
    with torch.no_grad():
        block.alpha_xattn.fill_(xattn)
        block.alpha_ffw.fill_(ffw)


def test_gated_block_is_exact_identity_at_init():
    block = GatedCrossAttentionBlock(32, media_dim=24, num_heads=4)
    assert block.alpha_xattn.item() == 0 and block.alpha_ffw.item() == 0
    text, media = torch.randn(2, 9, 32), torch.randn(2, 3, 5, 24)
    locs = torch.zeros(2, 9, dtype=torch.bool)
    locs[:, [1, 4, 6]] = True
    out = block(text, media, media_locations=locs)
    assert torch.equal(out, text)
    assert torch.equal(block(text, media[:, 0]), text)


def test_media_time_index():
    locs = torch.tensor([[False, True, False, False, True, False]])
    assert media_time_index(locs).tolist() == [[0, 1, 1, 1, 2, 2]]


def test_gated_block_attends_only_to_most_recent_image():
    block = GatedCrossAttentionBlock(32, media_dim=24, num_heads=4).eval()
    _set_gates(block, 0.7, 0.5)
    text, media = torch.randn(1, 8, 32), torch.randn(1, 2, 5, 24)
    # token 0,1: no image; image 1 at token 2 (tokens 2-4); image 2 at token 5 (tokens 5-7).
    locs = torch.zeros(1, 8, dtype=torch.bool)
    locs[0, [2, 5]] = True
    out = block(text, media, media_locations=locs)

    change_img1 = media.clone()
    change_img1[:, 0] += 10 * torch.randn(5, 24)
    out1 = block(text, change_img1, media_locations=locs)
    change_img2 = media.clone()
    change_img2[:, 1] += 10 * torch.randn(5, 24)
    out2 = block(text, change_img2, media_locations=locs)

    # Image-1 perturbation changes only tokens 2-4; image-2 perturbation only tokens 5-7.
    torch.testing.assert_close(out1[:, :2], out[:, :2], rtol=0, atol=0)
    torch.testing.assert_close(out1[:, 5:], out[:, 5:], rtol=0, atol=0)
    assert not torch.allclose(out1[:, 2:5], out[:, 2:5])
    torch.testing.assert_close(out2[:, :5], out[:, :5], rtol=0, atol=0)
    assert not torch.allclose(out2[:, 5:], out[:, 5:])


def test_gated_block_tokens_before_any_image_get_no_cross_attention():
    block = GatedCrossAttentionBlock(32, num_heads=4).eval()
    _set_gates(block, 1.0, 0.0)  # only the cross-attention branch is active
    text, media = torch.randn(2, 6, 32), torch.randn(2, 2, 4, 32)
    locs = torch.zeros(2, 6, dtype=torch.bool)
    locs[0, 3] = True
    locs[1, [2, 4]] = True
    out = block(text, media, media_locations=locs)
    assert torch.equal(out[0, :3], text[0, :3])
    assert torch.equal(out[1, :2], text[1, :2])
    assert not torch.allclose(out[0, 3:], text[0, 3:])
    # With the FFW active too, they still do not depend on the media at all.
    _set_gates(block, 1.0, 1.0)
    ref = block(text, media, media_locations=locs)
    other = block(text, torch.randn_like(media), media_locations=locs)
    assert torch.equal(ref[0, :3], other[0, :3]) and torch.equal(ref[1, :2], other[1, :2])


def test_gated_block_all_previous_media_mode_and_gradients():
    block = GatedCrossAttentionBlock(16, num_heads=2, only_attend_immediate_media=False)
    _set_gates(block, 0.5, 0.5)
    text, media = torch.randn(1, 6, 16), torch.randn(1, 2, 3, 16)
    locs = torch.zeros(1, 6, dtype=torch.bool)
    locs[0, [1, 3]] = True
    out = block(text, media, media_locations=locs)
    change_img1 = media.clone()
    change_img1[:, 0] += 5
    out1 = block(text, change_img1, media_locations=locs)
    assert not torch.allclose(out1[:, 3:], out[:, 3:])  # later tokens still see image 1
    out.sum().backward()
    assert block.alpha_xattn.grad is not None and block.alpha_xattn.grad.abs() > 0


# ---------------------------------------------------------------- perceiver resampler


@pytest.mark.parametrize("shape", [(2, 5, 32), (2, 17, 32), (2, 1, 9, 32), (2, 3, 4, 32)])
def test_perceiver_resampler_fixed_output_size(shape):
    resampler = PerceiverResampler(32, depth=2, num_latents=6, num_heads=2, head_dim=8)
    out = resampler(torch.randn(*shape))
    assert out.shape == (2, 6, 32) and torch.isfinite(out).all()


def test_perceiver_keys_include_latents():
    resampler = PerceiverResampler(16, depth=1, num_latents=4, num_heads=2, head_dim=8).eval()
    attn = resampler.layers[0][0]
    media, latents = torch.randn(1, 5, 16), torch.randn(1, 4, 16)
    seen = {}
    attn.to_kv.register_forward_hook(lambda m, i, o: seen.update(n=i[0].shape[1]))
    attn(media, latents)
    assert seen["n"] == 5 + 4
    # With all media masked out, the latents still attend to themselves (finite output).
    out = attn(media, latents, torch.zeros(1, 5, dtype=torch.bool))
    assert torch.isfinite(out).all()


def test_perceiver_time_embeddings_and_padding_mask():
    resampler = PerceiverResampler(16, depth=2, num_latents=3, num_heads=2, head_dim=8).eval()
    frames = torch.randn(1, 2, 4, 16)
    swapped = frames.flip(1)  # same tokens, different frame order
    assert not torch.allclose(resampler(frames), resampler(swapped))
    with torch.no_grad():
        resampler.time_embeddings.zero_()
    torch.testing.assert_close(resampler(frames), resampler(swapped), atol=1e-5, rtol=1e-5)
    # Padded tokens are ignored.
    mask = torch.ones(1, 2, 4, dtype=torch.bool)
    mask[0, 1, 2:] = False
    perturbed = frames.clone()
    perturbed[0, 1, 2:] += 100
    torch.testing.assert_close(resampler(frames, mask), resampler(perturbed, mask))
    with pytest.raises(ValueError, match="frames"):
        resampler(torch.randn(1, 9, 4, 16))


# ---------------------------------------------------------------- LLaVA projector


def test_llava_projectors():
    lin = build_projector("linear", 8, 12)
    assert isinstance(lin, nn.Linear) and lin.in_features == 8 and lin.out_features == 12
    mlp = LlavaProjector(8, 12, "mlp2x_gelu")
    seq = mlp.proj
    assert [type(m) for m in seq] == [nn.Linear, nn.GELU, nn.Linear]
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(mlp(x), seq[2](F.gelu(seq[0](x))))
    assert mlp(x).shape == (2, 5, 12)
    with pytest.raises(ValueError, match="unknown"):
        build_projector("qformer", 8, 12)


def test_splice_image_tokens_positions_and_labels():
    img = 99
    ids = torch.tensor([[1, img, img, 2, 3, img, img, 4], [5, 6, img, img, 7, 8, 9, 10]])
    embeds = torch.randn(2, 8, 4)
    feats = torch.randn(3, 2, 4)
    labels = ids.clone()
    out, new_labels = splice_image_tokens(ids, embeds, feats, img, labels)
    torch.testing.assert_close(out[0, 1:3], feats[0])
    torch.testing.assert_close(out[0, 5:7], feats[1])
    torch.testing.assert_close(out[1, 2:4], feats[2])
    text_pos = ids != img
    torch.testing.assert_close(out[text_pos], embeds[text_pos])
    assert (new_labels[ids == img] == IGNORE_INDEX).all()
    assert torch.equal(new_labels[text_pos], labels[text_pos])
    assert torch.equal(labels, ids)  # input labels not modified in place
    # list of variable-length features; labels optional
    out2, none = splice_image_tokens(ids, embeds, list(feats.unbind(0)), img)
    assert none is None and torch.equal(out2, out)


def test_splice_image_tokens_count_mismatch_errors():
    img = 99
    ids = torch.tensor([[1, img, img, 2, img, img]])
    embeds = torch.randn(1, 6, 4)
    with pytest.raises(
        ValueError, match=r"2 image placeholder run\(s\) with 4 .*1 image\(s\) with 2"
    ):
        splice_image_tokens(ids, embeds, torch.randn(1, 2, 4), img)
    with pytest.raises(ValueError, match=r"4 placeholder token\(s\).*6 feature"):
        splice_image_tokens(ids, embeds, torch.randn(2, 3, 4), img)
    with pytest.raises(ValueError, match="image 0: placeholder run has 2 token"):
        splice_image_tokens(ids, embeds, [torch.randn(1, 4), torch.randn(3, 4)], img)


# ---------------------------------------------------------------- Idefics3 pixel shuffle


@pytest.mark.parametrize("scale", [2, 4])
def test_pixel_shuffle_connector_matches_transformers(scale):
    pytest.importorskip("transformers")
    from transformers import Idefics3Config
    from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector

    vdim, tdim, side = 16, 24, 8
    cfg = Idefics3Config(
        vision_config={"hidden_size": vdim, "num_attention_heads": 4},
        text_config={"hidden_size": tdim, "num_attention_heads": 4},
        scale_factor=scale,
    )
    ref = Idefics3Connector(cfg).eval()
    ours = PixelShuffleConnector(vdim, tdim, scale).eval()
    ours.load_state_dict(ref.state_dict())  # same parameter names and shapes
    x = torch.randn(2, side * side, vdim)
    assert torch.equal(pixel_shuffle(x, scale), ref.pixel_shuffle(x, scale))
    with torch.no_grad():
        out, expected = ours(x), ref(x)
    assert out.shape == (2, side * side // scale**2, tdim)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("scale", [2, 4])
def test_pixel_shuffle_channel_order_differs_from_pixel_unshuffle(scale):
    b, side, d = 2, 8, 3
    x = torch.randn(b, side * side, d)
    ours = pixel_shuffle(x, scale)  # (B, N/s^2, s^2*D)
    grid = x.view(b, side, side, d).permute(0, 3, 1, 2)  # (B, D, H, W)
    unshuf = F.pixel_unshuffle(grid, scale).flatten(2).transpose(1, 2)  # (B, N/s^2, D*s^2)
    assert ours.shape == unshuf.shape
    assert not torch.equal(ours, unshuf)
    # Same tokens, channels permuted: ours is (row_off, col_off, channel), theirs is
    # (channel, row_off, col_off).
    reordered = unshuf.view(b, -1, d, scale, scale).permute(0, 1, 3, 4, 2).flatten(2)
    assert torch.equal(ours, reordered)
    with pytest.raises(ValueError, match="square grid"):
        pixel_shuffle(torch.randn(1, 10, d), 2)


# ---------------------------------------------------------------- Qwen-VL resampler


@pytest.mark.parametrize("n", [16, 36, 64])
def test_qwen_resampler_output_shape_any_grid(n):
    resampler = QwenResampler(32, num_queries=16, num_heads=4, media_dim=24).eval()
    out = resampler(torch.randn(2, n, 24))
    assert out.shape == (2, 16, 32) and torch.isfinite(out).all()
    assert resampler(torch.randn(1, 12, 24), grid_hw=(3, 4)).shape == (1, 16, 32)


def test_qwen_resampler_positions_matter():
    resampler = QwenResampler(32, num_queries=16, num_heads=4).eval()
    x = torch.randn(1, 36, 32)
    perm = torch.randperm(36)
    out, out_perm = resampler(x), resampler(x[:, perm])
    assert not torch.allclose(out, out_perm, atol=1e-4)
    # Without the key position embedding, cross-attention is permutation invariant.
    q = resampler.ln_q(resampler.query) + resampler.pos_embed
    kv = resampler.ln_kv(x)
    no_pos = resampler.attn(q[None], kv)
    torch.testing.assert_close(no_pos, resampler.attn(q[None], kv[:, perm]), atol=1e-5, rtol=1e-5)


def test_qwen_resampler_interpolated_positions():
    resampler = QwenResampler(32, num_queries=16, num_heads=4)
    assert torch.equal(resampler.key_pos_embed(4, 4), resampler.pos_embed)
    assert resampler.key_pos_embed(6, 6).shape == (36, 32)
    assert resampler.key_pos_embed(3, 5).shape == (15, 32)
    with pytest.raises(ValueError, match="square"):
        resampler(torch.randn(1, 10, 32))


def test_sincos_2d_matches_mae_reference():
    np = pytest.importorskip("numpy")

    def ref_1d(dim, pos):  # MAE get_1d_sincos_pos_embed_from_grid
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        out = np.einsum("m,d->md", pos.reshape(-1), 1.0 / 10000**omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    def ref_2d(dim, size):  # MAE / Qwen-VL get_2d_sincos_pos_embed
        grid = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
        grid = np.stack(grid, axis=0)
        return np.concatenate([ref_1d(dim // 2, grid[0]), ref_1d(dim // 2, grid[1])], axis=1)

    expected = torch.from_numpy(ref_2d(32, 5)).float()
    torch.testing.assert_close(sincos_2d(32, 5, 5), expected)
