"""The whole GPU path in one checked run (issue 16): ``make gpu-check`` (``ARGS=--dry-run`` on CPU).

Sections, each in its own child process (a CUDA error or an OOM in one never hides the others),
each under a wall-clock limit taken from one overall budget (default 8 minutes):

  env          GPU, driver, versions; mamba-ssm / causal-conv1d importable; the measured bf16
               matmul ceiling (8192^3) that MFU rows are read against
  attention    our Triton block-sparse kernel vs FlexAttention with the identical BlockMask vs
               dense SDPA (FlashAttention, every tile), forward+backward, bf16, L 8k-61k, tile
               densities 0.05-0.5 and a real phage-genome layout; TFLOP/s per computed tile,
               ours/Flex speed and ours/SDPA TFLOP/s (targets >= 1.3 at density <= 0.1 and
               >= 0.85). Each kernel is first checked against the fp32 reference.
  genome_step  one 61k-token training step (forward, backward, AdamW) of the ESM-2-650M genome
               model with activation checkpointing, on the Triton kernel and on Flex: time,
               peak memory (target: fits one 80 GB GPU)
  mixer        one BiMamba-S mixer (d_model 1536) vs LC-PLM's formulation: two weight-tied
               mamba-ssm ``Mamba`` calls when mamba-ssm imports (target <= 0.75 of their time),
               and always the same two-call formulation on our own modules and scan backend
  mlm          200 bf16 MLM steps of ``experiments/pretrain/small_gpu.yaml`` through
               ``lcplm.train.run.train``: the loss falls, tokens/s, model FLOP utilisation
  fsdp2        the same model through the FSDP2 strategy on one GPU: runs, loss falls, tokens/s
               against the single-device run
  pytest       ``pytest -m gpu`` (junit counts; failures listed)

Writes ``OUT/gpu_check.json`` (everything) and ``OUT/gpu_check.md`` (the rows for
benchmarks/RESULTS.md); ``--update-results`` also replaces the block between the gpu-check
markers in benchmarks/RESULTS.md. ``--dry-run`` runs every section on CPU at toy sizes (the
Triton interpreter for our kernel, eager Flex forward-only, the tiny model, pytest collection
only): it checks the code paths and the outputs, measures nothing, and is run in CI.

    python benchmarks/gpu_check.py [--dry-run] [--out runs/gpu_check] [--only attention,mlm]
        [--budget-s 480] [--fasta F ...] [--update-results]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SECTIONS = ("env", "attention", "genome_step", "mixer", "mlm", "fsdp2", "pytest")
# share of the overall budget each section may take at most (the rest rolls over)
SHARE = {"env": 0.04, "attention": 0.30, "genome_step": 0.15, "mixer": 0.08, "mlm": 0.22, "fsdp2": 0.10, "pytest": 0.35}
H100_BF16_DENSE_TFLOPS = 989.0  # datasheet dense bf16 (H100/H200 SXM); MFU is also given against the measured ceiling
RESULTS_BEGIN, RESULTS_END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"


# ============================================================================ child side


class Recorder:
    """One section's results, rewritten to OUT/<section>.json after every row (a killed
    child still leaves what it measured)."""

    def __init__(self, out: Path, section: str, dry: bool):
        self.path = out / f"{section}.json"
        self.data: dict[str, Any] = {"section": section, "dry_run": dry, "status": "running", "rows": [], "notes": [], "summary": {}}
        self.flush()

    def row(self, **kw: Any) -> None:
        self.data["rows"].append(kw)
        print("  " + ", ".join(f"{k}={_short(v)}" for k, v in kw.items()), flush=True)
        self.flush()

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        print(f"  note: {text}", flush=True)
        self.flush()

    def summary(self, **kw: Any) -> None:
        self.data["summary"].update(kw)
        self.flush()

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _device(dry: bool):
    import torch

    if dry:
        torch.set_num_threads(1)
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: run with --dry-run on CPU machines")
    return torch.device("cuda")


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def _bench_ms(fn: Callable[[], Any], dev, dry: bool) -> float:
    """GPU: triton's do_bench (median ms); dry run: one timed call after one warm-up."""
    if dry:
        fn()
        t = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - t)
    import triton

    return float(triton.testing.do_bench(fn, warmup=25, rep=100))


def _peak_mib(dev) -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else float("nan")


def _data_dir() -> Path:
    return Path(os.environ.get("LCPLM_DATA_DIR", REPO.parent / "shared" / "data"))


# ---------------------------------------------------------------------------- env


