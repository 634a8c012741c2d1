"""How long a context trains, and what it costs: BiMamba-S and the genome transformer.

    python benchmarks/model/context_length.py                 # CPU: growth + per-layer parts
    python benchmarks/model/context_length.py --part search   # GPU: longest trainable context

Every measurement is one training step (forward, backward, AdamW step) on one sequence of L
tokens (the genome transformer: proteins of 300 tokens, each attending itself and the two
proteins on either side), with and without activation checkpointing per block
(``lcplm.train.strategies.apply_activation_checkpointing``), side by side in one process.

Parts:
  growth     tiny models, L doubling: peak memory and tokens/s (memory must grow linearly in L)
  per-layer  full-width layers (BiMamba-S 790M: d 1536; genome transformer 650M: d 1280) with
             1 and 2 blocks at two lengths: activation bytes per token per layer, measured,
             then the per-GPU memory plan at 61,000 tokens for the full models
  search     (GPU) full models, bf16 autocast: the longest L that trains on this GPU, doubling
             from 4,096 then bisecting to 1,024 tokens; plus the 61,000-token row

Peak memory: on CUDA ``max_memory_allocated``; on CPU the process high-water mark (VmHWM, reset
through /proc/self/clear_refs) with glibc's mmap threshold pinned so freed tensors leave the
resident set (the script re-executes itself with MALLOC_MMAP_THRESHOLD_ set).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # host allocations only; harmless on GPU runs
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 16)
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch

from lcplm.config import load_config
from lcplm.data import tokenizer
from lcplm.models import build_model, model_class
from lcplm.models.bimamba import BiMambaConfig
from lcplm.models.sparse_transformer import SparseTransformerConfig
from lcplm.tasks.mlm import masked_lm_loss
from lcplm.train.strategies import apply_activation_checkpointing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for the shared header
from _env import header  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TARGET = 61_000
PROTEIN = 300  # tokens per protein in the genome inputs
WINDOW = 2  # a protein attends the proteins up to this many positions away
GB = 1e9


# -- models -------------------------------------------------------------------------------

def bimamba_cfg(size: str, n_layer: int | None = None) -> BiMambaConfig:
    if size == "full":  # LC-PLM's "790M" (752.5M with our 40-row vocabulary)
        cfg = load_config(REPO / "experiments" / "model" / "lcplm_790m.yaml").model
        cfg.n_layer = n_layer or cfg.n_layer
        return cfg
    return BiMambaConfig(d_model=64, n_layer=n_layer or 4, d_state=16, expand=2)


def transformer_cfg(size: str, n_layer: int | None = None) -> SparseTransformerConfig:
    if size == "full":  # ESM-2 650M's shape
        return SparseTransformerConfig(num_layers=n_layer or 33, hidden=1280, heads=20, ffn=5120, attention_backend="kernel")
    return SparseTransformerConfig(num_layers=n_layer or 4, hidden=64, heads=4, ffn=256, attention_backend="kernel")


CONFIGS = {"bimamba": bimamba_cfg, "sparse_transformer": transformer_cfg}


def make_batch(kind: str, L: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """One sequence of L tokens with ~15% MLM targets (and the genome layout for the transformer)."""
    g = torch.Generator().manual_seed(seed)
    aa = torch.as_tensor(tokenizer.STANDARD_AA_IDS)
    ids = aa[torch.randint(0, len(aa), (1, L), generator=g)]
    target = torch.rand(1, L, generator=g) < 0.15
    labels = torch.where(target, ids, torch.full_like(ids, -100))
    ids = torch.where(target, torch.full_like(ids, tokenizer.MASK), ids)
    batch = {"input_ids": ids, "labels": labels, "lengths": torch.tensor([L])}
    if kind == "sparse_transformer":
        pid = (torch.arange(L) // PROTEIN)[None]
        P = int(pid.max()) + 1
        i = torch.arange(P)
        batch["pid"] = pid
        batch["allowed"] = ((i[:, None] - i[None, :]).abs() <= WINDOW)[None]
    return {k: v.to(device) for k, v in batch.items()}


# -- measurement --------------------------------------------------------------------------

def _proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


class PeakMemory:
    """Bytes above the starting point at the peak of the block, and the absolute peak."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.start = _proc_status("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.peak = _proc_status("VmHWM")
        self.above = self.peak - self.start


