"""Random genome-like inputs for the block-sparse attention tests."""

from __future__ import annotations

import torch


def random_pid(
    B: int, L: int, P: int, gen: torch.Generator, pad_last: int = 0, split_protein: bool = False
) -> torch.Tensor:
    """(B, L) long: P proteins of random lengths (>= 1) in order, so they straddle block edges.

    pad_last: the last sample ends with this many padding tokens (-1).
    split_protein: protein 0 also reappears as a run inside the last protein (non-contiguous pid).
    """
    rows = []
    for b in range(B):
        n = L - (pad_last if b == B - 1 else 0)
        cuts = torch.randperm(n - 1, generator=gen)[: P - 1] + 1 if n > 1 else torch.zeros(0, dtype=torch.long)
        cuts = torch.sort(cuts).values
        lens = torch.diff(torch.cat([torch.tensor([0]), cuts, torch.tensor([n])]))
        pid = torch.repeat_interleave(torch.arange(lens.numel()), lens)
        if split_protein and n >= 8:
            last = int(pid[-1])
            run = (pid == last).nonzero().squeeze(1)
            if run.numel() >= 3:
                pid[run[1 : 1 + run.numel() // 2]] = 0
        rows.append(torch.cat([pid, torch.full((L - n,), -1, dtype=torch.long)]))
    return torch.stack(rows)


def random_allowed(B: int, P: int, density: float, gen: torch.Generator, empty_row: bool = True) -> torch.Tensor:
    """(B, P, P) bool, not symmetric; the diagonal is random too, and with empty_row the
    protein 1 of sample 0 may attend nothing (its queries must return zeros)."""
    allowed = torch.rand(B, P, P, generator=gen) < density
    if empty_row and P > 1:
        allowed[0, 1, :] = False
    return allowed
