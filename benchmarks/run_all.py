"""Run every benchmark script in turn (`make bench`); each prints its own table of ratios.

Each script measures the implementations it compares side by side in one process and prints
the machine, versions and git revision; this runner only sequences them and reports which
ones failed, so one broken benchmark never hides the others' numbers. Pass script names (e.g.
`scan_cpu walks`) to run a subset; extra flags after `--` go to every script.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    HERE / "data" / "packing.py",
    HERE / "data" / "walks.py",
    HERE / "model" / "scan_cpu.py",
    HERE / "model" / "bimamba_vs_lcplm.py",
    HERE / "model" / "embed_vs_esm2.py",
    HERE / "model" / "context_length.py",
    HERE / "model" / "genome_memory.py",
    HERE / "model" / "variants_speed.py",
    HERE / "model" / "embed_memory.py",
    HERE / "ops" / "bench_block_sparse_attn.py",
]


def main(argv: list[str]) -> int:
    names, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    unknown = [n for n in names if n not in {s.stem for s in SCRIPTS}]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {[s.stem for s in SCRIPTS]}", file=sys.stderr)
        return 2
    chosen = [s for s in SCRIPTS if not names or s.stem in names]
    failed = []
    for script in chosen:
        print(f"\n===== {script.relative_to(HERE.parent)} =====", flush=True)
        t0 = time.time()
        rc = subprocess.call([sys.executable, str(script), *extra])
        print(f"----- {script.stem}: exit {rc} in {time.time() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(script.stem)
    if failed:
        print(f"\nbenchmarks that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