def train_step(model, opt, batch, amp: bool) -> None:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext()
    with ctx:
        logits = model(**inputs)
    loss, _, _ = masked_lm_loss(logits, batch["labels"])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def build(kind: str, size: str, ckpt: bool, device: torch.device, n_layer: int | None = None):
    torch.manual_seed(0)
    model = build_model(CONFIGS[kind](size, n_layer)).to(device).train()
    if ckpt:
        apply_activation_checkpointing(model, model_class(kind).block_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return model, opt


def _current(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    return _proc_status("VmRSS")


def measure(model, opt, kind: str, L: int, device: torch.device, amp: bool, repeats: int) -> dict:
    """One sequence of L tokens, after a warm-up step (gradients and Adam state exist):

    held: memory the forward pass leaves for backward (activations; with checkpointing, the
          blocks' inputs); peak/above: the whole step's peak, absolute and above its start;
    tok/s: the fastest of ``repeats`` timed steps.
    """
    batch = make_batch(kind, L, device)
    train_step(model, opt, batch, amp)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    gc.collect()
    start = _current(device)
    with torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext():
        logits = model(**inputs)
    loss, _, _ = masked_lm_loss(logits, batch["labels"])
    held = _current(device) - start
    loss.backward()
    del logits, loss
    opt.zero_grad(set_to_none=True)
    with PeakMemory(device) as mem:
        train_step(model, opt, batch, amp)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_step(model, opt, batch, amp)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t = min(times) if times else float("nan")
    return {"L": L, "step_s": t, "tok_s": L / t, "held_gb": held / GB, "above_gb": mem.above / GB, "peak_gb": mem.peak / GB}


# -- parts --------------------------------------------------------------------------------

def part_growth(device: torch.device, lengths: list[int], repeats: int) -> None:
    print("\n## growth: tiny models, one training step per length (ckpt = activation checkpointing per block)\n")
    print("held: activation memory after the forward pass; step: the step's peak above its start\n")
    print("| model | L | held MB plain | held MB ckpt | step MB plain | step MB ckpt | tok/s plain | tok/s ckpt | ckpt/plain time |")
    print("|---|---|---|---|---|---|---|---|---|")
    amp = device.type == "cuda"
    for kind in CONFIGS:
        rows = {}
        for ckpt in (False, True):
            model, opt = build(kind, "tiny", ckpt, device)
            for L in lengths:
                rows[(ckpt, L)] = measure(model, opt, kind, L, device, amp, repeats)
            del model, opt
        for L in lengths:
            p, c = rows[(False, L)], rows[(True, L)]
            print(f"| {kind} | {L} | {p['held_gb'] * 1e3:.1f} | {c['held_gb'] * 1e3:.1f} | {p['above_gb'] * 1e3:.0f} | "
                  f"{c['above_gb'] * 1e3:.0f} | {p['tok_s']:.0f} | {c['tok_s']:.0f} | {c['step_s'] / p['step_s']:.2f} |")
        print()
        for ckpt in (False, True):
            a, b = rows[(ckpt, lengths[0])], rows[(ckpt, lengths[-1])]
            print(f"- {kind} {'ckpt' if ckpt else 'plain'}: held x{b['held_gb'] / a['held_gb']:.2f} and step peak "
                  f"x{b['above_gb'] / a['above_gb']:.2f} for L x{lengths[-1] / lengths[0]:.0f}; "
                  f"{(b['held_gb'] - a['held_gb']) * GB / (lengths[-1] - lengths[0]) / 1e3:.2f} KB held per token")
        print()


def activation_bytes_per_token_layer(kind: str, device: torch.device, ckpt: bool, L: int, amp: bool) -> float:
    """One block's share of the activations held for backward, per token: (2 blocks - 1 block) / L."""
    held = {}
    for n in (1, 2):
        model, opt = build(kind, "full", ckpt, device, n_layer=n)
        held[n] = measure(model, opt, kind, L, device, amp, repeats=0)["held_gb"] * GB
        del model, opt
    return (held[2] - held[1]) / L


def full_cfg(kind: str):
    return CONFIGS[kind]("full")


def n_params(kind: str) -> int:
    with torch.device("meta"):
        model = build_model(full_cfg(kind))
    return sum(p.numel() for p in model.parameters())


def part_per_layer(device: torch.device, L: int) -> None:
    amp = device.type == "cuda"
    dtype = "bf16 autocast" if amp else "fp32"
    print(f"\n## per-layer activations at full width ({dtype}, L = {L}), and the 61,000-token plan\n")
    print("GB per GPU for one 61,000-token sequence: states = fp32 parameters + gradients + AdamW m, v "
          "(16 bytes/parameter); ckpt = every block's inputs + one block's activations during its recompute\n")
    print("| model | params | layers | held KB/token/layer plain | ckpt | states GB | 61k plain GB | 61k ckpt GB |"
          " 61k ckpt + FSDP x8 GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in CONFIGS:
        plain = activation_bytes_per_token_layer(kind, device, False, L, amp)
        ck = activation_bytes_per_token_layer(kind, device, True, L, amp)
        n = n_params(kind)
        cfg = full_cfg(kind)
        layers = cfg.n_layer if kind == "bimamba" else cfg.num_layers
        states = 16 * n / GB
        act_plain = TARGET * layers * plain / GB
        act_ck = (TARGET * layers * ck + TARGET * plain) / GB
        print(f"| {kind} | {n / 1e6:.1f}M | {layers} | {plain / 1e3:.1f} | {ck / 1e3:.2f} | {states:.1f} | "
              f"{states + act_plain:.0f} | {states + act_ck:.1f} | {states / 8 + act_ck:.1f} |")


def part_search(device: torch.device, max_len: int, repeats: int) -> None:
    if device.type != "cuda":
        raise SystemExit("--part search needs a CUDA GPU (--device cuda)")
    total = torch.cuda.get_device_properties(device).total_memory
    print(f"\n## longest trainable context on this GPU ({total / GB:.0f} GB), full models, bf16 autocast\n")
    print("| model | setting | longest L | tok/s there | peak GB there | 61k trains | 61k tok/s | 61k peak GB |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in CONFIGS:
        for ckpt in (False, True):
            model, opt = build(kind, "full", ckpt, device)

            def fits(L: int):
                try:
                    return measure(model, opt, kind, L, device, True, repeats)
                except torch.cuda.OutOfMemoryError:
                    opt.zero_grad(set_to_none=True)
                    gc.collect()
                    torch.cuda.empty_cache()
                    return None

            best, L, bad = None, 4096, None
            while L <= max_len:
                r = fits(L)
                if r is None:
                    bad = L
                    break
                best, L = r, L * 2
            lo = best["L"] if best else 0
            hi = bad if bad else lo
            while bad and hi - lo > 1024:
                mid = (lo + hi) // 2 // 1024 * 1024
                r = fits(mid)
                if r is None:
                    hi = mid
                else:
                    best, lo = r, mid
            target = fits(TARGET)
            name = "ckpt per block" if ckpt else "plain"
            b = best or {"L": 0, "tok_s": 0.0, "peak_gb": 0.0}
            t = target or {"tok_s": float("nan"), "peak_gb": float("nan")}
            print(f"| {kind} | {name} | {b['L']}{'+' if not bad else ''} | {b['tok_s']:.0f} | {b['peak_gb']:.1f} | "
                  f"{'yes' if target else 'no'} | {t['tok_s']:.0f} | {t['peak_gb']:.1f} |")
            model = opt = None  # free before the next kind
            gc.collect()
            torch.cuda.empty_cache()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--part", action="append", choices=["growth", "per-layer", "search"])
    p.add_argument("--lengths", default="1024,2048,4096,8192", help="growth part: comma-separated L")
    p.add_argument("--layer-length", type=int, default=1024, help="per-layer part: L")
    p.add_argument("--max-length", type=int, default=131072, help="search part: stop doubling here")
    p.add_argument("--repeats", type=int, default=2, help="timed steps per measurement (the fastest counts)")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    ns = p.parse_args()
    device = torch.device(ns.device)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    parts = ns.part or (["search", "per-layer"] if device.type == "cuda" else ["growth", "per-layer"])
    print(header(device))
    for part in parts:
        if part == "growth":
            part_growth(device, [int(x) for x in ns.lengths.split(",")], ns.repeats)
        elif part == "per-layer":
            part_per_layer(device, ns.layer_length)
        else:
            part_search(device, ns.max_length, ns.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
