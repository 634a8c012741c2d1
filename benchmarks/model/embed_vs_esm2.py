"""BiMamba-S vs ESM-2 at equal parameters on CPU (issue 16): inference and training tokens/s.

    .venv/bin/python benchmarks/model/embed_vs_esm2.py [--threads 2] [--repeats 5] [--quick]
        [--no-train] [--no-bf16] [--profile]

Models, random init: BiMamba-S d_model 320 x 10 layers (``lcplm.models.bimamba``, 7.39M
parameters) and Hugging Face ``EsmModel`` with ESM-2 8M's config (320 wide, 6 layers, 20 heads,
FFN 1280, rotary; ``attn_implementation="sdpa"``; 7.41M parameters without the pooler, 7.51M as
``EsmForMaskedLM``). Both encode whole batches of equal-length sequences (the embedding use).

1. Correctness first: BiMamba's inference route (``lcplm.models.bimamba_inference``, taken under
   ``inference_mode``) against its training path and the sequential reference scan, on a padded
   batch of odd lengths and on the same sequences packed. The script stops (exit 1) before any
   speed if fp32 outputs differ by more than 1e-4 (outputs are RMS-normalised, about 1).
2. Inference tokens/s, forward only, fp32, then bf16 (both models in bf16) where the CPU has
   AMX-BF16 or AVX512-BF16 (/proc/cpuinfo flags). Columns: BiMamba's inference route, BiMamba's
   training path under no_grad (what ran before the route existed), ESM-2; the ratio
   route / ESM-2 from each round's adjacent runs (median, and the min-max spread over rounds).
3. Training tokens/s (forward + backward + AdamW step, MLM cross-entropy on all tokens, fp32):
   the tiny model (experiments/model/tiny.yaml), the 7M BiMamba-S and the 7M ESM-2
   (``EsmForMaskedLM``), batch 16 x 256.

Every comparison alternates the sides inside each round, best of ``--repeats`` rounds, in one
process, so load from other processes on the machine affects both sides. ``--profile`` adds
where the 7M BiMamba's inference time goes (per op, one layer, CPU time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from lcplm.config import load_config
from lcplm.data import tokenizer
from lcplm.models import bimamba_inference, build_model
from lcplm.models.bimamba import BiMambaConfig, BiMambaLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for the shared header
from _env import header  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FP32_TOL = 1e-4


def cpu_has_bf16() -> bool:
    """AMX-BF16 or AVX512-BF16 in /proc/cpuinfo's flags (bf16 matmuls run natively)."""
    try:
        flags = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def esm2_config():
    from transformers import EsmConfig

    return EsmConfig(
        vocab_size=33, hidden_size=320, num_hidden_layers=6, num_attention_heads=20, intermediate_size=1280,
        position_embedding_type="rotary", max_position_embeddings=1026, emb_layer_norm_before=False,
        token_dropout=True, pad_token_id=1, mask_token_id=32, attn_implementation="sdpa",
    )  # fmt: skip


def bimamba_7m() -> BiMambaLM:
    torch.manual_seed(0)
    return BiMambaLM(BiMambaConfig(d_model=320, n_layer=10)).eval()


def esm2_encoder():
    from transformers import EsmModel

    torch.manual_seed(0)
    return EsmModel(esm2_config(), add_pooling_layer=False).eval()


