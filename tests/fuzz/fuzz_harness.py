"""The fuzz harness: generated inputs, each with its expected outcome, run through the readers.

A *format* is one generator function registered with :func:`fuzz_format`. The generator gets a
seeded ``random.Random`` and returns a :class:`Case`: the files to write, and what must happen,
decided by the generator itself from what it built (an oracle independent of lcplm's code):
either an observation the reader must return (``expect``), or an error whose single line must
contain ``error`` fragments (the record, line or key). The decorator also names how to read the
input in-process and, optionally, through the command line::

    @fuzz_format("dms", read=lambda path, opts: observe(read_dms(path)),
                 cli=lambda path, opts: ["data", "stats", "--format", "dms", path], cli_view=..., parse_cli=...)
    def dms_case(rng: random.Random) -> Case:
        ...

Every case runs in one of three modes: ``inprocess`` (the reader functions), ``cli`` (the
``lcplm`` entry point called in this process, stdout/stderr captured) and ``subprocess``
(``python -m lcplm ...``). Whatever the mode, a case passes only when it ends in the expected
observation, or in exit status 2 / a :class:`~lcplm.errors.UserError` of one line containing the
fragments (and the input's name), within the time bound: a traceback, a hang, a wrong record or a
wrong length fails it. Inputs are given as a file, through a pipe (``/dev/fd/N``), or as a FIFO
without a writer (which must fail with "no data arrived" after ``LCPLM_FIFO_TIMEOUT``).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[2]
FIFO_TIMEOUT_S = 0.3  # LCPLM_FIFO_TIMEOUT while fuzzing: a FIFO without writer must fail fast
CASE_TIME_BOUND_S = 20.0  # in-process / cli; a subprocess also pays Python's and torch's start-up
SUBPROCESS_TIME_BOUND_S = 90.0


@dataclass
class Case:
    """One generated input and its expected outcome."""

    files: dict[str, bytes]  # name -> bytes, written into the case's folder; the first is the input
    expect: Any = None  # the observation when the input is valid
    error: Optional[tuple[str, ...]] = None  # fragments of the one-line error when it is not
    options: dict = field(default_factory=dict)  # reader options (edge format, min_score, ...)
    note: str = ""  # what the generator built or broke (shown on failure)
    names_input: bool = True  # the error line must name the input file
    delivery: str = "file"  # file | pipe | fifo (a FIFO that no process writes to)
    options_error: bool = False  # the error is about the options, found before the input is opened

    @property
    def input_name(self) -> str:
        return next(iter(self.files))


@dataclass
class Format:
    name: str
    generate: Callable[[random.Random], Case]
    read: Callable[[str, dict], Any]  # (input path, options) -> observation, in-process
    cli: Optional[Callable[[str, dict], Optional[list[str]]]] = None  # argv after 'lcplm' (None: no CLI for this case)
    cli_view: Callable[[Any], Any] = lambda expect: expect  # what of the expected observation the CLI prints
    parse_cli: Callable[[str], Any] = lambda stdout: stdout  # stdout -> that view
    pipes: bool = True  # inputs may come through a pipe or a FIFO
    warmup: Callable[[], None] = lambda: None  # slow imports, done before the first case is timed


FORMATS: dict[str, Format] = {}


def fuzz_format(name: str, read: Callable[[str, dict], Any], **kw) -> Callable:
    """Register a generator (see the module docstring); keyword arguments are :class:`Format`'s."""

    def register(generate: Callable[[random.Random], Case]) -> Callable[[random.Random], Case]:
        FORMATS[name] = Format(name, generate, read, **kw)
        return generate

    return register


# ----------------------------------------------------------------------------- running one case


class _Hang(Exception):
    pass


