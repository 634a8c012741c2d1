"""BERT/ESM-style masked-LM corruption as a pure tensor function.

Each residue position (``tokenizer.is_residue``: never special tokens, separators or padding)
is a target independently with probability ``mask_prob``. Of the targets, ``mask_token_frac``
become ``<mask>``, ``random_token_frac`` a uniformly drawn standard amino acid (which may equal
the original, as in BERT), and the rest stay unchanged.

Why independent Bernoulli draws rather than exactly ``round(0.15 * n)`` targets per sequence:
a position's fate then depends only on its own random draw, not on which other sequences share
the batch or how they are laid out, so padded ``[B, L]`` and packed ``[1, T]`` batches need no
per-sequence bookkeeping and the same draws give the same targets in either layout. The count
per sequence is binomial (mean 15%); over a batch of thousands of residues the rate is within
about a percent of 15%, and ESM-2 and BERT train the same way.
"""

from __future__ import annotations

import torch

from lcplm.data.tokenizer import MASK, STANDARD_AA_IDS, is_residue

IGNORE_INDEX = -100  # label of a position that is not a target (torch cross_entropy's default)


def mask_tokens(
    input_ids: torch.Tensor,
    generator: torch.Generator,
    mask_prob: float = 0.15,
    mask_token_frac: float = 0.8,
    random_token_frac: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt residues for masked-LM training.

    input_ids: (B, L) or (1, T) long (any shape works). generator: drives every random draw,
    on the generator's device. Returns ``(masked_ids, labels)`` of ``input_ids``' shape:
    ``labels`` holds the original id at targets and -100 elsewhere.
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if mask_token_frac < 0 or random_token_frac < 0 or mask_token_frac + random_token_frac > 1.0:
        raise ValueError(
            "mask_token_frac and random_token_frac must be >= 0 and sum to at most 1, "
            f"got {mask_token_frac} and {random_token_frac}"
        )
    shape, device = input_ids.shape, input_ids.device
    gen_device = generator.device
    # three draws of the full shape, always in this order, so a seed fixes the whole result
    u_target = torch.rand(shape, generator=generator, device=gen_device).to(device)
    u_kind = torch.rand(shape, generator=generator, device=gen_device).to(device)
    aa = STANDARD_AA_IDS.to(gen_device)
    random_ids = aa[torch.randint(len(aa), shape, generator=generator, device=gen_device)].to(device)

    target = is_residue(input_ids) & (u_target < mask_prob)
    to_mask = target & (u_kind < mask_token_frac)
    to_random = target & (u_kind >= mask_token_frac) & (u_kind < mask_token_frac + random_token_frac)
    masked = torch.where(to_mask, torch.full_like(input_ids, MASK), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    labels = torch.where(target, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked, labels
