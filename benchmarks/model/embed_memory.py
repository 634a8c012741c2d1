"""``lcplm embed`` memory (issue 15 item 8): peak RSS while embedding a synthetic FASTA of 100,000
short proteins with the tiny BiMamba-S (d_model 64, 2 layers, random weights), mean and
per-residue outputs, printed after 10k, 50k and 100k records.

Two ways, each in a fresh child process so that its peak RSS (VmHWM) is its own:
- ``streaming``: :func:`lcplm.embed.embed_fasta` as ``lcplm embed`` runs it now (records read as
  they are embedded, each chunk's outputs written as a part, the final safetensors file assembled
  part by part); the peak is read when the 10k-th, 50k-th, 100k-th record is written, and after
  the final file is assembled;
- ``in memory``: what ``lcplm embed`` did before: the whole FASTA read into a list, every mean and
  per-residue output held until one safetensors blob is made (:func:`lcplm.embed.embed_sequences`
  on the first 10k, 50k, 100k records, then ``safetensors.torch.save``); the peak after each.

    .venv/bin/python benchmarks/model/embed_memory.py [--records 100000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for the shared header
from _env import header  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

PRELUDE = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[4]))

def mib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024, 1)
"""

STREAMING = PRELUDE + r"""
from lcplm.embed import embed_fasta
fasta, ckpt, out = sys.argv[1:4]
marks = [int(x) for x in sys.argv[5].split(",")]
rows, t0 = [], time.time()

def on_chunk(done):
    while marks and done >= marks[0]:
        rows.append(dict(records=marks.pop(0), peak_mib=mib("VmHWM"), rss_mib=mib("VmRSS"), seconds=round(time.time() - t0, 1)))

embed_fasta(ckpt, fasta, out, include=["mean", "per_tok"], device="cpu", progress=False, on_chunk=on_chunk)
rows.append(dict(records="final file", peak_mib=mib("VmHWM"), rss_mib=mib("VmRSS"), seconds=round(time.time() - t0, 1)))
print(json.dumps(rows))
"""

IN_MEMORY = PRELUDE + r"""
from safetensors.torch import save
from lcplm.data.fasta import iter_fasta
from lcplm.embed import embed_sequences, load_encoder
fasta, ckpt, out = sys.argv[1:4]
marks = [int(x) for x in sys.argv[5].split(",")]
records = list(iter_fasta(fasta))
model = load_encoder(ckpt)[0]
rows, t0 = [], time.time()
for n in marks:
    part = records[:n]
    res = embed_sequences(model, [r.sequence for r in part], [r.id for r in part], per_residue=True)
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor([r.shape[0] for r in res.residues]), 0)
    blob = save({"mean": res.mean, "residues": torch.cat(res.residues), "offsets": offsets})
    rows.append(dict(records=n, peak_mib=mib("VmHWM"), rss_mib=mib("VmRSS"), seconds=round(time.time() - t0, 1),
                     output_mib=round(len(blob) / 2**20, 1)))
    del res, blob
print(json.dumps(rows))
"""


def child(code: str, fasta: Path, ckpt: Path, out: Path, threads: int, marks: list[int]) -> list[dict]:
    r = subprocess.run([sys.executable, "-c", code, str(fasta), str(ckpt), str(out), str(threads),
                        ",".join(map(str, marks))], capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"child failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=1)
    ns = p.parse_args()
    marks = sorted({ns.records // 10, ns.records // 2, ns.records})
    torch.set_num_threads(ns.threads)
    print(header())
    from lcplm.models.bimamba import BiMambaConfig, BiMambaLM
    from lcplm.models.io import save_pretrained

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        aa = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
        lengths = rng.integers(20, 61, ns.records)
        with open(tmp / "proteins.fa", "w") as f:
            for i, n in enumerate(lengths):
                f.write(f">synthetic_{i:06d}\n{''.join(rng.choice(aa, n))}\n")
        torch.manual_seed(0)
        save_pretrained(BiMambaLM(BiMambaConfig(d_model=64, n_layer=2, d_state=16)), tmp / "tiny", modeling=False)
        print(f"\n{ns.records:,} proteins of 20-60 residues ({int(lengths.sum()):,} residues), tiny BiMamba-S "
              f"(d_model 64), mean + per-residue fp32 outputs, {ns.threads} thread(s)")
        streaming = child(STREAMING, tmp / "proteins.fa", tmp / "tiny", tmp / "out", ns.threads, marks)
        in_memory = child(IN_MEMORY, tmp / "proteins.fa", tmp / "tiny", tmp / "unused", ns.threads, marks)
        final_mib = (tmp / "out" / "embeddings.safetensors").stat().st_size / 2**20
    print("\n| records | streaming peak RSS MiB | streaming RSS MiB | in-memory peak RSS MiB | in-memory output MiB |")
    print("|---:|---:|---:|---:|---:|")
    mem = {r["records"]: r for r in in_memory}
    for r in streaming:
        m = mem.get(r["records"])
        print(f"| {r['records'] if isinstance(r['records'], str) else format(r['records'], ',')} | {r['peak_mib']:,} | "
              f"{r['rss_mib']:,} | {m['peak_mib'] if m else '-'} | {m['output_mib'] if m else '-'} |")
    first, last = streaming[0], streaming[-1]
    print(f"\nstreaming: peak at {last['records']} / peak at {first['records']:,} records = "
          f"x{last['peak_mib'] / first['peak_mib']:.2f} (output file {final_mib:,.0f} MiB; "
          f"{streaming[-2]['seconds']} s to embed, {last['seconds']} s with the final file)")
    print(f"in memory: peak at {in_memory[-1]['records']:,} / peak at {in_memory[0]['records']:,} records = "
          f"x{in_memory[-1]['peak_mib'] / in_memory[0]['peak_mib']:.2f}")
    print(f"at {ns.records:,} records: in-memory peak / streaming peak = x{in_memory[-1]['peak_mib'] / last['peak_mib']:.2f}")


if __name__ == "__main__":
    main()
