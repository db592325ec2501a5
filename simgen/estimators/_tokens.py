r"""The token transformer behind ``"joint_transformer"``: one token per variable of (θ, x).

The joint vector :math:`z = (\tilde\theta, \tilde x)` (both z-scored, x flattened) of
:math:`n = D + D_x` entries is cut into :math:`T = D + D_x/g` tokens: one per θ entry and
one per group of :math:`g` consecutive x entries (``x_token_size``). Each token has a state
:math:`s \in \{0, 1, 2\}`: *absent* (marginalised out), *free* (moved by the flow) or
*observed* (conditioned on, kept at its value). Token :math:`k` enters as

.. math::
    h_k^{(0)} = E_{\text{value}}(z_k) + e_k^{\text{id}} + e_{s_k}^{\text{flag}} + E_t(t),

a value embedding (one linear map for θ tokens, one for x groups), a learned identity, an
embedding of the state and a Fourier time embedding. ``layers`` pre-norm blocks

.. math::
    h \leftarrow h + \mathrm{MHA}(\mathrm{LN}(h)), \qquad
    h \leftarrow h + W_2\,\phi(W_1\,\mathrm{LN}(h))

follow (``heads`` heads, an MLP of twice the ``width``, :math:`\phi` = SiLU), in which no
token attends to an absent one, and a zero-initialised linear head reads a velocity off each
token. An absent token is therefore invisible to every other token: whatever its value, the
outputs of the present tokens do not change, which is what makes marginals exact.

**Dependency mask** (``x_blocks`` :math:`B`). When x is :math:`B` blocks that are
conditionally independent given θ (slcp's four i.i.d. points, B = 4), the x tokens are cut
into :math:`B` consecutive equal blocks and an x token attends only to the θ tokens and to
the tokens of its own block, while θ tokens attend to every token: query :math:`i` may read
key :math:`j` iff :math:`i \in \theta` or :math:`j \in \theta` or
:math:`\mathrm{block}(i) = \mathrm{block}(j)`, or :math:`i = j` (a token always reads
itself, so an absent token's own row is never empty). Information between blocks then only
passes through θ, as in the likelihood :math:`\prod_b p(x_b\mid\theta)`. :math:`B = 1` is
full attention.

**Cost.** One call costs :math:`O(L\,(T^2 W + T W^2))` per row (attention quadratic in the
token count :math:`T`, the per-token MLP linear in it), against :math:`O(L W^2)` for the
flow-matching MLP; grouping x entries (``x_token_size`` :math:`g`) divides the x share of
:math:`T` by :math:`g`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._nets import TimeEmbedding

__all__ = ["TokenTransformer", "ABSENT", "FREE", "OBSERVED"]

ABSENT, FREE, OBSERVED = 0, 1, 2


class _Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width)
        )

    def forward(self, h: Tensor, keys: Tensor) -> Tensor:
        m, t, w = h.shape
        q, k, v = self.qkv(self.norm1(h)).reshape(m, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keys)
        h = h + self.proj(a.transpose(1, 2).reshape(m, t, w))
        return h + self.mlp(self.norm2(h))


class TokenTransformer(nn.Module):
    """Velocity network over the tokens of a joint vector; see the module docstring.

    Args:
        theta_dim: ``D`` (one token each).
        x_dim: ``D_x``, the flattened x's entries.
        x_token_size: ``g``, x entries per token (divides ``D_x``).
        width, layers, heads: Token width, number of blocks, attention heads.
        time_features: Size of the Fourier time embedding.
        x_blocks: ``B``, conditionally independent blocks of x tokens (divides their
            number); 1 is full attention.
    """

    def __init__(
        self,
        theta_dim: int,
        x_dim: int,
        x_token_size: int,
        width: int,
        layers: int,
        heads: int,
        time_features: int = 32,
        x_blocks: int = 1,
    ):
        super().__init__()
        self.theta_dim, self.x_dim, self.g = theta_dim, x_dim, x_token_size
        self.tokens = theta_dim + x_dim // x_token_size
        self.x_blocks = x_blocks
        self.theta_in = nn.Linear(1, width)
        self.x_in = nn.Linear(x_token_size, width)
        self.identity = nn.Parameter(torch.randn(self.tokens, width) * 0.02)
        self.flag = nn.Embedding(3, width)
        self.time = TimeEmbedding(time_features, "fourier")
        self.time_in = nn.Linear(self.time.features, width)
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.theta_out = nn.Linear(width, 1)
        self.x_out = nn.Linear(width, x_token_size)
        for head in (self.theta_out, self.x_out):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        index = torch.cat(
            [torch.arange(theta_dim), theta_dim + torch.arange(x_dim) // x_token_size]
        )
        #: The token of each entry of the joint vector, ``(n,)``.
        self.register_buffer("entry_token", index, persistent=False)
        #: Which key each query may read, ``(T, T)`` (the dependency mask), or None.
        self.allowed: Tensor | None
        self.register_buffer("allowed", self.block_mask(), persistent=False)

    def block_mask(self) -> Tensor | None:
        """The dependency mask of the module docstring, ``(T, T)``; None when ``B = 1``."""
        if self.x_blocks == 1:
            return None
        d, x_tokens = self.theta_dim, self.tokens - self.theta_dim
        block = torch.cat(
            [torch.full((d,), -1), torch.arange(x_tokens) // (x_tokens // self.x_blocks)]
        )
        theta = block < 0
        same = block[:, None] == block[None, :]
        return theta[:, None] | theta[None, :] | same

    def entry_states(self, states: Tensor) -> Tensor:
        """Token states ``(..., T)`` spread to the entries ``(..., n)``."""
        return states[..., self.entry_token]

    def forward(self, z: Tensor, t: Tensor, states: Tensor) -> Tensor:
        """Velocity ``(M, n)`` at joint rows ``z`` ``(M, n)``, times ``t`` (scalar or
        ``(M,)``) and token states ``(M, T)`` or ``(T,)``."""
        m, d = z.shape[0], self.theta_dim
        states = states.expand(m, self.tokens)
        h = torch.cat(
            [self.theta_in(z[:, :d, None]), self.x_in(z[:, d:].reshape(m, -1, self.g))], dim=1
        )
        t = t.expand(m) if t.ndim == 0 else t
        h = h + self.identity + self.flag(states) + self.time_in(self.time(t))[:, None]
        keys = (states != ABSENT)[:, None, None, :]
        if self.allowed is not None:
            eye = torch.eye(self.tokens, dtype=torch.bool, device=keys.device)
            keys = (keys & self.allowed) | eye
        for block in self.blocks:
            h = block(h, keys)
        h = self.norm(h)
        return torch.cat(
            [self.theta_out(h[:, :d]).squeeze(-1), self.x_out(h[:, d:]).reshape(m, -1)], dim=1
        )
