"""nn.MultiheadAttention under the probe: the probed module's output is the unprobed one's and the
norms are each example's own, for every option (attn_mask with key_padding_mask, bool and float,
self- and cross-attention, batch_first, kdim/vdim, add_bias_kv, add_zero_attn, need_weights)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attent.probe import GradNormProbe


class Attend(nn.Module):
    """(B,) losses: a fixed random readout of the attention output (and of its weights)."""

    def __init__(self, mha: nn.MultiheadAttention, self_attention: bool, need_weights: bool):
        super().__init__()
        self.mha, self.self_attention, self.need_weights = mha, self_attention, need_weights

    def forward(self, q, kv, key_padding_mask, attn_mask):
        k = q if self.self_attention else kv[..., :self.mha.kdim]
        v = q if self.self_attention else kv[..., :self.mha.vdim]
        out, weights = self.mha(q, k, v, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                                need_weights=self.need_weights)
        out = out if self.mha.batch_first else out.transpose(0, 1)
        loss = torch.tanh(out).mul(torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).flatten(1).sum(1)
        return loss if weights is None else loss + weights.square().flatten(1).sum(1)


def masks(B: int, H: int, T: int, S: int, attn: str | None, padding: str | None, seed: int):
    """attn_mask ((T, S) or (B*H, T, S)) and key_padding_mask (B, S), bool or float; key 0 always visible."""
    g = torch.Generator().manual_seed(seed)
    attn_mask = padding_mask = None
    if attn is not None:
        shape = (T, S) if attn.endswith("2d") else (B * H, T, S)
        hidden = torch.rand(shape, generator=g) > 0.6
        hidden[..., 0] = False
        attn_mask = hidden if attn.startswith("bool") else torch.randn(shape, generator=g, dtype=torch.float64).masked_fill(hidden, float("-inf"))
    if padding is not None:
        hidden = torch.arange(S)[None, :] >= torch.randint(1, S + 1, (B,), generator=g)[:, None]
        padding_mask = hidden if padding == "bool" else torch.zeros(B, S, dtype=torch.float64).masked_fill(hidden, float("-inf"))
    return attn_mask, padding_mask


def check_attention(exact, mha, self_attention, need_weights, B, T, S, attn, padding, mode="score", seed=0):
    torch.manual_seed(seed)
    mha = mha.double()
    H = mha.num_heads
    model = Attend(mha, self_attention, need_weights)
    batch_dim = 0 if mha.batch_first else 1
    shape = lambda n, d: (B, n, d) if mha.batch_first else (n, B, d)  # noqa: E731
    q = torch.randn(shape(T, mha.embed_dim), dtype=torch.float64)
    kv = torch.randn(shape(S, max(mha.kdim, mha.vdim)), dtype=torch.float64)
    attn_mask, padding_mask = masks(B, H, T, T if self_attention else S, attn, padding, seed)

    def forward_one(m, i):
        one = lambda t: t.narrow(batch_dim, i, 1)  # noqa: E731
        one_mask = None if attn_mask is None or attn_mask.dim() == 2 else attn_mask[i * H:(i + 1) * H]
        return m(one(q), one(kv), None if padding_mask is None else padding_mask[i:i + 1],
                 attn_mask if one_mask is None else one_mask)

    return exact(model, lambda m: m(q, kv, padding_mask, attn_mask), forward_one, B, mode=mode)


@pytest.mark.parametrize("self_attention", [True, False])
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_attn_mask_with_key_padding_mask(exact, self_attention, kind, batch_first):
    """Both masks at once: the probed output equals the module's, the norms the oracle's."""
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first)
    for need_weights in (True, False):
        check_attention(exact, mha, self_attention, need_weights, B=3, T=4, S=5, attn=f"{kind}-2d", padding=kind)
    check_attention(exact, mha, self_attention, False, B=3, T=4, S=5, attn=f"{kind}-3d", padding=kind, mode="backward")


def test_probed_output_is_the_modules_output_with_both_masks():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    q, kv = torch.randn(3, 4, 8), torch.randn(3, 6, 8)
    for keys in (q, kv):
        attn_mask, padding_mask = masks(3, 2, 4, keys.shape[1], "bool-2d", "bool", seed=2)
        for need_weights in (True, False):
            with torch.no_grad():
                want = mha(q, keys, keys, key_padding_mask=padding_mask, attn_mask=attn_mask, need_weights=need_weights)
            with GradNormProbe(mha):
                got = mha(q, keys, keys, key_padding_mask=padding_mask, attn_mask=attn_mask, need_weights=need_weights)
            torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
            if need_weights:
                torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_every_option(exact, data):
    B = data.draw(st.integers(1, 3))
    T = data.draw(st.sampled_from([B, 1, 3]))
    S = data.draw(st.sampled_from([B, 1, 4]))
    H = data.draw(st.sampled_from([1, 2]))
    self_attention = data.draw(st.booleans())
    separate = not self_attention and data.draw(st.booleans())
    mha = nn.MultiheadAttention(2 * H, H, bias=data.draw(st.booleans()), add_bias_kv=data.draw(st.booleans()),
                                add_zero_attn=data.draw(st.booleans()), kdim=3 if separate else None,
                                vdim=data.draw(st.sampled_from([3, 5])) if separate else None,
                                batch_first=data.draw(st.booleans()))
    if mha.bias_k is not None:
        nn.init.normal_(mha.bias_k)
        nn.init.normal_(mha.bias_v)
    attn = data.draw(st.sampled_from([None, "bool-2d", "float-2d", "bool-3d", "float-3d"]))
    padding = data.draw(st.sampled_from([None, "bool", "float"] if attn is None else [None, attn.split("-")[0]]))
    probe = check_attention(exact, mha, self_attention, data.draw(st.booleans()), B, T, S, attn, padding,
                            mode=data.draw(st.sampled_from(["score", "backward"])), seed=data.draw(st.integers(0, 9)))
    assert set(probe.coverage.values()) == {"multihead-attention"}


def test_out_proj_alone_is_probed():
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(4, 2, batch_first=True)
    x = torch.randn(2, 3, 4)
    with GradNormProbe(mha, params=["out_proj.weight"]) as probe:
        sq = probe.score(mha(x, x, x)[0].square().sum(dim=(1, 2)))
    grads = [torch.autograd.grad(mha(x[i:i + 1], x[i:i + 1], x[i:i + 1])[0].square().sum(), mha.out_proj.weight)[0]
             for i in range(2)]
    torch.testing.assert_close(sq, torch.stack([g.square().sum() for g in grads]), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("batch_first", [True, False])
def test_bias_kv_zero_attn_kdim_vdim_with_both_masks(exact, batch_first):
    mha = nn.MultiheadAttention(4, 2, add_bias_kv=True, add_zero_attn=True, kdim=3, vdim=5, batch_first=batch_first)
    nn.init.normal_(mha.bias_k)
    nn.init.normal_(mha.bias_v)
    for kind in ("bool", "float"):
        check_attention(exact, mha, False, True, B=3, T=3, S=4, attn=f"{kind}-3d", padding=kind, seed=4)
