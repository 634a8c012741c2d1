"""Block layouts for PPI-guided block-sparse attention, and the protein-pair matrices behind them.

Semantics (DESIGN.md): in sample b, query token i may attend key token j iff
``pid[b, i] >= 0 and pid[b, j] >= 0 and allowed[b, pid[b, i], pid[b, j]]``.

The attention matrix is cut into tiles of ``block_m`` queries x ``block_n`` keys. A tile is
*computed* when at least one of its token pairs is allowed; it is *full* when every one of its
block_m x block_n pairs is allowed (it lies inside [0, L) on both sides and holds no padding),
and *partial* otherwise: the kernel masks partial tiles token by token from ``pid``/``allowed``
and skips the mask on full tiles.

The builder works on runs of equal ``pid`` cut at block boundaries ("segments"), so it never
forms an L x L tensor: its largest temporaries are (segments x query blocks) and the
(query blocks x key blocks) tile matrix. Proteins are usually contiguous runs of tokens, but a
protein split into several runs is handled the same way (each run is its own segment).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """Which (query block, key block) tiles to compute, in both orientations.

    Built once per batch by :func:`build_layout` and shared by every layer and head. Rows are
    ``r = b * num_blocks + block``. Query-major (forward and dQ): row r's partial tiles are the
    key blocks ``q_idx[q_ptr[r]:q_ptr[r+1]]``, its full tiles ``q_full_idx[q_full_ptr[r]:
    q_full_ptr[r+1]]``. Key-major (dK/dV): the same with ``k_*``, rows over key blocks and
    entries naming query blocks. ``q_order``/``k_order`` list the rows by decreasing tile count,
    so the heaviest rows are launched first. Index tensors are int32.

    pid: (B, L) long and allowed: (B, P, P) bool are the inputs, as given (-1 for padding).
    kernel_pid: (B, L) int32 with padding mapped to P, and kernel_allowed: (B, P+1, P+1) uint8
    whose row and column P are zero, are what the kernels read for partial tiles.
    """

    block_m: int
    block_n: int
    pid: torch.Tensor
    allowed: torch.Tensor
    kernel_pid: torch.Tensor
    kernel_allowed: torch.Tensor
    q_ptr: torch.Tensor
    q_idx: torch.Tensor
    q_full_ptr: torch.Tensor
    q_full_idx: torch.Tensor
    q_order: torch.Tensor
    k_ptr: torch.Tensor
    k_idx: torch.Tensor
    k_full_ptr: torch.Tensor
    k_full_idx: torch.Tensor
    k_order: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.pid.shape[0]

    @property
    def seqlen(self) -> int:
        return self.pid.shape[1]

    @property
    def num_proteins(self) -> int:
        return self.allowed.shape[-1]

    @property
    def num_q_blocks(self) -> int:
        return -(-self.seqlen // self.block_m)

    @property
    def num_k_blocks(self) -> int:
        return -(-self.seqlen // self.block_n)

    @property
    def num_tiles(self) -> int:
        """Computed tiles over the whole batch (partial + full)."""
        return self.q_idx.numel() + self.q_full_idx.numel()

    @property
    def num_full_tiles(self) -> int:
        return self.q_full_idx.numel()

    @property
    def density(self) -> float:
        """Computed tiles / all tiles."""
        return self.num_tiles / (self.batch_size * self.num_q_blocks * self.num_k_blocks)

    @property
    def device(self) -> torch.device:
        return self.pid.device

    def to(self, device: torch.device | str) -> BlockLayout:
        """A copy with every tensor on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)

    def tile_matrix(self, key_major: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(computed, full) tiles as (B, num_q_blocks, num_k_blocks) bool, for tests and plots.

        key_major reads the key-major CSR instead (it must describe the same tiles).
        """
        B, nq, nk = self.batch_size, self.num_q_blocks, self.num_k_blocks
        prefix, n_rows, n_cols = ("k", nk, nq) if key_major else ("q", nq, nk)
        mats = []
        for ptr_name, idx_name in ((f"{prefix}_ptr", f"{prefix}_idx"), (f"{prefix}_full_ptr", f"{prefix}_full_idx")):
            ptr, idx = getattr(self, ptr_name).long(), getattr(self, idx_name).long()
            rows = torch.repeat_interleave(torch.arange(B * n_rows, device=self.device), ptr[1:] - ptr[:-1])
            mat = torch.zeros(B * n_rows, n_cols, dtype=torch.bool, device=self.device)
            mat[rows, idx] = True
            mat = mat.view(B, n_rows, n_cols)
            mats.append(mat.transpose(1, 2) if key_major else mat)
        partial, full = mats
        return partial | full, full


def _check_block(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 16 or value > 128 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two in [16, 128], got {value!r}")


def _segments(pid_ext: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs of equal pid cut at block boundaries ("segments").

    pid_ext: (B, L) long, padding mapped to P. Returns, per segment in token order, its row
    ``b * num_blocks + block`` and its pid, each (S,) long.
    """
    B, L = pid_ext.shape
    start = torch.ones_like(pid_ext, dtype=torch.bool)
    start[:, 1:] = pid_ext[:, 1:] != pid_ext[:, :-1]
    start[:, ::block] = True
    b, pos = start.nonzero(as_tuple=True)
    # block is a power of two: a shift instead of an integer division
    row = b * -(-L // block) + (pos >> (block.bit_length() - 1))
    return row, _at(pid_ext.view(-1), b * L + pos)


def _at(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[idx] for 1-D x: index_select is several times faster than advanced indexing on CPU."""
    return x.index_select(0, idx)


Tiles = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _tiles_by_join(
    q_row: torch.Tensor,
    q_pid: torch.Tensor,
    k_row: torch.Tensor,
    k_pid: torch.Tensor,
    allowed_ext: torch.Tensor,
    nq: int,
    nk: int,
    q_per_protein: torch.Tensor,
    k_per_protein: torch.Tensor,
) -> tuple[Tiles, Tiles]:
    """Computed tiles by joining segments through the allowed protein pairs.

    Work O(allowed pairs + joined segment pairs * log): the cheap path for sparse ``allowed``.
    q_row/k_row: (S,) rows ``b * n_blocks + block``; q_pid/k_pid: (S,) pids;
    q_per_protein/k_per_protein: (B, P+1) segments per protein; allowed_ext: (B, P+1, P+1).
    Returns, query-major then key-major, (sample, row block, column block, allowed segment
    pairs in the tile), each (tiles,), sorted by (sample, row block, column block).
    """
    P1 = allowed_ext.shape[1]
    dev = allowed_ext.device
    q_group = torch.div(q_row, nq, rounding_mode="floor") * P1 + q_pid
    k_group = torch.div(k_row, nk, rounding_mode="floor") * P1 + k_pid
    q_sorted, k_sorted = torch.argsort(q_group, stable=True), torch.argsort(k_group, stable=True)
    q_count, k_count = q_per_protein.view(-1), k_per_protein.view(-1)
    q_start, k_start = torch.cumsum(q_count, 0) - q_count, torch.cumsum(k_count, 0) - k_count
    pb, pp, pp2 = allowed_ext.nonzero(as_tuple=True)
    gq, gk = pb * P1 + pp, pb * P1 + pp2
    cq, ck = _at(q_count, gq), _at(k_count, gk)
    n_join = cq * ck
    pair = torch.repeat_interleave(torch.arange(pb.numel(), device=dev), n_join)
    local = torch.arange(pair.numel(), device=dev) - _at(torch.cumsum(n_join, 0) - n_join, pair)
    ck_pair = _at(ck, pair)
    i_local = torch.div(local, ck_pair, rounding_mode="floor")
    i_seg = _at(q_sorted, _at(_at(q_start, gq), pair) + i_local)
    j_seg = _at(k_sorted, _at(_at(k_start, gk), pair) + local - i_local * ck_pair)
    # query-major key (b * nq + qb) * nk + kb; q_row already is b * nq + qb
    qr, kr = _at(q_row, i_seg), _at(k_row, j_seg)
    key, count = torch.unique(qr * nk + (kr - torch.div(kr, nk, rounding_mode="floor") * nk), return_counts=True)
    b, rest = torch.div(key, nq * nk, rounding_mode="floor"), key % (nq * nk)
    qb, kb = torch.div(rest, nk, rounding_mode="floor"), rest % nk
    order = torch.argsort((b * nk + kb) * nq + qb)
    return (b, qb, kb, count), (_at(b, order), _at(kb, order), _at(qb, order), _at(count, order))


def _tiles_by_incidence(
    q_row: torch.Tensor,
    q_pid: torch.Tensor,
    k_row: torch.Tensor,
    k_pid: torch.Tensor,
    allowed_ext: torch.Tensor,
    nq: int,
    nk: int,
    q_per_protein: torch.Tensor,
    k_per_protein: torch.Tensor,
) -> tuple[Tiles, Tiles]:
    """Same result as :func:`_tiles_by_join`, through per-block protein incidence.

    Work O(S * (P + nq) + B * nq * nk) whatever the density: the cheap path for dense ``allowed``.
    Counts are small integers (at most block_m * block_n), exact in fp32.
    """
    B, P1 = allowed_ext.shape[0], allowed_ext.shape[1]
    dev = allowed_ext.device
    q_b, k_b = torch.div(q_row, nq, rounding_mode="floor"), torch.div(k_row, nk, rounding_mode="floor")
    per_qblock = torch.zeros(B * nq, P1, dtype=torch.float32, device=dev)
    per_qblock.index_add_(0, q_row, allowed_ext[q_b, q_pid].to(torch.float32))
    per_qblock = per_qblock.view(B, nq, P1).transpose(1, 2).contiguous()
    pairs = torch.zeros(B * nk, nq, dtype=torch.float32, device=dev)
    pairs.index_add_(0, k_row, per_qblock[k_b, k_pid])
    pairs = pairs.view(B, nk, nq)
    out = []
    for rc in (pairs.transpose(1, 2), pairs):
        b, r, c = rc.nonzero(as_tuple=True)
        out.append((b, r, c, rc[b, r, c].long()))
    return out[0], out[1]


def _csr(row: torch.Tensor, col: torch.Tensor, is_full: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, ...]:
    """Two CSRs (partial tiles, full tiles) of tiles given by (row, col, is_full), each (nnz,).

    Entries must be sorted by (row, col). Returns ptr (n_rows+1,), idx, full_ptr (n_rows+1,),
    full_idx, and order (n_rows,): the rows by decreasing tile count. All int32.
    """
    out = []
    for sel in (~is_full, is_full):
        ptr = torch.zeros(n_rows + 1, dtype=torch.int32, device=row.device)
        torch.cumsum(torch.bincount(row[sel], minlength=n_rows), 0, out=ptr[1:])
        out += [ptr, col[sel].to(torch.int32)]
    order = torch.argsort(torch.bincount(row, minlength=n_rows), descending=True, stable=True)
    return (*out, order.to(torch.int32))


def build_layout(pid: torch.Tensor, allowed: torch.Tensor, block_m: int = 64, block_n: int = 64) -> BlockLayout:
    """Block layout of the attention pattern given by per-token proteins and allowed protein pairs.

    pid: (B, L) integer, protein index of each token, -1 for padding.
    allowed: (B, P, P) bool (or (P, P), shared by the batch): ``allowed[b, p, p2]`` lets tokens of
    protein p attend tokens of protein p2 (not necessarily symmetric).
    block_m, block_n: tile size in queries and keys (powers of two in [16, 128]); they are the
    kernel's tile sizes.
    Runs on pid's device, never forms anything L x L: its largest temporaries are the
    (B, L / block_n, L / block_m) tile counts (3.6 MB at L = 61,440 with 64 x 64 tiles).
    """
    _check_block("block_m", block_m)
    _check_block("block_n", block_n)
    if pid.dim() != 2 or pid.dtype not in _INT_DTYPES:
        raise ValueError(f"pid must be a (B, L) integer tensor, got {tuple(pid.shape)} {pid.dtype}")
    B, L = pid.shape
    if L == 0 or B == 0:
        raise ValueError(f"pid must be non-empty, got shape {tuple(pid.shape)}")
    if allowed.dtype != torch.bool:
        raise ValueError(f"allowed must be a bool tensor, got {allowed.dtype}")
    if allowed.dim() == 2:
        allowed = allowed.unsqueeze(0).expand(B, -1, -1)
    if allowed.dim() != 3 or allowed.shape[0] != B or allowed.shape[1] != allowed.shape[2]:
        raise ValueError(f"allowed must be (B, P, P) with B={B} (or (P, P)), got {tuple(allowed.shape)}")
    if allowed.device != pid.device:
        raise ValueError(f"pid is on {pid.device} but allowed is on {allowed.device}")
    P = allowed.shape[-1]
    lo, hi = (int(x) for x in torch.aminmax(pid.long()))
    if lo < -1 or hi >= P:
        raise ValueError(f"pid values must lie in [-1, {P - 1}] for {P} proteins, found [{lo}, {hi}]")
    dev = pid.device
    # padding becomes protein P, whose row and column of allowed_ext are all False
    pid_ext = torch.where(pid < 0, P, pid.long())
    allowed_ext = torch.zeros(B, P + 1, P + 1, dtype=torch.bool, device=dev)
    allowed_ext[:, :P, :P] = allowed
    nq, nk = -(-L // block_m), -(-L // block_n)
    q_row, q_pid = _segments(pid_ext, block_m)
    k_row, k_pid = _segments(pid_ext, block_n)
    q_segs = torch.bincount(q_row, minlength=B * nq).view(B, nq)
    k_segs = torch.bincount(k_row, minlength=B * nk).view(B, nk)

    # count, per tile, the allowed (query segment, key segment) pairs. The join costs the
    # number of joined segment pairs, the incidence path S * nq: take the smaller.
    q_per_protein = torch.bincount(q_row // nq * (P + 1) + q_pid, minlength=B * (P + 1)).view(B, P + 1)
    k_per_protein = torch.bincount(k_row // nk * (P + 1) + k_pid, minlength=B * (P + 1)).view(B, P + 1)
    n_join = float(torch.einsum("bp,bpr,br->", q_per_protein.float(), allowed_ext.float(), k_per_protein.float()))
    by = _tiles_by_join if n_join <= k_row.numel() * nq else _tiles_by_incidence
    q_tiles, k_tiles = by(q_row, q_pid, k_row, k_pid, allowed_ext, nq, nk, q_per_protein, k_per_protein)

    # a tile is full when every segment pair in it is allowed and it lies inside [0, L)
    q_inside = (torch.arange(nq, device=dev) + 1) * block_m <= L
    k_inside = (torch.arange(nk, device=dev) + 1) * block_n <= L

    def csr(tiles: Tiles, segs_r: torch.Tensor, segs_c: torch.Tensor, inside_r: torch.Tensor, inside_c: torch.Tensor):
        b, r, c, count = tiles
        row, col = b * segs_r.shape[1] + r, b * segs_c.shape[1] + c
        full = (count == _at(segs_r.view(-1), row) * _at(segs_c.view(-1), col)) & _at(inside_r, r) & _at(inside_c, c)
        return _csr(row, c, full, segs_r.numel())

    names = ("ptr", "idx", "full_ptr", "full_idx", "order")
    q_csr = csr(q_tiles, q_segs, k_segs, q_inside, k_inside)
    k_csr = csr(k_tiles, k_segs, q_segs, k_inside, q_inside)
    return BlockLayout(
        block_m=block_m,
        block_n=block_n,
        pid=pid.long(),
        allowed=allowed,
        kernel_pid=pid_ext.to(torch.int32).contiguous(),
        kernel_allowed=allowed_ext.to(torch.uint8).contiguous(),
        **{f"q_{n}": t for n, t in zip(names, q_csr)},
        **{f"k_{n}": t for n, t in zip(names, k_csr)},
    )


def _diag(n: int, device: torch.device | str | None) -> torch.Tensor:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of proteins must be a positive integer, got {n!r}")
    return torch.eye(n, dtype=torch.bool, device=device)


def dense_allowed(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(n, n) all True: every protein attends every protein (dense attention)."""
    return torch.ones(n, n, dtype=torch.bool, device=_diag(n, device).device)


def single_protein_allowed(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(n, n) identity: attention stays within each protein."""
    return _diag(n, device)


def window_allowed(n: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(n, n): proteins i and j attend each other iff |i - j| <= w (genome-order neighbours)."""
    if not isinstance(w, int) or w < 0:
        raise ValueError(f"window w must be a non-negative integer, got {w!r}")
    idx = torch.arange(n, device=_diag(n, device).device)
    return (idx[:, None] - idx[None, :]).abs() <= w


def global_allowed(
    n: int, global_idx: Iterable[int] | torch.Tensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """(n, n): the diagonal, plus every pair that involves one of the ``global_idx`` proteins."""
    out = _diag(n, device)
    g = torch.as_tensor(list(global_idx) if not isinstance(global_idx, torch.Tensor) else global_idx)
    g = g.to(device=out.device, dtype=torch.long).reshape(-1)
    if g.numel() and (int(g.min()) < 0 or int(g.max()) >= n):
        raise ValueError(f"global protein indices must lie in [0, {n - 1}], got {g.tolist()}")
    out[g, :] = True
    out[:, g] = True
    return out


def allowed_from_pairs(
    n: int, pairs: Iterable[tuple[int, int]] | torch.Tensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """(n, n) symmetric: the diagonal plus both directions of every (i, j) in ``pairs`` (E, 2)."""
    out = _diag(n, device)
    p = pairs if isinstance(pairs, torch.Tensor) else torch.as_tensor(list(pairs), dtype=torch.long)
    p = p.to(device=out.device, dtype=torch.long)
    if p.numel() == 0:
        return out
    if p.dim() != 2 or p.shape[1] != 2:
        raise ValueError(f"pairs must have shape (E, 2), got {tuple(p.shape)}")
    if int(p.min()) < 0 or int(p.max()) >= n:
        bad = p[((p < 0) | (p >= n)).any(1)][0].tolist()
        raise ValueError(f"pair {bad} is out of range for {n} proteins")
    out[p[:, 0], p[:, 1]] = True
    out[p[:, 1], p[:, 0]] = True
    return out
