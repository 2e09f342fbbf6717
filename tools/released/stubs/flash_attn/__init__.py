"""``flash_attn_qkvpacked_func`` as plain softmax attention, so LEASE's FlashBlock runs on CPU in fp32.

Same contract as the flash-attn function the release calls: qkv (B, N, 3, H, Dh) -> (B, N, H, Dh).
"""

import torch


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, **_kwargs):
    q, k, v = qkv.unbind(dim=2)  # each (B, N, H, Dh)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, N, Dh)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    attn = (q @ k.transpose(-2, -1)) * scale  # (B, H, N, N)
    if causal:
        n = attn.shape[-1]
        keep = torch.ones(n, n, dtype=torch.bool, device=attn.device).tril()
        attn = attn.masked_fill(~keep, float("-inf"))
    attn = attn.softmax(dim=-1)
    if dropout_p > 0.0:
        attn = torch.nn.functional.dropout(attn, p=dropout_p)
    return (attn @ v).transpose(1, 2)  # (B, N, H, Dh)