@contextlib.contextmanager
def _time_bound(seconds: float):
    """SIGALRM-based bound for in-process work (main thread only; elsewhere unbounded)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum, frame):
        raise _Hang(f"no result within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class _Input:
    """The case's input as a file path, a pipe fed by a thread, or a FIFO nobody writes to."""

    def __init__(self, case: Case, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in case.files.items():
            (folder / name).write_bytes(data)
        self.path = str(folder / case.input_name)
        self._pipe: Optional[tuple[int, threading.Thread]] = None
        if case.delivery == "pipe":
            r, w = os.pipe()
            data = case.files[case.input_name]

            def feed():
                try:
                    with os.fdopen(w, "wb") as f:
                        for i in range(0, len(data), 4096):
                            f.write(data[i : i + 4096])
                except (BrokenPipeError, OSError):
                    pass  # the reader stopped early (an error): fine

            t = threading.Thread(target=feed, daemon=True)
            t.start()
            self._pipe = (r, t)
            self.path = f"/dev/fd/{r}"
        elif case.delivery == "fifo":
            fifo = folder / ("fifo-" + case.input_name)
            os.mkfifo(fifo)
            self.path = str(fifo)

    @property
    def fd(self) -> Optional[int]:
        return self._pipe[0] if self._pipe else None

    def close(self) -> None:
        if self._pipe:
            r, t = self._pipe
            os.close(r)  # a writer still blocked gets EPIPE and ends
            t.join(5)
            self._pipe = None


def _check_error(case: Case, message: str, input_path: str) -> Optional[str]:
    """None when ``message`` is the expected one-line error, else what is wrong with it."""
    if case.error is None:
        return f"unexpected error: {message!r} (expected {short(case.expect)})"
    if "\n" in message.strip():
        return f"error is more than one line: {message!r}"
    want = list(case.error) + ([input_path] if case.names_input else [])
    missing = [w for w in want if w not in message]
    return f"error {message!r} lacks {missing}" if missing else None


def short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class Result:
    format: str
    mode: str
    ok: bool
    seconds: float
    expected_error: bool
    detail: str = ""


def _expected_for_delivery(case: Case) -> Case:
    if case.delivery != "fifo" or case.options_error:
        return case
    return Case(case.files, None, ("no data arrived on this FIFO",), case.options, case.note + " [FIFO without writer]",
                True, "fifo")


def run_case(fmt: Format, case: Case, folder: Path, mode: str) -> Result:
    """Run ``case`` in ``mode`` (inprocess | cli | subprocess) and judge the outcome."""
    case = _expected_for_delivery(case)
    case.options["delivery"] = case.delivery  # a pipe can be read once: readers of several passes pick one
    t0 = time.monotonic()
    inp = _Input(case, folder)
    try:
        if mode == "subprocess":
            detail = _run_subprocess(fmt, case, inp)
        else:
            try:
                with _time_bound(CASE_TIME_BOUND_S):
                    detail = _run_cli(fmt, case, inp.path) if mode == "cli" else _run_inprocess(fmt, case, inp.path)
            except _Hang as e:
                detail = f"hang: {e}"
    finally:
        inp.close()
    seconds = time.monotonic() - t0
    return Result(fmt.name, mode, detail is None, seconds, case.error is not None, detail or "")


def _run_inprocess(fmt: Format, case: Case, path: str) -> Optional[str]:
    from lcplm.errors import UserError

    try:
        got = fmt.read(path, case.options)
    except UserError as e:
        return _check_error(case, str(e), path)
    except _Hang:
        raise
    except Exception:  # a bug: the reader must never raise anything else
        return "traceback:\n" + traceback.format_exc(limit=6)
    if case.error is not None:
        return f"expected an error containing {case.error}, got {short(got)}"
    return None if got == case.expect else f"wrong result:\n  got      {short(got)}\n  expected {short(case.expect)}"


def _judge_cli(fmt: Format, case: Case, code: int, out: str, err: str, path: str) -> Optional[str]:
    if "Traceback" in err:
        return "traceback on stderr:\n" + err[-2000:]
    if code == 2:
        # one error line; other stderr lines may only be lcplm's notes (e.g. "lcplm: X is a pipe; ...")
        errors = [line for line in err.splitlines() if ": error: " in line]
        others = [line for line in err.splitlines() if line.strip() and ": error: " not in line]
        if len(errors) != 1 or any(not line.startswith("lcplm: ") for line in others):
            return f"stderr is not one error line (plus notes): {err[-1500:]!r}"
        return _check_error(case, errors[0], path)
    if code != 0:
        return f"exit status {code}; stderr {err[-500:]!r}"
    if case.error is not None:
        return f"expected exit 2 with {case.error}, got exit 0; stdout {out[:300]!r}"
    try:
        got = fmt.parse_cli(out)
    except Exception:
        return "could not parse the CLI's output:\n" + out[:500]
    want = fmt.cli_view(case.expect)
    return None if got == want else f"wrong CLI result:\n  got      {short(got)}\n  expected {short(want)}"


def _run_cli(fmt: Format, case: Case, path: str) -> Optional[str]:
    from lcplm.__main__ import main

    argv = fmt.cli(path, case.options)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except _Hang:
        raise
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 1
    except Exception:
        return "traceback:\n" + traceback.format_exc(limit=6)
    return _judge_cli(fmt, case, code, out.getvalue(), err.getvalue(), path)


def _run_subprocess(fmt: Format, case: Case, inp: _Input) -> Optional[str]:
    argv = fmt.cli(inp.path, case.options)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "kernels"), os.environ.get("PYTHONPATH", "")]))
    try:
        r = subprocess.run([sys.executable, "-m", "lcplm", *argv], capture_output=True, text=True, env=env,
                           timeout=SUBPROCESS_TIME_BOUND_S, pass_fds=(inp.fd,) if inp.fd is not None else (),
                           stdin=subprocess.DEVNULL, cwd=REPO)
    except subprocess.TimeoutExpired:
        return f"hang: no exit within {SUBPROCESS_TIME_BOUND_S:g} s"
    return _judge_cli(fmt, case, r.returncode, r.stdout, r.stderr, inp.path)


