"""Tests for Q-Former, visual expert, early fusion, TokenFusion, GeminiFusion and losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlkit.fusion.early_fusion import EarlyFusionTransformer
from vlkit.fusion.gemini_fusion import GeminiFusion
from vlkit.fusion.qformer import (
    QFormer,
    itc_attention_mask,
    itg_attention_mask,
    itm_attention_mask,
    qformer_attention_mask,
)
from vlkit.fusion.token_fusion import TokenFusion, score_sparsity_loss
from vlkit.fusion.visual_expert import VisualExpertLayer
from vlkit.losses.contrastive import clip_loss
from vlkit.losses.matching import (
    build_itm_batch,
    itg_loss,
    itm_loss,
    qformer_itc_loss,
    query_text_similarity,
    sample_hard_negatives,
)
from vlkit.losses.multimodal import comm_loss, info_nce, multimodal_infonce

ATOL = 1e-5

# ----------------------------------------------------------------------------- Q-Former


def _qformer(**kw) -> QFormer:
    torch.manual_seed(0)
    cfg = dict(
        encoder_dim=12,
        dim=16,
        num_queries=4,
        num_layers=4,
        num_heads=2,
        vocab_size=50,
        max_text_len=16,
    )
    cfg.update(kw)
    return QFormer(**cfg).eval()


def test_mask_builders():
    q, t = 2, 3
    itc, itm, itg = itc_attention_mask(q, t), itm_attention_mask(q, t), itg_attention_mask(q, t)
    assert itm.all()
    assert itc[:q, :q].all() and itc[q:, q:].all()
    assert not itc[:q, q:].any() and not itc[q:, :q].any()
    assert itg[:, :q].all() and not itg[:q, q:].any()
    assert torch.equal(itg[q:, q:], torch.ones(t, t, dtype=torch.bool).tril())
    with pytest.raises(ValueError):
        qformer_attention_mask("bad", q, t)


def test_qformer_structure_and_shapes():
    m = _qformer()
    assert [layer.has_cross_attention for layer in m.layers] == [True, False, True, False]
    img = torch.randn(2, 7, 12)
    ids = torch.randint(0, 50, (2, 5))
    qo, to = m(img, ids, mode="itm")
    assert qo.shape == (2, 4, 16) and to.shape == (2, 5, 16)
    qo2, to2 = m(img)
    assert qo2.shape == (2, 4, 16) and to2 is None
    # separate FFN weights for query and text positions
    layer = m.layers[0]
    assert layer.ffn_query.fc1.weight.data_ptr() != layer.ffn_text.fc1.weight.data_ptr()


def test_qformer_itc_mask_isolates_queries_and_text():
    m = _qformer()
    img = torch.randn(2, 7, 12)
    ids = torch.randint(0, 50, (2, 5))
    ids2 = ids.clone()
    ids2[:, 2] = (ids2[:, 2] + 1) % 50
    q1, t1 = m(img, ids, mode="itc")
    q2, _ = m(img, ids2, mode="itc")
    torch.testing.assert_close(q1, q2, atol=ATOL, rtol=0)  # text never reaches queries
    q_only, _ = m(img)
    torch.testing.assert_close(q1, q_only, atol=ATOL, rtol=0)
    _, t3 = m(torch.randn(2, 7, 12), ids, mode="itc")
    torch.testing.assert_close(t1, t3, atol=ATOL, rtol=0)  # image never reaches text


def test_qformer_itm_mask_is_bidirectional():
    m = _qformer()
    img = torch.randn(2, 7, 12)
    ids = torch.randint(0, 50, (2, 5))
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % 50
    q1, t1 = m(img, ids, mode="itm")
    q2, t2 = m(img, ids2, mode="itm")
    assert not torch.allclose(q1, q2, atol=1e-4)  # queries see the text
    assert not torch.allclose(t1[:, 0], t2[:, 0], atol=1e-4)  # earlier text sees later text
    _, t3 = m(torch.randn(2, 7, 12), ids, mode="itm")
    assert not torch.allclose(t1, t3, atol=1e-4)  # text sees image through queries


def test_qformer_itg_mask_is_multimodal_causal():
    m = _qformer()
    img = torch.randn(2, 7, 12)
    ids = torch.randint(0, 50, (2, 6))
    k = 3
    ids2 = ids.clone()
    ids2[:, k] = (ids2[:, k] + 1) % 50
    q1, t1 = m(img, ids, mode="itg")
    q2, t2 = m(img, ids2, mode="itg")
    torch.testing.assert_close(q1, q2, atol=ATOL, rtol=0)
    torch.testing.assert_close(t1[:, :k], t2[:, :k], atol=ATOL, rtol=0)
    assert not torch.allclose(t1[:, k:], t2[:, k:], atol=1e-4)
    _, t3 = m(torch.randn(2, 7, 12), ids, mode="itg")
    assert not torch.allclose(t1[:, 0], t3[:, 0], atol=1e-4)  # text sees all queries


def test_qformer_padding_mask_hides_padded_text():
    m = _qformer()
    img = torch.randn(1, 7, 12)
    ids = torch.randint(0, 50, (1, 5))
    pad = torch.tensor([[True, True, True, False, False]])
    ids2 = ids.clone()
    ids2[:, 3:] = (ids2[:, 3:] + 7) % 50
    q1, t1 = m(img, ids, text_padding_mask=pad, mode="itm")
    q2, t2 = m(img, ids2, text_padding_mask=pad, mode="itm")
    torch.testing.assert_close(q1, q2, atol=ATOL, rtol=0)
    torch.testing.assert_close(t1[:, :3], t2[:, :3], atol=ATOL, rtol=0)


def test_qformer_itg_gradients_flow_to_queries():
    m = _qformer().train()
    img = torch.randn(2, 7, 12)
    ids = torch.randint(0, 50, (2, 6))
    _, t = m(img, ids, mode="itg")
    logits = t @ m.word_embed.weight.t()
    itg_loss(logits, ids).backward()
    assert m.query_tokens.grad is not None and m.query_tokens.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- stage-1 losses


def test_itc_max_over_queries_matches_hand_formula():
    torch.manual_seed(0)
    b, q, d = 3, 4, 5
    z = F.normalize(torch.randn(b, q, d), dim=-1)
    t = F.normalize(torch.randn(b, d), dim=-1)
    scale = 10.0
    sim = torch.empty(b, b)
    for i in range(b):
        for j in range(b):
            sim[i, j] = max(float(z[i, k] @ t[j]) for k in range(q))
    torch.testing.assert_close(query_text_similarity(z, t), sim)
    lse_rows = torch.logsumexp(scale * sim, dim=1)
    lse_cols = torch.logsumexp(scale * sim, dim=0)
    diag = scale * sim.diag()
    expected = ((lse_rows - diag).mean() + (lse_cols - diag).mean()) / 2
    loss, s = qformer_itc_loss(z, t, scale)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(s, sim)


def test_hard_negatives_never_positive_and_follow_similarity():
    g = torch.Generator().manual_seed(0)
    b = 4
    for _ in range(200):
        sim = torch.randn(b, b) * 5
        nt, ni = sample_hard_negatives(sim, generator=g)
        assert (nt != torch.arange(b)).all() and (ni != torch.arange(b)).all()
    # with a very peaked similarity the hardest off-diagonal negative is chosen
    sim = torch.zeros(b, b)
    sim[0, 2] = sim[1, 3] = sim[2, 0] = sim[3, 1] = 1.0
    nt, ni = sample_hard_negatives(sim, logit_scale=100.0, generator=g)
    assert nt.tolist() == [2, 3, 0, 1] and ni.tolist() == [2, 3, 0, 1]
    with pytest.raises(ValueError):
        sample_hard_negatives(torch.zeros(1, 1))


def test_itm_batch_layout():
    g = torch.Generator().manual_seed(1)
    b = 5
    sim = torch.randn(b, b)
    img_idx, txt_idx, labels = build_itm_batch(sim, generator=g)
    assert img_idx.shape == txt_idx.shape == labels.shape == (3 * b,)
    ar = torch.arange(b)
    assert torch.equal(labels, torch.tensor([1] * b + [0] * (2 * b)))
    assert torch.equal(img_idx[:b], ar) and torch.equal(txt_idx[:b], ar)
    assert torch.equal(txt_idx[b : 2 * b], ar) and (img_idx[b : 2 * b] != ar).all()
    assert torch.equal(img_idx[2 * b :], ar) and (txt_idx[2 * b :] != ar).all()
    # negatives are real mismatches: no pair among the last 2B is (i, i)
    assert (img_idx[b:] != txt_idx[b:]).all()
    logits = torch.randn(3 * b, 4, 2)
    torch.testing.assert_close(itm_loss(logits, labels), F.cross_entropy(logits.mean(1), labels))


def test_itg_loss_is_shifted_lm_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    ids = torch.randint(0, 7, (2, 4))
    pad = torch.tensor([[True] * 4, [True, True, True, False]])
    terms = []
    for bi in range(2):
        for t in range(3):
            if pad[bi, t + 1]:
                terms.append(F.cross_entropy(logits[bi, t][None], ids[bi, t + 1][None]))
    torch.testing.assert_close(itg_loss(logits, ids, pad), torch.stack(terms).mean())


# ----------------------------------------------------------------------------- visual expert


def test_visual_expert_with_copied_weights_equals_plain_layer():
    torch.manual_seed(0)
    layer = VisualExpertLayer(16, 2)
    x = torch.randn(2, 6, 16)
    image_mask = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 1, 1, 0, 1, 0]], dtype=torch.bool)
    plain = layer(x, torch.zeros_like(image_mask))
    torch.testing.assert_close(layer(x, image_mask), plain, atol=ATOL, rtol=0)
    with torch.no_grad():
        layer.qkv_image.weight.add_(torch.randn_like(layer.qkv_image.weight))
    assert not torch.allclose(layer(x, image_mask), plain, atol=1e-4)


def test_visual_expert_weights_route_by_modality():
    torch.manual_seed(0)
    layer = VisualExpertLayer(16, 2, causal=True)
    x = torch.randn(2, 7, 16)
    # causal: text first, image tokens after -> text outputs never touch expert weights
    image_mask = torch.zeros(2, 7, dtype=torch.bool)
    image_mask[:, 4:] = True
    base = layer(x, image_mask)
    with torch.no_grad():
        for p in [
            *layer.qkv_image.parameters(),
            *layer.out_image.parameters(),
            *layer.mlp_image.parameters(),
        ]:
            p.add_(torch.randn_like(p))
    edited = layer(x, image_mask)
    torch.testing.assert_close(edited[:, :4], base[:, :4], atol=ATOL, rtol=0)
    assert not torch.allclose(edited[:, 4:], base[:, 4:], atol=1e-4)
    # an image token placed *before* text does affect later text through its K/V
    image_mask2 = torch.zeros(2, 7, dtype=torch.bool)
    image_mask2[:, 0] = True
    layer.copy_text_to_expert()
    base2 = layer(x, image_mask2)
    with torch.no_grad():
        layer.qkv_image.weight.add_(torch.randn_like(layer.qkv_image.weight))
    assert not torch.allclose(layer(x, image_mask2)[:, 1:], base2[:, 1:], atol=1e-4)


def test_visual_expert_editing_text_weights_keeps_image_ffn_route():
    torch.manual_seed(0)
    layer = VisualExpertLayer(8, 2, causal=False)
    x = torch.randn(1, 5, 8)
    all_image = torch.ones(1, 5, dtype=torch.bool)
    base = layer(x, all_image)
    with torch.no_grad():
        for p in layer.mlp_text.parameters():
            p.add_(1.0)
        layer.qkv_text.weight.add_(1.0)
    torch.testing.assert_close(layer(x, all_image), base, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- early fusion


def _early(causal: bool) -> EarlyFusionTransformer:
    torch.manual_seed(0)
    return EarlyFusionTransformer(
        vocab_size=30,
        image_size=8,
        patch_size=4,
        dim=16,
        depth=2,
        num_heads=2,
        max_text_len=8,
        causal=causal,
    ).eval()


def test_early_fusion_shapes_and_image_influences_text():
    m = _early(causal=True)
    img = torch.randn(2, 3, 8, 8)
    ids = torch.randint(0, 30, (2, 5))
    h, logits = m(img, ids)
    assert h.shape == (2, 4 + 5, 16) and logits.shape == (2, 5, 30)
    h2, _ = m(torch.randn(2, 3, 8, 8), ids)
    assert not torch.allclose(h[:, 4:], h2[:, 4:], atol=1e-4)
    # causal, image first: text does not change image outputs
    ids2 = ids.clone()
    ids2[:, 0] = (ids2[:, 0] + 1) % 30
    h3, _ = m(img, ids2)
    torch.testing.assert_close(h[:, :4], h3[:, :4], atol=ATOL, rtol=0)


def test_early_fusion_bidirectional_text_influences_image():
    m = _early(causal=False)
    img = torch.randn(1, 3, 8, 8)
    ids = torch.randint(0, 30, (1, 5))
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % 30
    h, _ = m(img, ids)
    h2, _ = m(img, ids2)
    assert not torch.allclose(h[:, :4], h2[:, :4], atol=1e-4)
    pad = torch.tensor([[True, True, True, True, False]])
    hp, _ = m(img, ids, pad)
    hp2, _ = m(img, ids2, pad)
    torch.testing.assert_close(hp[:, :-1], hp2[:, :-1], atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- TokenFusion


def test_token_fusion_replaces_exactly_low_score_tokens():
    torch.manual_seed(0)
    tf = TokenFusion(8, threshold=0.5)
    x_a, x_b = torch.randn(2, 10, 8), torch.randn(2, 10, 8)
    out_a, out_b, s_a, s_b = tf(x_a, x_b)
    low_a, low_b = s_a < 0.5, s_b < 0.5
    assert low_a.any() and (~low_a).any()  # a non-trivial split with this seed
    torch.testing.assert_close(out_a[low_a], tf.proj_b_to_a(x_b)[low_a])
    torch.testing.assert_close(out_a[~low_a], x_a[~low_a])
    torch.testing.assert_close(out_b[low_b], tf.proj_a_to_b(x_a)[low_b])
    torch.testing.assert_close(out_b[~low_b], x_b[~low_b])
    # forcing the score head: all-high keeps everything, all-low replaces everything
    with torch.no_grad():
        tf.score_a[-1].bias.fill_(100.0)
        tf.score_b[-1].bias.fill_(-100.0)
    out_a, out_b, _, _ = tf(x_a, x_b)
    torch.testing.assert_close(out_a, x_a)
    torch.testing.assert_close(out_b, tf.proj_a_to_b(x_a))
    assert score_sparsity_loss(s_a, s_b).ndim == 0
    with pytest.raises(ValueError):
        tf(x_a, x_b[:, :5])


def test_token_fusion_scale_by_score_gives_predictor_gradient():
    torch.manual_seed(0)
    tf = TokenFusion(8, threshold=0.0, scale_by_score=True)
    out_a, _, _, _ = tf(torch.randn(1, 4, 8), torch.randn(1, 4, 8))
    out_a.sum().backward()
    assert tf.score_a[0].weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- GeminiFusion


def test_gemini_fusion_is_pixelwise():
    torch.manual_seed(0)
    gf = GeminiFusion(16, num_heads=2)
    x_a, x_b = torch.randn(2, 9, 16), torch.randn(2, 9, 16)
    y_a, y_b = gf(x_a, x_b)
    assert y_a.shape == y_b.shape == (2, 9, 16)
    j = 4
    x_a2, x_b2 = x_a.clone(), x_b.clone()
    x_a2[:, j] += 1.0
    x_b2[:, j] -= 1.0
    z_a, z_b = gf(x_a2, x_b2)
    others = [i for i in range(9) if i != j]
    torch.testing.assert_close(z_a[:, others], y_a[:, others], atol=ATOL, rtol=0)
    torch.testing.assert_close(z_b[:, others], y_b[:, others], atol=ATOL, rtol=0)
    assert not torch.allclose(z_a[:, j], y_a[:, j], atol=1e-4)
    # each position computed alone equals the full output at that position (linear cost)
    s_a, s_b = gf(x_a[:, j : j + 1], x_b[:, j : j + 1])
    torch.testing.assert_close(s_a, y_a[:, j : j + 1], atol=ATOL, rtol=0)
    torch.testing.assert_close(s_b, y_b[:, j : j + 1], atol=ATOL, rtol=0)


def test_gemini_fusion_uses_other_modality():
    torch.manual_seed(0)
    gf = GeminiFusion(16, num_heads=2)
    x_a, x_b = torch.randn(1, 3, 16), torch.randn(1, 3, 16)
    y_a, _ = gf(x_a, x_b)
    y_a2, _ = gf(x_a, torch.randn(1, 3, 16))
    assert not torch.allclose(y_a, y_a2, atol=1e-4)
    y_a.sum().backward()
    assert gf.fuse_a.noise.grad is not None and gf.fuse_a.relation.weight.grad is not None


# ----------------------------------------------------------------------------- multimodal losses


def _nce_hand(a, b, tau):
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    s = a @ b.t() / tau
    n = a.shape[0]
    row = sum(-s[i, i] + torch.logsumexp(s[i], 0) for i in range(n)) / n
    col = sum(-s[i, i] + torch.logsumexp(s[:, i], 0) for i in range(n)) / n
    return (row + col) / 2


def test_info_nce_and_k2_reduces_to_clip():
    torch.manual_seed(0)
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    tau = 0.07
    torch.testing.assert_close(info_nce(a, b, tau), _nce_hand(a, b, tau))
    na, nb = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    torch.testing.assert_close(multimodal_infonce([a, b], tau), clip_loss(na, nb, 1 / tau))


def test_multimodal_infonce_sums_all_pairs():
    torch.manual_seed(0)
    e = [torch.randn(5, 3) for _ in range(4)]
    tau = 0.2
    expected = sum(_nce_hand(e[i], e[j], tau) for i in range(4) for j in range(i + 1, 4))
    torch.testing.assert_close(multimodal_infonce(e, tau), expected)
    with pytest.raises(ValueError):
        multimodal_infonce(e[:1])


def test_comm_loss_matches_hand_formula():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 3), torch.randn(5, 3)
    uni = [torch.randn(5, 3) for _ in range(3)]
    tau = 0.1
    expected = _nce_hand(z1, z2, tau) + sum(
        (_nce_hand(z, z1, tau) + _nce_hand(z, z2, tau)) / 2 for z in uni
    )
    torch.testing.assert_close(comm_loss(z1, z2, uni, tau), expected)
    torch.testing.assert_close(comm_loss(z1, z2, [], tau), _nce_hand(z1, z2, tau))


def test_qformer_pretrainer_stage1_losses_backward():
    from vlkit.fusion.qformer_pretraining import QFormerPretrainer

    m = QFormerPretrainer(_qformer().train(), embed_dim=8)
    img = torch.randn(3, 7, 12)
    ids = torch.randint(0, 50, (3, 5))
    pad = torch.tensor([[True] * 5, [True] * 4 + [False], [True] * 3 + [False] * 2])
    out = m(img, ids, pad, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"itc", "itm", "itg", "loss"}
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    for p in (m.qformer.query_tokens, m.itm_head.weight, m.lm_head.weight, m.temp):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_visual_expert_backward_reaches_both_weight_sets():
    torch.manual_seed(0)
    layer = VisualExpertLayer(8, 2)
    x = torch.randn(2, 5, 8, requires_grad=True)
    image_mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    layer(x, image_mask, padding_mask=torch.ones(2, 5, dtype=torch.bool)).sum().backward()
    assert x.grad.abs().sum() > 0
    assert layer.qkv_image.weight.grad.abs().sum() > 0
    assert layer.mlp_text.fc1.weight.grad.abs().sum() > 0
