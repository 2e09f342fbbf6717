"""Echo sampling: a plausible but different token map drawn from the decoder's own predictions.

At every position the most likely code is removed and one of the next ``k`` codes is sampled in
proportion to ``softmax(logit / temperature)``, so the echo never repeats the argmax. Together with
the jittered window of :func:`unissl.methods.sorcen.masking.window_mask` it forms Sorcen's generated
positive view.
"""

from __future__ import annotations

import torch

from unissl.utils.noise import gumbel_noise


@torch.no_grad()
def echo_candidates(logits: torch.Tensor, k: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """The k codes an echo is drawn from: the top k+1 without the argmax.

    logits (..., K) -> (values, index), each (..., k); the echo takes index[..., j] with probability
    ``softmax(values / temperature)[..., j]``.
    """
    num_codes = logits.shape[-1]
    if not 1 <= k < num_codes:
        raise ValueError(f"echo top-k must be in [1, {num_codes - 1}] for {num_codes} codes, got {k}")
    values, index = logits.float().topk(k + 1, dim=-1)  # (..., k+1), sorted, index[..., 0] is the argmax
    return values[..., 1:], index[..., 1:]  # (..., k) candidates without the argmax


@torch.no_grad()
def sample_echo(logits: torch.Tensor, k: int = 15, temperature: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample ids from the top-(k+1) codes with the argmax excluded (:func:`echo_candidates`).

    logits (..., K) over the codes -> ids (...,) int64, never equal to ``logits.argmax(-1)`` (for
    logits without ties at the top).
    """
    values, index = echo_candidates(logits, k)  # (..., k)
    # Gumbel-max trick: argmax(v / T + g) with g ~ Gumbel(0, 1) samples from softmax(v / T).
    gumbel = gumbel_noise(values.shape, values.device, generator)
    choice = (values / temperature + gumbel).argmax(dim=-1, keepdim=True)  # (..., 1)
    return index.gather(-1, choice).squeeze(-1)