# ----------------------------------------------------------------------------- running many


@dataclass
class Report:
    seed: int
    results: list[Result] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def table(self) -> str:
        rows: dict[tuple[str, str], Counter] = defaultdict(Counter)
        slowest: dict[str, float] = defaultdict(float)
        for r in self.results:
            c = rows[(r.format, r.mode)]
            c["cases"] += 1
            c["valid" if not r.expected_error else "errors"] += 1
            c["failed"] += not r.ok
            slowest[r.format] = max(slowest[r.format], r.seconds)
        lines = [f"{'format':<14}{'mode':<12}{'cases':>7}{'valid':>7}{'errors':>8}{'failed':>8}{'slowest s':>11}"]
        for (name, mode), c in sorted(rows.items()):
            lines.append(f"{name:<14}{mode:<12}{c['cases']:>7}{c['valid']:>7}{c['errors']:>8}{c['failed']:>8}"
                         f"{slowest[name]:>11.2f}")
        total = Counter(cases=len(self.results), failed=sum(not r.ok for r in self.results))
        lines.append(f"{'all':<26}{total['cases']:>7}{'':>15}{total['failed']:>8}")
        return "\n".join(lines)


def run_many(n: int, seed: int, workdir: Path, formats: Optional[list[str]] = None, cli_share: float = 0.25,
             subprocess_cases: int = 0, progress: Optional[Callable[[int], None]] = None) -> Report:
    """``n`` cases in-process or through the CLI entry point (``cli_share`` of those that have a
    CLI), then ``subprocess_cases`` more through ``python -m lcplm``; formats round-robin."""
    import lcplm.data  # noqa: F401  (import before the time bound starts counting)

    names = formats or sorted(FORMATS)
    unknown = [f for f in names if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown fuzz formats {unknown}; known: {sorted(FORMATS)}")
    for name in names:
        FORMATS[name].warmup()
    report = Report(seed)
    saved = {k: os.environ.get(k) for k in ("LCPLM_FIFO_TIMEOUT", "LCPLM_CACHE_DIR")}
    os.environ["LCPLM_FIFO_TIMEOUT"] = str(FIFO_TIMEOUT_S)
    os.environ["LCPLM_CACHE_DIR"] = str(workdir / "cache")
    cli_names = [name for name in names if FORMATS[name].cli is not None]
    try:
        for i in range(n + (subprocess_cases if cli_names else 0)):
            fmt = FORMATS[names[i % len(names)] if i < n else cli_names[(i - n) % len(cli_names)]]
            for attempt in range(100):  # a subprocess case needs one with a CLI (configs: invalid ones)
                rng = random.Random(f"{seed}:{i}:{attempt}" if attempt else f"{seed}:{i}")
                case = fmt.generate(rng)
                has_cli = fmt.cli is not None and fmt.cli(case.input_name, case.options) is not None
                if i < n or has_cli:
                    break
            if fmt.pipes:
                draw = rng.random()
                case.delivery = "pipe" if draw < 0.2 else "fifo" if draw < 0.23 else "file"
            mode = "subprocess" if i >= n else "cli" if has_cli and rng.random() < cli_share else "inprocess"
            result = run_case(fmt, case, workdir / f"case{i}", mode)
            report.results.append(result)
            if not result.ok:
                report.failures.append(
                    f"[{fmt.name} {mode} seed={seed} case={i} delivery={case.delivery}] {case.note}\n  {result.detail}"
                )
            if progress:
                progress(i)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return report