def section_env(rec: Recorder, dry: bool, args) -> None:
    import platform

    import torch

    sys.path.insert(0, str(HERE))
    from _env import header

    from lcplm_kernels.selective_scan import interface as scan_interface

    dev = _device(dry)
    rec.summary(header=header(dev), python=platform.python_version(), torch=torch.__version__)
    try:
        import triton

        rec.summary(triton=triton.__version__)
    except ImportError:
        rec.summary(triton=None)
    for mod in ("mamba_ssm", "causal_conv1d"):
        try:
            m = __import__(mod)
            rec.summary(**{mod: getattr(m, "__version__", "importable")})
        except Exception as e:  # a broken CUDA extension raises more than ImportError
            rec.summary(**{mod: f"not importable: {type(e).__name__}: {str(e)[:160]}"})
    rec.summary(mamba_scan_kernel=scan_interface.mamba_scan_fn() is not None, causal_conv1d_kernel=scan_interface.causal_conv1d_fn() is not None)
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(0)
        rec.summary(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                    multiprocessors=p.multi_processor_count, cuda=torch.version.cuda)
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            rec.summary(nvidia_smi=smi.stdout.strip())
        except (OSError, subprocess.TimeoutExpired) as e:
            rec.note(f"nvidia-smi: {e}")
    n = 256 if dry else 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    ms = _bench_ms(lambda: a @ b, dev, dry)
    rec.summary(matmul_bf16_tflops=2 * n**3 / (ms * 1e-3) / 1e12, matmul_n=n)
    rec.row(check="bf16 matmul ceiling", n=n, ms=ms, tflops=2 * n**3 / (ms * 1e-3) / 1e12)


# ---------------------------------------------------------------------------- attention