def params(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


# ------------------------------------------------------------------------------ correctness


def check_outputs(model: BiMambaLM, dtype: torch.dtype) -> dict[str, float]:
    """Max |inference route - training path| (and - reference scan, fp32), padded and packed."""
    g = torch.Generator().manual_seed(1)
    lengths = [97, 33, 1, 64]
    seqs = [torch.randint(4, 29, (n,), generator=g) for n in lengths]
    ids, lens = tokenizer.pad_batch(seqs)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    packed = torch.cat(seqs)[None]
    model = model.to(dtype)
    out = {}
    with torch.inference_mode():
        fast = model.encode(ids, lengths=lens)
        fast_packed = model.encode(packed, cu_seqlens=cu)
        with bimamba_inference.disabled():
            train = model.encode(ids, lengths=lens)
            train_packed = model.encode(packed, cu_seqlens=cu)
        out["route vs training path, padded"] = (fast.float() - train.float()).abs().max().item()
        out["route vs training path, packed"] = (fast_packed.float() - train_packed.float()).abs().max().item()
        out["route padded vs packed"] = max(
            (fast[i, :n].float() - fast_packed[0, int(cu[i]) : int(cu[i + 1])].float()).abs().max().item()
            for i, n in enumerate(lengths)
        )
        if dtype == torch.float32:
            backends = [layer.mixer.backend for layer in model.backbone.layers]
            for layer in model.backbone.layers:
                layer.mixer.backend = "reference"
            try:
                ref = model.encode(ids, lengths=lens)
            finally:
                for layer, b in zip(model.backbone.layers, backends):
                    layer.mixer.backend = b
            out["route vs reference scan, padded"] = (fast - ref).abs().max().item()
    model.float()
    return out


# ------------------------------------------------------------------------------------ timing


def alternate(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each side per round, the sides alternating inside every round."""
    for f in fns.values():  # warm-up: allocations, the kernel build, oneDNN primitives
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def ratio_stats(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """Median, min and max over rounds of den/num (a speed ratio: > 1 means num's side is faster)."""
    rs = [d / n for n, d in zip(num, den)]
    return statistics.median(rs), min(rs), max(rs)


def inference_table(bim: BiMambaLM, esm, shapes, dtype: torch.dtype, repeats: int) -> None:
    bim, esm = bim.to(dtype), esm.to(dtype)
    print(f"\n**Inference, forward only, {str(dtype).replace('torch.', '')}** (tokens/s, best of {repeats} rounds)\n")
    print("| batch x L | BiMamba-S route | BiMamba-S training path | ESM-2 | route / ESM-2 (best) | route / ESM-2 per round: median [min, max] | route / training path |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for bsz, length in shapes:
        g = torch.Generator().manual_seed(length)
        ids = torch.randint(4, 29, (bsz, length), generator=g)
        mask = torch.ones(bsz, length, dtype=torch.long)

        def route():
            return bim.encode(ids)

        def training_path():
            with bimamba_inference.disabled():
                return bim.encode(ids)

        def esm2():
            return esm(input_ids=ids, attention_mask=mask).last_hidden_state

        fns = {"route": route, "esm2": esm2}
        # the training path only where it takes seconds, not minutes
        if bsz * length <= 8192:
            fns["training"] = training_path
        with torch.inference_mode():
            t = alternate(fns, repeats)
        tok = bsz * length
        best = {k: min(v) for k, v in t.items()}
        med, lo, hi = ratio_stats(t["route"], t["esm2"])
        train_col = f"{tok / best['training']:,.0f}" if "training" in best else "n/a"
        vs_train = f"{best['training'] / best['route']:.2f}x" if "training" in best else "n/a"
        print(
            f"| {bsz} x {length:,} | {tok / best['route']:,.0f} | {train_col} | {tok / best['esm2']:,.0f} | "
            f"**{best['esm2'] / best['route']:.2f}x** | {med:.2f}x [{lo:.2f}, {hi:.2f}] | {vs_train} |",
            flush=True,
        )
    bim.float(), esm.float()


def training_table(repeats: int, bsz: int = 16, length: int = 256) -> None:
    from transformers import EsmForMaskedLM

    torch.manual_seed(0)
    tiny = build_model(load_config(REPO / "experiments" / "model" / "tiny.yaml").model)
    big = bimamba_7m()
    torch.manual_seed(0)
    esm = EsmForMaskedLM(esm2_config())
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(4, 29, (bsz, length), generator=g)
    labels = torch.randint(4, 29, (bsz, length), generator=g)
    mask = torch.ones(bsz, length, dtype=torch.long)

    def step_fn(model, logits_of):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            logits = logits_of(model)
            loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    fns = {
        "tiny": step_fn(tiny, lambda m: m(ids)),
        "bimamba": step_fn(big, lambda m: m(ids)),
        "esm2": step_fn(esm, lambda m: m(input_ids=ids, attention_mask=mask).logits),
    }
    t = alternate(fns, repeats)
    tok = bsz * length
    best = {k: min(v) for k, v in t.items()}
    med, lo, hi = ratio_stats(t["bimamba"], t["esm2"])
    print(f"\n**Training step, fp32** (forward + backward + AdamW, batch {bsz} x {length}; tokens/s, best of {repeats})\n")
    print("| model | params (M) | tokens/s | vs ESM-2 7.5M (best) | per round: median [min, max] |")
    print("|---|---:|---:|---:|---:|")
    print(f"| BiMamba-S tiny (experiments/model/tiny.yaml) | {params(tiny):.2f} | {tok / best['tiny']:,.0f} | n/a (not equal size) | n/a |")
    print(
        f"| BiMamba-S 320 x 10 | {params(big):.2f} | {tok / best['bimamba']:,.0f} | "
        f"**{best['esm2'] / best['bimamba']:.2f}x** | {med:.2f}x [{lo:.2f}, {hi:.2f}] |"
    )
    print(f"| ESM-2 8M config (EsmForMaskedLM) | {params(esm):.2f} | {tok / best['esm2']:,.0f} | 1.00x | n/a |")


def profile(bim: BiMambaLM, bsz: int, length: int, dtype: torch.dtype) -> None:
    """CPU time per op of one mixer layer on the inference route (single call each, best of 5)."""
    from lcplm.models.bimamba import SequenceLayout
    from lcplm_kernels import selective_scan as ops

    bim = bim.to(dtype)
    block = bim.backbone.layers[0]
    mixer, fwd, rev = block.mixer, block.mixer.fwd, block.mixer.rev
    dim = fwd.conv1d.weight.shape[0]
    h = torch.randn(bsz, length, bim.cfg.d_model).to(dtype)
    layout = SequenceLayout.build(torch.zeros(bsz, length, dtype=torch.long))
    seg = layout.segments(bsz, length)
    parts: dict[str, list[float]] = {}

    def timed(name, f):
        t0 = time.process_time()
        r = f()
        parts.setdefault(name, []).append(time.process_time() - t0)
        return r

    weights = bimamba_inference._kernel_weights(mixer)
    with torch.inference_mode():
        for _ in range(6):
            timed("RMSNorm", lambda: block.norm(h))
            xz = timed("in_proj (matmul)", lambda: mixer.in_proj(h))
            x, z = xz[..., :dim], xz[..., dim:]
            act = xz.dtype
            buf_xc = layout.workspace("xc", (2, bsz, length, dim), act, False)
            buf_y = layout.workspace("y", (bsz, length, dim), act, False)
            buf_yf = None if act == torch.float32 else layout.workspace("y_fwd", (bsz, length, dim), torch.float32, False)
            xc = timed("conv + SiLU, both directions (C)", lambda: ops.bidirectional_conv1d_cpu(x, weights, seg, out=buf_xc))
            dbl_f = timed("x_proj x 2 (matmuls)", lambda: fwd.x_proj(xc[0]))
            dbl_r = timed("x_proj x 2 (matmuls)", lambda: rev.x_proj(xc[1]))
            y = timed("scan x 2 + dt_proj + gate (C)", lambda: ops.bidirectional_scan_cpu(xc, dbl_f, dbl_r, z, weights, seg, out=buf_y, scratch=buf_yf))
            timed("out_proj (matmul)", lambda: mixer.out_proj(y))
            timed("whole block", lambda: block(h, h.float(), layout))
    xp = parts["x_proj x 2 (matmuls)"]
    per = {k: min(v) for k, v in parts.items()}
    per["x_proj x 2 (matmuls)"] = min(a + b for a, b in zip(xp[::2], xp[1::2]))  # two calls per round
    whole = per.pop("whole block")
    print(f"\n**Where the route's time goes** (one layer, batch {bsz} x {length}, {str(dtype).replace('torch.', '')}, "
          f"process CPU time, {torch.get_num_threads()} threads)\n")
    print("| op | CPU ms | share of the block |")
    print("|---|---:|---:|")
    for k, v in per.items():
        print(f"| {k} | {v * 1e3:.2f} | {v / whole:.0%} |")
    print(f"| whole block (incl. residual add) | {whole * 1e3:.2f} | 100% |")
    bim.float()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="two shapes, 3 rounds: a smoke run")
    p.add_argument("--no-train", action="store_true", help="skip the training-step table")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 table")
    p.add_argument("--profile", action="store_true", help="add the per-op split of the route's time")
    ns = p.parse_args()
    torch.set_num_threads(ns.threads)
    import transformers

    print(header(extra=f"transformers {transformers.__version__}"))
    repeats = 3 if ns.quick else ns.repeats
    shapes = [(16, 256), (4, 1024)] if ns.quick else [(16, 256), (4, 1024), (1, 4096), (1, 8192)]
    bim, esm = bimamba_7m(), esm2_encoder()
    print(f"BiMamba-S 320 x 10: {params(bim):.2f}M parameters; ESM-2 8M config (EsmModel, no pooler): {params(esm):.2f}M")

    print("\n**Inference route vs training path** (max abs difference of the encoder's output)\n")
    checks = [(torch.float32, FP32_TOL)] + ([(torch.bfloat16, None)] if cpu_has_bf16() and not ns.no_bf16 else [])
    for dtype, tol in checks:
        for name, diff in check_outputs(bim, dtype).items():
            print(f"- {str(dtype).replace('torch.', '')}, {name}: {diff:.2e}")
            if tol is not None and not diff <= tol:
                print(f"FAILED: {name} differs by {diff:.2e} > {tol:.0e}; no speeds printed", file=sys.stderr)
                return 1

    inference_table(bim, esm, shapes, torch.float32, repeats)
    if cpu_has_bf16() and not ns.no_bf16:
        inference_table(bim, esm, shapes, torch.bfloat16, repeats)
    else:
        print("\nbf16: skipped (no AMX-BF16 / AVX512-BF16 in /proc/cpuinfo, or --no-bf16)")
    if ns.profile:
        profile(bim, 16, 256, torch.float32)
        if cpu_has_bf16() and not ns.no_bf16:
            profile(bim, 16, 256, torch.bfloat16)
    if not ns.no_train:
        training_table(repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
