"""Masks the attention backends take beside causal: documents and block-sparse layouts.

- Documents (packed sequences, key padding): `document_bounds(doc_ids)` gives each position's
  document as (start, end); a query sees only keys of its own document, causally or (without
  causal) all of them. `padding_documents(lengths, n)`: key padding as two documents a row,
  the real tokens and the padding, so no real token sees a padded one (BERT's padding mask).
- Block-sparse (the FlashAttention paper's Section 3.3): `block_mask(layout, block, n_q, n_k)`
  turns a layout of kept block x block tiles into the per-row lists of block indices the kernels
  walk, as FlexAttention's BlockMask does: full blocks (no element is masked) apart from partial
  ones (the causal diagonal, the ragged end of K), so only partial blocks pay for the mask.
  Patterns: `butterfly`, `local_global`, `random_blocks`; any boolean layout is accepted.
"""

from dataclasses import dataclass

import torch


def document_bounds(doc_ids):
    """Document masking's input to every backend: (start, end), int32 (B, N), the first and
    one past the last position of each position's document, a document being a run of equal
    ids in doc_ids (B, N) (e.g. a running count of <|endoftext|> tokens). Computed once per
    batch and handed to every layer."""
    B, N = doc_ids.shape
    pos = torch.arange(N, device=doc_ids.device, dtype=torch.int32).expand(B, N)
    first = torch.ones_like(doc_ids, dtype=torch.bool)
    first[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    last = torch.ones_like(first)
    last[:, :-1] = first[:, 1:]
    start = torch.where(first, pos, 0).cummax(1).values
    end = torch.where(last, pos + 1, N).flip(1).cummin(1).values.flip(1)
    return start.to(torch.int32).contiguous(), end.to(torch.int32).contiguous()


def padding_documents(lengths, n):
    """Key padding as document bounds: row b holds lengths[b] real tokens, then padding to n.
    Real tokens see only real ones; padded queries see only padding (their outputs are
    meaningless and finite, as with any padding mask)."""
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or (lengths < 1).any() or (lengths > n).any():
        raise ValueError(f"padding: lengths must be a 1-d tensor of lengths in 1..{n}; got {lengths.tolist()}")
    pos = torch.arange(n, device=lengths.device)
    return document_bounds((pos[None, :] >= lengths[:, None]).to(torch.int32))


@dataclass(frozen=True, eq=False)
class BlockMask:
    """A block-sparse attention mask. layout: (H or 1, n_q blocks, n_k blocks) bool, the tiles
    visited (causal already applied); kv: per Q block row, int32 [n_full, n_partial, full
    block indices (padded to n_k blocks), partial ones (likewise)], what the forward and dQ
    kernels walk; q: the same per K/V block column over Q block rows, for the dK/dV kernel."""
    layout: torch.Tensor
    block: int
    n_q: int
    n_k: int
    causal: bool
    kv: torch.Tensor
    q: torch.Tensor

    @property
    def density(self):
        """Visited tiles over all tiles of the n_q x n_k grid."""
        return self.layout.float().mean().item()

    def dense(self):
        """The (H or 1, n_q, n_k) boolean element mask this block mask stands for."""
        m = self.layout.repeat_interleave(self.block, 1).repeat_interleave(self.block, 2)[:, :self.n_q, :self.n_k]
        if self.causal:
            i = torch.arange(self.n_q, device=m.device)[:, None]
            m = m & (torch.arange(self.n_k, device=m.device)[None, :] <= i + self.n_k - self.n_q)
        return m


def _lists(full, partial):
    """(H, R, C) bool x 2 -> (H, R, 2 + 2C) int32: counts, then the True indices of each, ascending."""
    def indices(m):
        return torch.argsort((~m).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    counts = torch.stack([full.sum(-1), partial.sum(-1)], -1).to(torch.int32)
    return torch.cat([counts, indices(full), indices(partial)], -1).contiguous()


def block_mask(layout, block, n_q, n_k, causal=False):
    """The BlockMask of a layout (n_q blocks, n_k blocks) or (heads, ...) of kept block x block
    tiles (True: computed), for n_q queries and n_k keys; with causal, the tiles wholly above
    the (bottom-right aligned) diagonal are dropped and those crossing it masked element-wise."""
    layout = torch.as_tensor(layout, dtype=torch.bool)
    layout = layout[None] if layout.dim() == 2 else layout
    n_qb, n_kb = -(-n_q // block), -(-n_k // block)
    if layout.dim() != 3 or layout.shape[1:] != (n_qb, n_kb):
        raise ValueError(f"block mask: the layout must be (n_q blocks, n_k blocks) = ({n_qb}, {n_kb}) for "
                         f"{n_q} x {n_k} in blocks of {block}, or (heads, {n_qb}, {n_kb}); got {tuple(layout.shape)}")
    dev = layout.device
    rows = torch.arange(n_qb, device=dev)[:, None] * block
    cols = torch.arange(n_kb, device=dev)[None, :] * block
    rows_last = torch.clamp(rows + block, max=n_q) - 1
    cols_last = torch.clamp(cols + block, max=n_k) - 1
    shift = n_k - n_q
    kept, whole = layout, torch.ones_like(layout)
    if causal:
        kept = layout & (cols <= rows_last + shift)
        whole = (cols_last <= rows + shift).expand_as(layout)
    ragged = (cols_last - cols + 1 < block).expand_as(layout)  # the forward reads these K rows with a mask
    kv = _lists(kept & whole & ~ragged, kept & ~(whole & ~ragged))
    q = _lists((kept & whole).transpose(1, 2), (kept & ~whole).transpose(1, 2))
    return BlockMask(kept, block, n_q, n_k, causal, kv, q)


def butterfly(n_blocks):
    """The flat block butterfly of Pixelated Butterfly (Chen et al., 2021), the pattern the
    FlashAttention paper's block-sparse runs use: tile (i, j) kept when i XOR j is 0 or a power
    of two (the union of the butterfly factors' supports)."""
    i = torch.arange(n_blocks)[:, None]
    x = i ^ torch.arange(n_blocks)[None, :]
    return (x & (x - 1)) == 0


def local_global(n_q_blocks, n_k_blocks, local, global_=1):
    """Longformer / BigBird-style: a band of `local` tiles about the diagonal, and the first
    `global_` block rows and columns (global tokens) whole."""
    i = torch.arange(n_q_blocks)[:, None]
    j = torch.arange(n_k_blocks)[None, :]
    return ((i - j).abs() < local) | (i < global_) | (j < global_)


def random_blocks(n_q_blocks, n_k_blocks, density, generator=None):
    """Each tile kept with probability `density` (rows may come out empty: their output is 0)."""
    return torch.rand(n_q_blocks, n_k_blocks, generator=generator) < density