def section_attention(rec: Recorder, dry: bool, args) -> None:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(HERE / "ops"))
    from bench_block_sparse_attn import genome_case, random_density_case

    from lcplm_kernels.block_sparse_attn import block_sparse_attn, build_layout, flex, naive_block_sparse_attn

    dev = _device(dry)
    dtype = torch.float32 if dry else torch.bfloat16  # the interpreter's bf16 tl.dot is broken
    block = 128
    lengths = (384,) if dry else tuple(args.lengths)
    densities = (0.1, 0.5) if dry else (0.05, 0.1, 0.25, 0.5)
    H, D = (2, 32) if dry else (16, 64)

    # correctness first: a kernel that fails its check is not timed
    gen = torch.Generator().manual_seed(0)
    if dry:
        from lcplm_kernels.block_sparse_attn import window_allowed

        L0, pid0, allowed0 = 300, torch.repeat_interleave(torch.arange(6), 50)[None], window_allowed(6, 1)
    else:
        L0 = 4096
        pid0, allowed0, _ = genome_case(L0)
    lay0 = build_layout(pid0.to(dev), allowed0.to(dev), block, block)
    q, k, v = (torch.randn(1, H, L0, D, generator=gen).to(dev, dtype) for _ in range(3))
    want = naive_block_sparse_attn(q.float(), k.float(), v.float(), pid0.to(dev), allowed0.to(dev))
    same_dtype = naive_block_sparse_attn(q, k, v, pid0.to(dev), allowed0.to(dev), upcast=False).float()
    err_torch = (same_dtype - want).abs().max().item()
    ours_ok = flex_ok = False
    if not dry or os.environ.get("TRITON_INTERPRET") == "1":
        got = block_sparse_attn(q, k, v, lay0, backend="triton").float()
        err = (got - want).abs().max().item()
        ours_ok = err <= 2 * err_torch + 1e-5
        rec.row(check="ours vs fp32 reference", L=L0, err=err, torch_same_dtype_err=err_torch, ok=ours_ok)
    else:
        rec.note("TRITON_INTERPRET is not 1: our kernel cannot run on CPU, its rows are skipped")
    got = flex.flex_block_sparse_attn(q, k, v, flex.flex_block_mask(lay0), D**-0.5, flex.has_key(lay0)).float()
    err = (got - want).abs().max().item()
    flex_ok = err <= 2 * err_torch + 1e-5
    rec.row(check="Flex vs fp32 reference", L=L0, err=err, torch_same_dtype_err=err_torch, ok=flex_ok)
    rec.summary(ours_correct=ours_ok, flex_correct=flex_ok)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    def timed(attn, q, k, v, dout, backward=True):
        def fwd():
            with torch.no_grad():
                attn(q.detach(), k.detach(), v.detach())

        def fwd_bwd():
            q.grad = k.grad = v.grad = None
            attn(q, k, v).backward(dout)

        return _bench_ms(fwd, dev, dry), (_bench_ms(fwd_bwd, dev, dry) if backward else float("nan"))

    best_vs_flex, best_vs_sdpa = {}, {}
    for L in lengths:
        layouts = [(f"random {d}", *random_density_case(L, block, d)) for d in densities]
        if not dry:
            pid_g, allowed_g, gname = genome_case(L)
            layouts.append(("genome window w=2", pid_g, allowed_g))
        gen = torch.Generator().manual_seed(L)
        q, k, v, dout = (torch.randn(1, H, L, D, generator=gen).to(dev, dtype) for _ in range(4))
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        dense_flops = 4.0 * H * L * L * D

        def sdpa(a, b, c):
            if dev.type == "cuda":
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return F.scaled_dot_product_attention(a, b, c)
            return F.scaled_dot_product_attention(a, b, c)

        s_f, s_fb = timed(sdpa, q, k, v, dout)
        s_tf = (dense_flops / (s_f * 1e-3) / 1e12, 3.5 * dense_flops / (s_fb * 1e-3) / 1e12)
        rec.row(L=L, D=D, H=H, layout="dense (all tiles)", density=1.0, impl="SDPA flash", fwd_ms=s_f, fwd_bwd_ms=s_fb,
                fwd_tflops=s_tf[0], fwd_bwd_tflops=s_tf[1])
        for label, pid, allowed in layouts:
            layout = build_layout(pid.to(dev), allowed.to(dev), block, block)
            flops = 4.0 * H * layout.num_tiles * block * block * D
            bm, rows = flex.flex_block_mask(layout), flex.has_key(layout)
            flex_attn = lambda a, b, c: flex.flex_block_sparse_attn(a, b, c, bm, D**-0.5, rows)  # noqa: E731
            res = {}
            if ours_ok:
                res["ours"] = timed(lambda a, b, c: block_sparse_attn(a, b, c, layout, backend="triton"), q, k, v, dout)
            if flex_ok:
                try:
                    res["flex"] = timed(flex_attn, q, k, v, dout, backward=dev.type == "cuda")  # no CPU Flex backward
                except Exception as e:  # a Flex failure is a result, not a reason to stop
                    rec.note(f"Flex failed at L={L} {label}: {type(e).__name__}: {str(e)[:200]}")
            for impl, (f, fb) in res.items():
                tf = (flops / (f * 1e-3) / 1e12, 3.5 * flops / (fb * 1e-3) / 1e12)
                row = dict(L=L, D=D, H=H, layout=label, density=round(layout.density, 4), impl=impl, fwd_ms=f, fwd_bwd_ms=fb,
                           fwd_tflops=tf[0], fwd_bwd_tflops=tf[1], tflops_vs_sdpa=tf[1] / s_tf[1])
                if impl == "ours" and "flex" in res:
                    row["speed_vs_flex_fwd"] = res["flex"][0] / f
                    row["speed_vs_flex_fwd_bwd"] = res["flex"][1] / fb
                    key = "density<=0.1" if layout.density <= 0.1 else "density>0.1"
                    best_vs_flex.setdefault(key, []).append(row["speed_vs_flex_fwd_bwd"])
                if impl == "ours":
                    best_vs_sdpa.setdefault("all", []).append(row["tflops_vs_sdpa"])
                rec.row(**row)
        del q, k, v, dout
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    rec.summary(
        ours_vs_flex_fwd_bwd_min_at_density_le_0_1=min(best_vs_flex.get("density<=0.1", [float("nan")])),
        ours_vs_flex_fwd_bwd_all=best_vs_flex,
        ours_tflops_vs_sdpa_min=min(best_vs_sdpa.get("all", [float("nan")])),
        ours_tflops_vs_sdpa_median=sorted(best_vs_sdpa.get("all", [float("nan")]))[len(best_vs_sdpa.get("all", [0])) // 2],
    )


# ---------------------------------------------------------------------------- genome step


def _genome_window(tokens: int):
    """(input_ids, pid, allowed, description) of one window: real phage proteins with the
    gene-neighbourhood PPI source (as esm2_650m_genome.yaml), synthetic when data is absent."""
    import torch

    from lcplm.data.genomes import Genome, genome_windows, read_genbank
    from lcplm.data.pair_sources import PairSourceConfig, build_pair_source

    gbk = _data_dir() / "genomes" / "pharokka_meta_phages.gbk"
    if gbk.is_file():
        genomes = read_genbank(gbk)
        proteins = [p for g in genomes for p in g.proteins]
        w = genome_windows(Genome("concat", proteins), tokens)[0]
        src = build_pair_source(PairSourceConfig("ppi", neighbourhood_max_gap=50), genomes)
        allowed = src.allowed(w)
        return w.input_ids, w.pid, allowed, f"{len(w.proteins)} real phage proteins ({gbk.name}), gene-neighbourhood pairs"
    gen = torch.Generator().manual_seed(0)
    n = max(2, tokens // 200)
    pid = torch.sort(torch.randint(0, n, (tokens,), generator=gen)).values
    from lcplm_kernels.block_sparse_attn import window_allowed

    return torch.randint(4, 24, (tokens,), generator=gen), pid, window_allowed(n, 1), f"synthetic {n} proteins, window w=1"


def section_genome_step(rec: Recorder, dry: bool, args) -> None:
    import torch

    from lcplm.config import PretrainConfig, load_config
    from lcplm.data.masking import mask_tokens
    from lcplm.models.sparse_transformer import SparseGenomeLM
    from lcplm.train.strategies import apply_activation_checkpointing

    dev = _device(dry)
    cfg = load_config(REPO / "experiments" / "genome" / "esm2_650m_genome.yaml", ["run.init_from=null"], schema=PretrainConfig).model
    if dry:
        cfg.num_layers, cfg.hidden, cfg.heads, cfg.ffn = 2, 64, 2, 128
    tokens = 640 if dry else 61_000
    ids, pid, allowed, what = _genome_window(tokens)
    rec.summary(window=what, tokens=int(ids.numel()), proteins=int(allowed.shape[0]),
                allowed_pair_share=float(allowed.float().mean()), layers=cfg.num_layers, hidden=cfg.hidden)
    gen = torch.Generator().manual_seed(0)
    masked_ids, labels = mask_tokens(ids[None], gen)
    batch = {
        "input_ids": masked_ids.to(dev),
        "lengths": torch.tensor([ids.numel()], device=dev),
        "pid": pid[None].to(dev),
        "allowed": allowed[None].to(dev),
    }
    labels = labels.to(dev)
    backends_to_run = ("kernel", "flex") if not dry else (("kernel", "flex") if os.environ.get("TRITON_INTERPRET") == "1" else ("flex",))
    for backend in backends_to_run:
        if dry and backend == "flex":
            cfg.attention_backend = "flex"
            torch.manual_seed(0)
            with torch.no_grad():  # CPU Flex has no backward: a forward shows the path runs
                SparseGenomeLM(cfg).eval()(**batch)
            rec.row(backend=backend, forward_only=True, ok=True)
            continue
        cfg.attention_backend = backend
        torch.manual_seed(0)
        model = SparseGenomeLM(cfg).to(dev)
        apply_activation_checkpointing(model, SparseGenomeLM.block_classes)  # as trainer.activation_checkpointing does
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=dev.type == "cuda")
        n_params = sum(p.numel() for p in model.parameters())

        def step():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                logits = model(**batch)
            loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        try:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            loss0 = float(step())  # compiles Triton / Flex kernels, allocates optimizer state
            _sync(dev)
            first = time.perf_counter() - t
            times = []
            for _ in range(1 if dry else 3):
                t = time.perf_counter()
                loss = step()
                _sync(dev)
                times.append(time.perf_counter() - t)
            peak = _peak_mib(dev)
            rec.row(backend=backend, params_m=n_params / 1e6, first_step_s=first, step_s=min(times), peak_gib=peak / 1024,
                    fits_80gb=bool(peak / 1024 < 80 * 0.93), loss_first=loss0, loss_last=float(loss))
        except torch.cuda.OutOfMemoryError as e:
            rec.row(backend=backend, oom=True, error=str(e)[:200])
        model = opt = None  # free the GPU memory before the next backend
        if dev.type == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- mixer


def section_mixer(rec: Recorder, dry: bool, args) -> None:
    import torch

    sys.path.insert(0, str(HERE / "model"))
    from bimamba_vs_lcplm import lcplm_formulation

    from lcplm_kernels.selective_scan import interface as scan_interface
    from lcplm.models.bimamba import BiMambaConfig, BiMambaMixer, SequenceLayout

    dev = _device(dry)
    d_model = 64 if dry else 1536
    lengths = (256,) if dry else (2048, 8192, 32768, 61000)
    have_mamba = dev.type == "cuda" and scan_interface.mamba_scan_fn() is not None
    backend = "cuda" if have_mamba else ("chunked" if dev.type == "cuda" else "native")
    if dry and scan_interface.native_scan_unavailable() is not None:
        backend = "chunked"
    rec.summary(d_model=d_model, scan_backend=backend, mamba_ssm=have_mamba,
                causal_conv1d=dev.type == "cuda" and scan_interface.causal_conv1d_fn() is not None)
    torch.manual_seed(0)
    cfg = BiMambaConfig(d_model=d_model, n_layer=48, scan_backend=backend)
    mixer = BiMambaMixer(cfg).to(dev)
    sides: dict[str, Callable] = {}
    layouts: dict[int, Any] = {}

    def layout_for(length):
        if length not in layouts:
            layouts[length] = SequenceLayout.build(torch.zeros(1, length, dtype=torch.long, device=dev))
        return layouts[length]

    sides["ours"] = lambda x: mixer(x, layout_for(x.shape[1]))
    sides["two calls, our modules"] = lambda x: lcplm_formulation(mixer, x, layout_for(x.shape[1]))
    if have_mamba:
        from mamba_ssm.modules.mamba_simple import Mamba

        from lcplm.models import convert

        fwd, rev = Mamba(d_model=d_model).to(dev), Mamba(d_model=d_model).to(dev)
        rev.in_proj.weight = fwd.in_proj.weight
        rev.out_proj.weight = fwd.out_proj.weight
        one = BiMambaConfig(d_model=d_model, n_layer=1)
        state = {f"backbone.layers.0.mixer.mamba_{d}.{k}": v for d, m in (("fwd", fwd), ("rev", rev)) for k, v in m.state_dict().items()}
        state["backbone.embedding.weight"] = torch.zeros(one.vocab_size, d_model)
        state["backbone.layers.0.norm.weight"] = torch.ones(d_model)
        state["backbone.norm_f.weight"] = torch.ones(d_model)
        state["lm_head.weight"] = torch.zeros(one.vocab_size, d_model)
        prefix = "backbone.layers.0.mixer."
        mixer.load_state_dict({k[len(prefix):]: v for k, v in convert.lcplm_state_to_ours(state, one).items() if k.startswith(prefix)})
        sides["mamba-ssm Mamba x2 (LC-PLM)"] = lambda x: fwd(x) + rev(x.flip(1)).flip(1)
        x = torch.randn(1, 2048, d_model, device=dev)
        with torch.no_grad():
            diff = (sides["ours"](x) - sides["mamba-ssm Mamba x2 (LC-PLM)"](x)).abs().max().item()
        rec.row(check="ours vs mamba-ssm x2, fp32", max_abs_diff=diff, ok=diff < 1e-3)
    else:
        rec.note("mamba-ssm not importable here: only the two-call formulation on our own modules is compared")

    def step(fn, x):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            out = fn(x)
        out.float().square().mean().backward()

    ratios = []
    for length in lengths:
        x = torch.randn(1, length, d_model, device=dev, requires_grad=True)
        res = {}
        for name, fn in sides.items():
            try:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                ms = _bench_ms(lambda: step(fn, x), dev, dry)
                mem = (torch.cuda.max_memory_allocated() - base) / 2**20 if dev.type == "cuda" else float("nan")
                res[name] = (ms, mem)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                res[name] = (float("nan"), float("nan"))
        ref_name = "mamba-ssm Mamba x2 (LC-PLM)" if have_mamba else "two calls, our modules"
        for name, (ms, mem) in res.items():
            row = dict(L=length, impl=name, fwd_bwd_ms=ms, peak_mib=mem)
            if name == "ours":
                row["time_vs_lcplm"] = ms / res[ref_name][0]
                row["mem_vs_lcplm"] = mem / res[ref_name][1] if res[ref_name][1] else float("nan")
                row["time_vs_two_calls_same_scan"] = ms / res["two calls, our modules"][0]
                ratios.append(row["time_vs_lcplm"])
            rec.row(**row)
    rec.summary(ours_time_vs_lcplm_max=max(ratios) if ratios else float("nan"), compared_against=ref_name)


# ---------------------------------------------------------------------------- training (mlm, fsdp2)


def _fasta_paths(args, out: Path) -> tuple[list[str], str]:
    if args.fasta:
        return list(args.fasta), "given"
    d = _data_dir() / "ppi" / "dscript"
    found = [str(d / n) for n in ("yeast.fasta", "ecoli.fasta") if (d / n).is_file()]
    if found:
        return found, "shared ppi/dscript proteomes"
    import random

    rnd = random.Random(0)
    path = out / "synthetic.fasta"
    with open(path, "w") as f:
        for i in range(400):
            f.write(f">p{i}\n{''.join(rnd.choice('ACDEFGHIKLMNPQRSTVWY') for _ in range(rnd.randint(50, 400)))}\n")
    return [str(path)], "synthetic (no shared data)"


def _bimamba_flops_per_token(cfg) -> float:
    """Matmul FLOPs per token, forward + backward (x3), of a BiMamba-S LM: in/out projections
    once, x_proj and dt_proj per direction, the LM head. Scans and convs are elementwise and
    not counted (the usual MFU convention)."""
    d, e, n, r, v = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.resolved_dt_rank, cfg.vocab_size
    per_layer = 2 * (d * 2 * e + e * d) + 2 * 2 * (e * (r + 2 * n) + r * e)
    return 3.0 * (cfg.n_layer * per_layer + 2 * d * v)


def _train_section(rec: Recorder, dry: bool, args, out: Path, fsdp2: bool) -> None:
    from lightning.pytorch.callbacks import Callback

    from lcplm.config import PretrainConfig, load_config
    from lcplm.train.run import train

    dev = _device(dry)
    paths, what = _fasta_paths(args, out)
    steps = (3 if fsdp2 else 5) if dry else (40 if fsdp2 else args.mlm_steps)
    exp = REPO / "experiments" / "pretrain" / ("tiny.yaml" if dry else "small_gpu.yaml")
    name = "fsdp2" if fsdp2 else "mlm"
    overrides = [
        f"data.path=[{','.join(paths)}]", f"data.cache_dir={out / 'cache'}", f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}", "trainer.limit_val_batches=4", "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1", f"optim.warmup_steps={max(1, steps // 10)}", f"run.out_dir={out / 'runs'}",
        f"run.name={name}", f"run.save_every_n_steps={steps}", "run.overwrite=true",
    ]
    if dry:
        overrides += ["data.max_tokens=2048", "data.num_workers=0", "trainer.accelerator=cpu", "trainer.num_threads=1"]
    else:
        overrides += ["data.num_workers=4"]
    if fsdp2:
        overrides += ["trainer.strategy=fsdp2", "trainer.devices=1", "trainer.activation_checkpointing=true"]
    cfg = load_config(exp, overrides, schema=PretrainConfig)
    rec.summary(experiment=str(exp.relative_to(REPO)), data=what, steps=steps, max_tokens=cfg.data.max_tokens,
                strategy=cfg.trainer.strategy, precision=cfg.trainer.precision)

    class StepLog(Callback):
        def __init__(self):
            self.t0, self.rows = None, []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            _sync(dev)
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            _sync(dev)
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            tokens = int((batch["input_ids"] != 1).sum())  # real tokens (<pad> = 1)
            self.rows.append((time.perf_counter() - self.t0, float(loss), tokens))

    log = StepLog()
    t = time.perf_counter()
    results = train(cfg, extra_callbacks=[log])
    wall = time.perf_counter() - t
    rows = log.rows
    skip = min(len(rows) // 5, 20)  # compilation, autotuning and the first batches
    timed = rows[skip:]
    secs, toks = sum(r[0] for r in timed), sum(r[2] for r in timed)
    first, last = rows[: max(1, len(rows) // 10)], rows[-max(1, len(rows) // 10):]
    loss_first = sum(r[1] for r in first) / len(first)
    loss_last = sum(r[1] for r in last) / len(last)
    tok_s = toks / secs if secs else float("nan")
    flops = _bimamba_flops_per_token(cfg.model)
    summary = dict(
        n_parameters=results["n_parameters"], wall_s=wall, train_time_s=results["train_time_s"], tokens_per_s=tok_s,
        step_ms=1e3 * secs / max(1, len(timed)), loss_first=loss_first, loss_last=loss_last, loss_falls=loss_last < loss_first,
        val_loss=results["val_loss"], model_tflops=flops * tok_s / 1e12,
        mfu_vs_989=flops * tok_s / 1e12 / H100_BF16_DENSE_TFLOPS if dev.type == "cuda" else float("nan"),
        peak_gib=_peak_mib(dev) / 1024,
    )
    rec.summary(**summary)
    for i in range(0, len(rows), max(1, len(rows) // 10)):
        rec.row(step=i, step_s=rows[i][0], loss=rows[i][1], tokens=rows[i][2])
    if not summary["loss_falls"]:
        rec.note(f"loss did not fall: first {loss_first:.4f}, last {loss_last:.4f}")


def section_mlm(rec: Recorder, dry: bool, args) -> None:
    _train_section(rec, dry, args, Path(args.out), fsdp2=False)


def section_fsdp2(rec: Recorder, dry: bool, args) -> None:
    _train_section(rec, dry, args, Path(args.out), fsdp2=True)
    single = Path(args.out) / "mlm.json"
    if single.is_file():
        s = json.loads(single.read_text()).get("summary", {})
        if s.get("tokens_per_s"):
            rec.summary(tokens_per_s_vs_single_device=rec.data["summary"]["tokens_per_s"] / s["tokens_per_s"])


# ---------------------------------------------------------------------------- pytest


def section_pytest(rec: Recorder, dry: bool, args) -> None:
    import xml.etree.ElementTree as ET

    junit = Path(args.out) / "pytest_gpu.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", "-o", "addopts="]
    if dry:
        cmd.append("--collect-only")
    else:
        cmd += ["--timeout", "300"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    tail = (res.stdout + res.stderr)[-4000:]
    rec.summary(returncode=res.returncode, command=" ".join(cmd[1:]), tail=tail)
    if dry:
        n = sum(1 for line in res.stdout.splitlines() if "::" in line)
        rec.summary(collected=n)
        if res.returncode not in (0, 5) or n == 0:
            raise RuntimeError(f"pytest -m gpu --collect-only failed (exit {res.returncode}):\n{tail}")
        return
    if junit.is_file():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        rec.summary(**counts, passed=counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"])
        for case in suite.iter("testcase"):
            for kind in ("failure", "error", "skipped"):
                el = case.find(kind)
                if el is not None:
                    rec.row(test=f"{case.get('classname')}::{case.get('name')}", outcome=kind, message=(el.get("message") or "")[:300])


CHILDREN = {name: globals()[f"section_{name}"] for name in SECTIONS}


def run_child(section: str, args) -> int:
    out = Path(args.out)
    rec = Recorder(out, section, args.dry_run)
    try:
        CHILDREN[section](rec, args.dry_run, args)
        rec.data["status"] = "ok"
        return 0
    except BaseException as e:  # noqa: BLE001 - the parent reports any failure of a section
        rec.data["status"] = "failed"
        rec.data["error"] = f"{type(e).__name__}: {e}"
        rec.data["traceback"] = traceback.format_exc()[-6000:]
        print(rec.data["traceback"], file=sys.stderr, flush=True)
        return 1
    finally:
        rec.flush()


# ============================================================================ parent side


def run_sections(args) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [s for s in SECTIONS if not args.only or s in args.only]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.dry_run:
        env.setdefault("TRITON_INTERPRET", "1")
        env.setdefault("CUDA_VISIBLE_DEVICES", "")
    combined_path = out / "gpu_check.json"
    report: dict[str, Any] = json.loads(combined_path.read_text()) if args.merge and combined_path.is_file() else {"sections": {}}
    report.update(dry_run=args.dry_run, budget_s=args.budget_s)
    start = time.time()
    for i, section in enumerate(chosen):
        left = args.budget_s - (time.time() - start)
        # a section may use its share plus whatever earlier sections left unused
        later = sum(SHARE[s] for s in chosen[i + 1:])
        limit = max(10.0, left - later * args.budget_s) if left > 10 else 0
        if limit <= 0:
            report["sections"][section] = {"section": section, "status": "skipped", "error": "overall budget spent"}
            continue
        print(f"== {section} (limit {limit:.0f} s)", flush=True)
        t = time.time()
        cmd = [sys.executable, __file__, "--child", section, "--out", str(out), *(["--dry-run"] if args.dry_run else []),
               *sum((["--fasta", f] for f in args.fasta or []), []), "--mlm-steps", str(args.mlm_steps),
               "--lengths", *map(str, args.lengths)]
        try:
            rc = subprocess.run(cmd, cwd=REPO, env=env, timeout=limit).returncode
            timed_out = False
        except subprocess.TimeoutExpired:
            rc, timed_out = None, True
        path = out / f"{section}.json"
        data = json.loads(path.read_text()) if path.is_file() else {"section": section, "rows": [], "summary": {}}
        if timed_out:
            data["status"] = "timeout"
            data["error"] = f"killed after {limit:.0f} s (rows above were measured before)"
        elif rc != 0 and data.get("status") == "running":
            data["status"] = "failed"
            data["error"] = f"child exited {rc}"
        data["wall_s"] = round(time.time() - t, 1)
        report["sections"][section] = data
        print(f"== {section}: {data['status']} in {data['wall_s']} s", flush=True)
        combined_path.write_text(json.dumps(report, indent=1, default=str))
    report["wall_s"] = round(time.time() - start, 1)
    combined_path.write_text(json.dumps(report, indent=1, default=str))
    return report


def _f(x: Any, spec: str = ".2f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def render_markdown(report: dict[str, Any]) -> str:
    """The rows for benchmarks/RESULTS.md, from the combined report."""
    S = report["sections"]
    lines = []
    env = S.get("env", {}).get("summary", {})
    lines.append(f"Machine: {env.get('gpu', 'n/a')} ({env.get('memory_gib', '?')} GiB, {env.get('multiprocessors', '?')} SMs), "
                 f"CUDA {env.get('cuda', '?')}, torch {env.get('torch', '?')}, triton {env.get('triton', '?')}, "
                 f"mamba-ssm {env.get('mamba_ssm', '?')}, causal-conv1d {env.get('causal_conv1d', '?')}; "
                 f"measured bf16 matmul ceiling {_f(env.get('matmul_bf16_tflops'), '.0f')} TFLOP/s "
                 f"(n={env.get('matmul_n', '?')}).{' DRY RUN: no numbers below are measurements.' if report.get('dry_run') else ''}")
    lines.append("")
    lines.append("| section | status | wall s |")
    lines.append("|---|---|---:|")
    for name in SECTIONS:
        if name in S:
            lines.append(f"| {name} | {S[name].get('status')}{': ' + S[name]['error'][:120] if S[name].get('error') else ''} | {_f(S[name].get('wall_s'), '.0f')} |")
    att = S.get("attention")
    if att:
        lines += ["", "**Block-sparse attention** (bf16, B=1, fwd+bwd; TFLOP/s per computed tile, fwd+bwd = 3.5x fwd FLOPs)", "",
                  "| L | layout | density | impl | fwd ms | fwd+bwd ms | fwd+bwd TFLOP/s | ours / Flex speed (fwd+bwd) | TFLOP/s vs dense SDPA |",
                  "|---:|---|---:|---|---:|---:|---:|---:|---:|"]
        for r in att.get("rows", []):
            if "impl" in r:
                lines.append(f"| {r['L']} | {r['layout']} | {_f(r['density'], '.3f')} | {r['impl']} | {_f(r['fwd_ms'])} | {_f(r['fwd_bwd_ms'])} "
                             f"| {_f(r['fwd_bwd_tflops'], '.0f')} | {_f(r.get('speed_vs_flex_fwd_bwd'))} | {_f(r.get('tflops_vs_sdpa'))} |")
    g = S.get("genome_step")
    if g:
        s = g.get("summary", {})
        lines += ["", f"**Genome step** ({s.get('layers')} layers x {s.get('hidden')}, {s.get('tokens')} tokens, {s.get('window')}; "
                  "activation checkpointing, bf16 autocast, AdamW)", "",
                  "| attention | params (M) | first step s | step s | peak GiB | fits 80 GB |", "|---|---:|---:|---:|---:|---|"]
        for r in g.get("rows", []):
            if "step_s" in r:
                lines.append(f"| {r['backend']} | {_f(r['params_m'], '.0f')} | {_f(r['first_step_s'])} | {_f(r['step_s'])} | {_f(r['peak_gib'], '.1f')} | {r['fits_80gb']} |")
            elif r.get("oom"):
                lines.append(f"| {r['backend']} | | | | OOM | False |")
    m = S.get("mixer")
    if m:
        s = m.get("summary", {})
        lines += ["", f"**BiMamba-S mixer vs LC-PLM's formulation** (d_model {s.get('d_model')}, batch 1, bf16 autocast, fwd+bwd; "
                  f"scan backend {s.get('scan_backend')}, compared against {s.get('compared_against')})", "",
                  "| L | impl | fwd+bwd ms | peak MiB | ours / LC-PLM time | ours / LC-PLM memory |", "|---:|---|---:|---:|---:|---:|"]
        for r in m.get("rows", []):
            if "impl" in r:
                lines.append(f"| {r['L']} | {r['impl']} | {_f(r['fwd_bwd_ms'])} | {_f(r['peak_mib'], '.0f')} | {_f(r.get('time_vs_lcplm'), '.3f')} | {_f(r.get('mem_vs_lcplm'), '.3f')} |")
    for name, title in (("mlm", "MLM training"), ("fsdp2", "FSDP2 on one GPU")):
        t = S.get(name)
        if t:
            s = t.get("summary", {})
            lines += ["", f"**{title}** ({s.get('experiment')}, {s.get('steps')} steps, {s.get('max_tokens')} tokens per step, {s.get('data')}): "
                      f"{_f(s.get('n_parameters', 0) / 1e6, '.1f')}M parameters; loss {_f(s.get('loss_first'), '.3f')} -> {_f(s.get('loss_last'), '.3f')}; "
                      f"{_f(s.get('tokens_per_s'), ',.0f')} tokens/s ({_f(s.get('step_ms'), '.0f')} ms/step); model {_f(s.get('model_tflops'), '.0f')} TFLOP/s, "
                      f"MFU {_f(100 * s['mfu_vs_989'] if isinstance(s.get('mfu_vs_989'), float) else None, '.1f')}% of 989; peak {_f(s.get('peak_gib'), '.1f')} GiB"
                      + (f"; tokens/s vs single device {_f(s.get('tokens_per_s_vs_single_device'))}" if name == "fsdp2" else "")]
    p = S.get("pytest")
    if p:
        s = p.get("summary", {})
        if "tests" in s:
            lines += ["", f"**pytest -m gpu**: {s['passed']} passed, {s['failures']} failed, {s['errors']} errors, {s['skipped']} skipped"]
            for r in p.get("rows", []):
                if r.get("outcome") in ("failure", "error"):
                    lines.append(f"- {r['outcome']}: `{r['test']}`: {r['message'][:200]}")
        elif "collected" in s:
            lines += ["", f"**pytest -m gpu**: collection only (dry run), {s['collected']} tests"]
    return "\n".join(lines) + "\n"


def update_results(md: str, path: Path) -> None:
    text = path.read_text()
    block = f"{RESULTS_BEGIN}\n{md}{RESULTS_END}"
    if RESULTS_BEGIN in text and RESULTS_END in text:
        pre, rest = text.split(RESULTS_BEGIN, 1)
        post = rest.split(RESULTS_END, 1)[1]
        text = pre + block + post
    else:
        text = text.rstrip() + "\n\n## GPU check (`make gpu-check`)\n\n" + block + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: check every code path, measure nothing")
    ap.add_argument("--out", default=str(REPO / "runs" / "gpu_check"), help="output folder (default runs/gpu_check)")
    ap.add_argument("--only", type=lambda s: [x.strip() for x in s.split(",") if x.strip()], help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--budget-s", type=float, default=480.0, help="overall wall-clock budget (default 480 s)")
    ap.add_argument("--merge", action="store_true", help="keep sections of an earlier gpu_check.json in --out")
    ap.add_argument("--fasta", action="append", help="FASTA for the mlm/fsdp2 sections (default: shared ppi/dscript proteomes)")
    ap.add_argument("--mlm-steps", type=int, default=200)
    ap.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 61440], help="attention lengths")
    ap.add_argument("--update-results", action="store_true", help="write the rows into benchmarks/RESULTS.md")
    ap.add_argument("--child", choices=SECTIONS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return run_child(args.child, args)
    unknown = [s for s in args.only or [] if s not in SECTIONS]
    if unknown:
        print(f"gpu-check: unknown section(s) {unknown}; choose from {list(SECTIONS)}", file=sys.stderr)
        return 2
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu-check: no CUDA GPU visible; on CPU machines run `make gpu-check ARGS=--dry-run`", file=sys.stderr)
            return 2
    report = run_sections(args)
    md = render_markdown(report)
    out = Path(args.out)
    (out / "gpu_check.md").write_text(md)
    print("\n" + md)
    if args.update_results:
        update_results(md, HERE / "RESULTS.md")
    bad = [n for n, s in report["sections"].items() if s.get("status") != "ok"]
    print(f"gpu-check: {len(report['sections']) - len(bad)} sections ok" + (f"; not ok: {', '.join(bad)}" if bad else "")
          + f"; {out / 'gpu_check.json'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
