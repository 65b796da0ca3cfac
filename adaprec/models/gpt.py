"""A small decoder-only transformer (GPT-2 shape: pre-LayerNorm, learned positions, GELU MLP).

Attention is written out with ``torch.matmul`` and a masked ``softmax`` inside
:class:`CausalAttentionCore`, a parameterless module marked ``adaprec_layer = True``: those
functional ops then form their own precision region instead of hiding inside a fused kernel.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GPT", "Block", "CausalSelfAttention", "CausalAttentionCore"]


class CausalAttentionCore(nn.Module):
    """``softmax(mask(q @ k^T / sqrt(d))) @ v`` for ``q, k, v`` of shape ``[B, H, T, d]``."""

    adaprec_layer = True  # owns no parameters but does matmuls: adaprec gives it a format

    def __init__(self, block_size: int, dropout: float = 0.0):
        super().__init__()
        mask = torch.tril(torch.ones(block_size, block_size, dtype=torch.bool))
        # not persistent: derived from block_size, so checkpoints need not carry it
        self.register_buffer("mask", mask.view(1, 1, block_size, block_size), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        T = q.size(-2)
        att = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
        # -inf, not the dtype's min: softmax maps it to exactly 0 in every format
        att = att.masked_fill(~self.mask[:, :, :T, :T], float("-inf"))
        att = self.dropout(torch.softmax(att, dim=-1))
        return torch.matmul(att, v)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention: qkv projection -> :class:`CausalAttentionCore` -> projection."""

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float = 0.0):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.core = CausalAttentionCore(block_size, dropout)
        self.proj = nn.Linear(n_embd, n_embd)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = self.core(q, k, v).transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float = 0.0):
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size, dropout)
        self.ln2 = nn.LayerNorm(n_embd)
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU()
        self.fc_proj = nn.Linear(4 * n_embd, n_embd)
        self.mlp_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp_dropout(self.fc_proj(self.gelu(self.fc(self.ln2(x)))))


class GPT(nn.Module):
    """Token + position embeddings -> ``n_layer`` blocks -> LayerNorm -> lm head.

    ``forward(idx)`` maps a ``LongTensor[B, T]`` (``T <= block_size``) to logits
    ``[B, T, vocab_size]``. ``tie_weights`` shares the embedding and head matrix (off by default so
    every layer is a distinct precision region).
    """

    def __init__(self, vocab_size: int = 256, block_size: int = 64, n_layer: int = 2,
                 n_head: int = 4, n_embd: int = 128, dropout: float = 0.0,
                 tie_weights: bool = False):
        super().__init__()
        if min(vocab_size, block_size, n_layer, n_head, n_embd) <= 0:
            raise ValueError("GPT needs positive vocab_size, block_size, n_layer, n_head, n_embd")
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, block_size, dropout)
                                    for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.apply(_init_weights)
        if tie_weights:
            self.head.weight = self.tok_emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.block_size}; "
                             f"raise the model's block_size or feed shorter windows")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _init_weights(module: nn.Module) -> None:
    # GPT-2's N(0, 0.02): torch's default fan-in init gives the embeddings std 1, which makes the
    # initial logits large and the first loss far above ln(vocab_size)
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
