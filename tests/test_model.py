"""The model: the baseline rebuilds the original exactly; every switchable part works."""
import pytest
import torch

from mainrun.config import make_config
from mainrun.model import GPT, title_mask
from mainrun.train import build_model
from mainrun.reference import RefGPT

V = 16_000


def test_baseline_parameter_count():
    model = build_model(make_config("full"), V)
    assert model.num_params() == 27_172_864


def test_baseline_architecture():
    m = build_model(make_config("full"), V)
    assert len(m.blocks) == 6 and m.pos_emb.shape == (1, 128, 512)
    assert m.head.weight is m.token_emb.weight                      # tied
    b = m.blocks[0]
    assert isinstance(b.ln1, torch.nn.LayerNorm) and isinstance(m.ln_f, torch.nn.LayerNorm)
    assert b.attn.qkv.weight.shape == (1536, 512) and b.attn.qkv.bias is not None
    assert b.attn.proj.weight.shape == (512, 512) and b.attn.n_head == 8
    assert b.mlp.fc.weight.shape == (2048, 512) and b.mlp.out.weight.shape == (512, 2048)
    assert isinstance(b.mlp.act, torch.nn.GELU) and b.mlp.drop.p == 0.1 and m.drop.p == 0.1
    assert m.head.bias is None


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_baseline_matches_original_weights_and_step1_loss(dropout):
    """Seed 1337, CPU fp32: same initial weights and the same step-1 training loss as the original."""
    cfg = make_config("full", dropout=dropout)
    x = torch.randint(0, V, (4, 128), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, V, (4, 128), generator=torch.Generator().manual_seed(1))
    ours = build_model(cfg, V)                     # seeds 1337 itself
    ours.train()
    _, loss_ours = ours(x, y)
    torch.manual_seed(1337)
    ref = RefGPT(V, p=dropout)
    ref.train()
    _, loss_ref = ref(x, y)
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    pairs = {"mlp.fc.": "mlp.0.", "mlp.out.": "mlp.2."}
    for k, v in ref_sd.items():
        if k.endswith("tril"):
            continue
        kk = k
        for a, b in pairs.items():
            kk = kk.replace(b, a)
        assert torch.equal(ours_sd[kk], v), k
    # the same dropout masks are drawn when the RNG is consumed in the same order
    assert loss_ours.item() == pytest.approx(loss_ref.item(), abs=1e-5)


VARIANTS = [dict(norm="rmsnorm"), dict(pos="rope"), dict(init="scaled_residual"), dict(init="kaiming"),
            dict(mlp="swiglu"), dict(tie_embeddings=False), dict(qk_norm=True), dict(attn_mask="title"),
            dict(norm="rmsnorm", pos="rope", mlp="swiglu", qk_norm=True, block_size=256)]


@pytest.mark.parametrize("over", VARIANTS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
def test_variants_forward_backward(over):
    cfg = make_config("smoke", **over)
    m = build_model(cfg, 512, eos_id=1)
    x = torch.randint(0, 512, (2, 128))
    logits, loss = m(x, x)
    assert logits.shape == (2, 128, 512) and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_variant_parts_are_what_they_say():
    m = build_model(make_config("smoke", norm="rmsnorm", pos="rope", tie_embeddings=False), 512)
    assert isinstance(m.ln_f, torch.nn.RMSNorm) and isinstance(m.blocks[0].ln1, torch.nn.RMSNorm)
    assert not hasattr(m, "pos_emb")                                   # RoPE removes learned positions
    assert m.head.weight is not m.token_emb.weight
    d = 64
    m = build_model(make_config("smoke", d_model=d, n_head=2, mlp="swiglu"), 512)
    assert m.blocks[0].mlp.out.weight.shape == (d, 192)                # 8d/3 rounded up to 64
    k = build_model(make_config("smoke", d_model=256, n_head=2, init="kaiming"), 512)
    std = k.blocks[0].attn.qkv.weight.std().item()
    assert std == pytest.approx((2 / 256) ** 0.5, rel=0.05)            # He: sqrt(2 / fan_in)


def test_title_mask_blocks_attention_across_titles():
    eos = 1
    a = torch.tensor([[5, 6, eos, 7, 8, 9, eos, 4]])
    mask = title_mask(a, eos)[0, 0]
    assert mask[4, 3] and mask[4, 4] and not mask[4, 2] and not mask[4, 5]   # causal, same title only
    assert mask[2, 0] and mask[2, 2]                                          # <eos> closes its own title
    cfg = make_config("smoke", attn_mask="title", dropout=0.0)
    m = build_model(cfg, 512, eos_id=eos).eval()
    x = torch.randint(3, 512, (1, 128))
    x[0, 40] = eos
    y = x.clone()
    y[0, :40] = torch.randint(3, 512, (40,))                    # change only the first title
    with torch.no_grad():
        la, lb = m(x)[0], m(y)[0]
    assert torch.allclose(la[0, 41:], lb[0, 41:], atol=1e-5)    # the second title does not see it
    assert not torch.allclose(la[0, :40], lb[0, :40])


def test_attn_dropout_separates_attention_from_residual_dropout():
    """attn_dropout=0 leaves the residual dropout on but makes attention deterministic in training (SDPA's
    fused path); -1 (the default) keeps the original's dropout on the attention probabilities and its hash."""
    from mainrun.config import run_hash
    from mainrun.train import build_model
    cfg = make_config("smoke", dropout=0.5)
    assert "attn_dropout" not in cfg.hash_fields()
    off = make_config("smoke", dropout=0.5, attn_dropout=0.0)
    assert run_hash(off, "fp") != run_hash(cfg, "fp")
    for c, same in ((off, True), (cfg, False)):
        attn = build_model(c, 512).blocks[0].attn.train()
        x = torch.randn(2, 16, c.d_model)
        attn.resid_drop.p = 0.0            # the residual dropout stays on in training; look at attention alone
        torch.manual_seed(0)
        a = attn(x)
        torch.manual_seed(1)
        b = attn(x)
        assert torch.equal(a, b) is same
    with pytest.raises(Exception, match="attn_dropout"):
        make_config("smoke", attn_dropout=1.5)
