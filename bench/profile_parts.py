"""Where the authz processes' CPU goes, by part (issue #14's closing note): per thread role and user vs kernel
from /proc, and per code family from py-spy's GIL-holding samples.

One Valkey, one Envoy and the authz processes of ``bench/throughput_stack.py``; per scenario fixed ``wrk`` runs
(``-t1 -c16``), interleaved over rounds. Two kinds of run, never together, because py-spy slows what it samples
and competes for the same two cores:

- CPU runs (no profiler): the user and system time of every thread of the authz process
  (``/proc/PID/task/TID/stat``), per request, grouped by role. Python threads all carry the process's ``comm``
  ("python"), so their roles come from their Python names (``py-spy dump --nonblocking``, which maps OS thread
  ids to ``threading`` names); gRPC's C-core threads name themselves (``event_engine``, ``grpc_global_tim``);
- py-spy runs: ``py-spy record --gil --nonblocking`` (only the thread holding the GIL is sampled), each sample
  classified by its innermost Python frame's file. Native code runs under the Python frame that called it
  (``--native`` cannot be combined with ``--nonblocking``): upb's protobuf parsing counts to the caller, the
  Cython/C-core work of ``grpc/_server.py``'s poll to gRPC. The shares are turned into µs per request with the
  user CPU of the Python threads (main, poller, handlers) of the CPU runs.

Writes ``bench/results/profile-parts.md``.

    python bench/profile_parts.py [--seconds 6] [--rounds 2] [--out bench/results/profile-parts.md] [--no-pyspy]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from throughput_report import machine
from throughput_sessions import plant_sessions
from throughput_stack import (
    BENCH_ERRORS,
    CLOCK_TICKS,
    CONST_GRPC,
    CONST_HTTP,
    GRPC_HIT,
    GRPC_MISS,
    HTTP_HIT,
    NAIVE,
    ROOT,
    BenchError,
    Scenario,
    Stack,
    cpu_seconds,
    log,
    running_stack,
    show_failure,
    start_scenario_backends,
    verify_edge,
)
from throughput_wrk import run_wrk

SCENARIOS = [GRPC_HIT, GRPC_MISS, NAIVE, CONST_GRPC, HTTP_HIT, CONST_HTTP]
BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results" / "profile-parts.md"
CONNECTIONS = 16
SAMPLE_RATE = 250  # py-spy samples per second
TOP_FRAMES = 10
# With uvloop the loop itself is Cython: a sample whose innermost Python frame is the loop's entry point is native
# work the loop runs (uvloop's I/O, grpc.aio's Cython callbacks and the protobuf parsing they do, httptools).
LOOP_ENTRIES = ("Runner.run ", "run_until_complete ", "run_forever ", "BaseEventLoop.run_")

ROLES = ["main / event loop", "grpc poller", "handler threads", "grpc event_engine", "other threads", "ended threads"]
PYTHON_ROLES = ROLES[:3]  # the threads whose user time the GIL shares divide
CATEGORIES = [
    "own code",
    "gRPC Python layer",
    "protobuf",
    "asyncio / uvloop",
    "event loop natives",
    "redis-py",
    "prometheus_client",
    "logging",
    "threading / futures",
    "other Python",
    "no Python frame",
]
# Python threads in `py-spy dump`: "Thread 1234 (idle): "grpc-check_0"" (1234 is the OS thread id on Linux).
DUMP_THREAD = re.compile(r'^Thread (\d+) \([^)]*\): "(.*)"')


def py_spy() -> str | None:
    local = ROOT / ".venv" / "bin" / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


# --------------------------------------------------------------------------------------------------- threads


def thread_names(spy: str | None, pid: int) -> dict[int, str]:
    """OS thread id -> the Python thread's name, for the threads Python knows (empty without py-spy)."""
    if spy is None:
        return {}
    args = [spy, "dump", "--nonblocking", "-p", str(pid)]
    try:
        dump = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return {}  # the Python threads then count as "other threads"
    names = {}
    for line in dump.stdout.splitlines():
        found = DUMP_THREAD.match(line)
        if found:
            names[int(found.group(1))] = found.group(2)
    return names


def role(pid: int, tid: int, comm: str, python_name: str | None) -> str:
    if tid == pid:
        return ROLES[0]
    if python_name is not None:
        if "(_serve)" in python_name:
            return ROLES[1]
        if python_name.startswith(("grpc-check", "ThreadPoolExecutor")):
            return ROLES[2]
        return ROLES[4]
    if comm == "event_engine":
        return ROLES[3]
    return ROLES[4]


def task_times(pid: int) -> dict[int, tuple[str, int, int]]:
    """Per thread: its comm and its user and system clock ticks so far."""
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # ended between the listing and the read: counted with the ended threads
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        times[int(task.name)] = (comm, int(fields[11]), int(fields[12]))  # utime, stime (fields 14 and 15)
    return times


@dataclass
class CpuRun:
    requests: int
    seconds: float
    us: dict[tuple[str, str], float]  # (role, "user" or "kernel") -> µs per request
    elsewhere: float  # cores the rest of the machine used meanwhile (not this stack, not wrk)

    @property
    def total(self) -> float:
        return sum(self.us.values())


def cpu_run(stack: Stack, scenario: Scenario, seconds: int, names: dict[int, str], spy: str | None) -> CpuRun:
    assert scenario.backend is not None
    pid = stack.backends[scenario.backend].proc.pid
    before, total_before = task_times(pid), cpu_seconds(pid)
    run = run_wrk(stack, scenario, connections=CONNECTIONS, seconds=seconds)
    after, total_after = task_times(pid), cpu_seconds(pid)
    if any(tid not in names for tid in after):
        names.update(thread_names(spy, pid))  # a thread started since the last look
    ticks: Counter[tuple[str, str]] = Counter()
    for tid, (comm, user, system) in after.items():
        _, user0, system0 = before.get(tid, (comm, 0, 0))
        who = role(pid, tid, comm, names.get(tid))
        ticks[who, "user"] += user - user0
        ticks[who, "kernel"] += system - system0
    per_request = 1e6 / CLOCK_TICKS / max(run.requests, 1)
    us = {key: value * per_request for key, value in ticks.items()}
    # Threads that ended during the run leave the task list; their time stays in the process's total.
    ended = 1e6 * (total_after - total_before) / max(run.requests, 1) - sum(us.values())
    us[ROLES[5], "user"] = max(0.0, ended)
    return CpuRun(run.requests, run.seconds, us, run.cpu["other"] / run.seconds)


# --------------------------------------------------------------------------------------------------- py-spy


def category(frame: str) -> str:
    """The code family of a py-spy frame "function (path/file.py:line)" (or a native "0x... (library)")."""
    _, _, where = frame.rpartition(" (")
    path = where.removesuffix(")").rsplit(":", 1)[0] if where else frame
    if Path(path).is_absolute() and Path(path).is_relative_to(ROOT):
        path = Path(path).relative_to(ROOT).as_posix()  # py-spy names a file by its path when no sys.path entry fits
    if path.startswith(("sidecar/", "bench/")) or (not Path(path).is_absolute() and (BENCH_DIR / path).is_file()):
        return "own code"
    if path.startswith(("google/protobuf", "upb")) or "_message" in path or path.endswith("_pb2.py"):
        return "protobuf"
    if path.startswith(("grpc/", "grpc_")):
        return "gRPC Python layer"
    if path.startswith("asyncio/") and frame.startswith(LOOP_ENTRIES):
        return "event loop natives"
    if path.startswith(("asyncio/", "uvloop", "selectors.py")):
        return "asyncio / uvloop"
    if path.startswith(("redis/", "hiredis")):
        return "redis-py"
    if path.startswith("prometheus_client/"):
        return "prometheus_client"
    if path.startswith("logging/"):
        return "logging"
    if path.startswith(("threading.py", "concurrent/futures/", "queue.py")):
        return "threading / futures"
    return "other Python"


def innermost(frame: str) -> str:
    """A frame without its line number: "function (path/file.py)"."""
    function, _, where = frame.rpartition(" (")
    return f"{function} ({where.removesuffix(')').rsplit(':', 1)[0]})" if function else frame


def classify(raw: str) -> tuple[Counter[str], Counter[str]]:
    """Samples per category, and per innermost frame, of a py-spy ``raw`` file (collapsed stacks:
    "outer;...;inner COUNT" per line; a stack with no Python frame is an empty one)."""
    categories: Counter[str] = Counter()
    frames: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        inner = [f for f in stack.split(";") if f.strip()][-1:]
        categories[category(inner[0]) if inner else "no Python frame"] += int(count)
        frames[innermost(inner[0]) if inner else "(no Python frame)"] += int(count)
    return categories, frames


@dataclass
class SpyRun:
    requests: int
    seconds: float
    samples: Counter[str]  # per category
    frames: Counter[str]  # per innermost frame


def spy_run(stack: Stack, scenario: Scenario, seconds: int, spy: str, out: Path) -> SpyRun:
    assert scenario.backend is not None
    pid = stack.backends[scenario.backend].proc.pid
    args = [spy, "record", "--gil", "--nonblocking", "-r", str(SAMPLE_RATE), "-d", str(seconds)]
    args += ["-p", str(pid), "-f", "raw", "-o", str(out)]
    recorder = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.3)  # py-spy attaches before the load starts
        run = run_wrk(stack, scenario, connections=CONNECTIONS, seconds=seconds)
        _, err = recorder.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"py-spy did not end {seconds + 30} s after its {seconds} s run on {scenario.name}") from exc
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    if recorder.returncode != 0 or not out.exists():
        raise BenchError(f"py-spy failed on {scenario.name} ({recorder.returncode}): {err.decode()[-500:]}")
    return SpyRun(run.requests, run.seconds, *classify(out.read_text()))


# --------------------------------------------------------------------------------------------------- report


@dataclass
class Figures:
    cpu: list[CpuRun] = field(default_factory=list)
    spy: list[SpyRun] = field(default_factory=list)

    def us(self, key: tuple[str, str]) -> float:
        """The median over the rounds of one (role, user/kernel) cell."""
        return statistics.median(r.us.get(key, 0.0) for r in self.cpu)

    @property
    def total(self) -> float:
        """The sum of the cells' medians, so every table adds up (the median of each run's total could not)."""
        return sum(self.us(key) for key in dict.fromkeys(k for r in self.cpu for k in r.us))

    @property
    def rps(self) -> float:
        return statistics.median(r.requests / r.seconds for r in self.cpu)

    @property
    def cores(self) -> float:
        """The authz process's CPU use while loaded, in cores (the median over the rounds)."""
        return statistics.median(r.total * r.requests / r.seconds / 1e6 for r in self.cpu)

    @property
    def python_user(self) -> float:
        return sum(self.us((r, "user")) for r in PYTHON_ROLES)

    @property
    def kernel(self) -> float:
        return sum(self.us((r, "kernel")) for r in ROLES)

    def shares(self) -> dict[str, float]:
        summed: Counter[str] = Counter()
        for run in self.spy:
            summed.update(run.samples)
        total = sum(summed.values())
        return {c: summed[c] / total for c in CATEGORIES} if total else {}

    def category_us(self) -> dict[str, float]:
        return {c: share * self.python_user for c, share in self.shares().items()}


def checkout() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
        return done.stdout if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD").strip() or "? (not a git checkout)"
    changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
    in_sidecar = [line for line in changed if line[3:].startswith("sidecar/")]
    if not changed:
        return f"{head} (clean tree)"
    return f"{head}, dirty: {len(changed)} tracked files changed, {len(in_sidecar)} of them in sidecar/ (measured)"


def scenario_table(name: str, label: str, fig: Figures) -> list[str]:
    lines = [
        f"### {label} (`{name}`): {fig.rps:,.0f} req/s, {fig.total:.0f} µs CPU per request "
        f"({100 * fig.cores:.0f} % of a core)",
        "",
    ]
    lines += ["| thread role | user µs/req | kernel µs/req | total |", "|---|---:|---:|---:|"]
    for r in ROLES:
        user, kernel = fig.us((r, "user")), fig.us((r, "kernel"))
        if user + kernel >= 0.5:
            lines.append(f"| {r} | {user:.0f} | {kernel:.0f} | {user + kernel:.0f} |")
    users = sum(fig.us((r, "user")) for r in ROLES)
    lines += [f"| **all** | **{users:.0f}** | **{fig.kernel:.0f}** | **{users + fig.kernel:.0f}** |", ""]
    shares = fig.shares()
    if fig.spy and shares:
        samples = sum(sum(run.samples.values()) for run in fig.spy)
        wall = sum(run.seconds for run in fig.spy)
        gil = samples / SAMPLE_RATE / sum(run.requests for run in fig.spy) * 1e6
        held = 100 * samples / SAMPLE_RATE / wall
        lines += [
            f"GIL-holding samples: {samples:,} over {wall:.0f} s (the GIL held {held:.0f} % of the time, "
            f"{gil:.0f} µs per request under py-spy); shares x the Python threads' user CPU "
            f"({fig.python_user:.0f} µs/req):",
            "",
            "| code (innermost frame) | share | µs/req |",
            "|---|---:|---:|",
        ]
        derived = fig.category_us()
        lines += [f"| {c} | {100 * shares[c]:.1f} % | {derived[c]:.0f} |" for c in CATEGORIES if shares[c] > 0]
        frames: Counter[str] = Counter()
        for run in fig.spy:
            frames.update(run.frames)
        lines += ["", f"Top {TOP_FRAMES} innermost frames:", "", "| frame | share | µs/req |", "|---|---:|---:|"]
        for frame, count in frames.most_common(TOP_FRAMES):
            lines.append(f"| `{frame}` | {100 * count / samples:.1f} % | {count / samples * fig.python_user:.0f} |")
        lines.append("")
    return lines


def by_part(fig: Figures) -> dict[str, float]:
    """The issue's parts: kernel, gRPC's C-core threads, then the Python threads' user time by code family."""
    parts = {
        "kernel (all threads)": fig.kernel,
        "gRPC event_engine threads (user)": fig.us((ROLES[3], "user")),
        "other and ended threads (user)": fig.us((ROLES[4], "user")) + fig.us((ROLES[5], "user")),
    }
    derived = fig.category_us()
    if derived:
        parts.update({f"Python: {c}": v for c, v in derived.items()})
    else:
        parts["Python threads (user, not split)"] = fig.python_user
    return parts


def compare(label: str, fig: Figures, base_label: str, base: Figures, goal: float) -> str:
    """One "what is left" line: the rate ratio against ``base``, the CPU difference and where it is."""
    ratio = fig.rps / base.rps
    held = "holds" if ratio >= goal else "does not hold"
    budget = base.total / goal
    parts, base_parts = by_part(fig), by_part(base)
    keys = dict.fromkeys([*parts, *base_parts])
    deltas = sorted(((p, parts.get(p, 0.0) - base_parts.get(p, 0.0)) for p in keys), key=lambda x: -abs(x[1]))
    spread = ", ".join(f"{p} {d:+.0f}" for p, d in deltas[:6] if abs(d) >= 1)
    left = f"{fig.total - budget:.0f} µs less than now" if fig.total > budget else "already within it"
    return (
        f"- **{label}** vs {base_label}: {ratio:.2f}x the rate (target {goal:.2f}x: {held} in this run); the authz "
        f"processes used {100 * fig.cores:.0f} % and {100 * base.cores:.0f} % of a core. CPU per request "
        f"{fig.total:.0f} vs {base.total:.0f} µs ({fig.total - base.total:+.0f}), the largest differences by part: "
        f"{spread}. Were the authz CPU the only limit, {goal:.2f}x would need at most {budget:.0f} µs/request: {left}."
    )


def report(figs: dict[str, Figures], args: argparse.Namespace, notes: dict[str, str]) -> str:
    labels = {s.name: s.label for s in SCENARIOS}
    elsewhere = [run.elsewhere for fig in figs.values() for run in fig.cpu]
    lines = [
        "# Profile by part of the authz processes (`bench/profile_parts.py`)",
        "",
        f"- machine: {notes['machine']}; load average at the end {notes['load_end']}; the rest of the machine (not "
        f"this stack, not wrk) used {100 * statistics.median(elsewhere):.0f} % of a core during the CPU runs "
        f"(median; {100 * max(elsewhere):.0f} % at most)",
        f"- commit: {notes['commit']}",
        f"- runs: `wrk -t1 -c{CONNECTIONS}` for {args.seconds} s per scenario, {args.rounds} interleaved rounds; "
        f"{notes['seconds']} s in all",
        "- CPU figures: runs **without** py-spy (per thread, /proc/PID/task/TID/stat), medians over the rounds. "
        "Thread roles: main / event loop = the process's first thread (asyncio/uvloop, or a waiting main); "
        "grpc poller = grpc's `_serve` thread; handler threads = `grpc-check_*` (or the constant server's "
        "ThreadPoolExecutor); grpc event_engine = C-core's `event_engine` threads; ended threads = time of threads "
        "that exited during a run.",
        f"- GIL samples: {notes['pyspy']}",
        "- Code families: by the file of the innermost Python frame of each GIL-holding sample. Native code counts "
        "to the Python frame that called it: `_serve (grpc/_server.py)` is the C-core completion queue's work with "
        "the GIL held (gRPC), upb's protobuf parsing counts to whoever called it (so `protobuf` only shows "
        "google/protobuf's Python files and generated `_pb2` modules), and with uvloop a sample whose innermost "
        "frame is the loop's entry (`Runner.run`) is native work the loop runs: uvloop's I/O, grpc.aio's Cython "
        "callbacks, httptools (`event loop natives`). The Python threads' user time includes time spent without "
        "the GIL (C-core polling); the shares divide all of it.",
        "- The other load on the machine (other helpers' tests, when run by a helper) moves the rates; CPU µs per "
        "request is more robust to it. `make bench` (bench/results.md) is the reference for the targets.",
        "",
        "## What is left",
        "",
    ]
    pairs = [
        ("grpc_hit", "const_grpc", 0.75),
        ("grpc_hit", "naive", 2.0),
        ("grpc_miss", "naive", 1.5),
        ("http_hit", "const_http", 0.9),
    ]
    for name, base, goal in pairs:
        if figs.get(name) and figs[name].cpu and figs.get(base) and figs[base].cpu:
            lines.append(compare(labels[name], figs[name], labels[base], figs[base], goal))
    lines += [
        "",
        "By part, µs per request (kernel: all threads' system time; the Python parts are GIL shares x the "
        "Python threads' user time, so they also carry the native work done under those frames):",
        "",
    ]
    names = [s.name for s in SCENARIOS if figs[s.name].cpu]
    part_rows = {name: by_part(figs[name]) for name in names}
    keys = list(dict.fromkeys(k for parts in part_rows.values() for k in parts))
    lines += ["| part | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(f"{part_rows[n].get(key, 0.0):.0f}" for n in names) + " |")
    lines.append("| **total** | " + " | ".join(f"**{figs[n].total:.0f}**" for n in names) + " |")
    lines += ["", "## Per scenario", ""]
    for name in names:
        lines += scenario_table(name, labels[name], figs[name])
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------------------------------- main


def measure(workdir: Path, args: argparse.Namespace, spy: str | None, notes: dict[str, str]) -> dict[str, Figures]:
    recording = spy is not None and not args.no_pyspy
    figs = {s.name: Figures() for s in SCENARIOS}
    with running_stack(workdir, SCENARIOS, start_scenario_backends(SCENARIOS)) as stack:
        stack.cookies, bogus = plant_sessions(stack.redis_url, "bench", spring=False)
        verify_edge(stack, SCENARIOS, bogus)
        for scenario in SCENARIOS:  # warm-up (discarded): connections, caches, thread pools
            run_wrk(stack, scenario, connections=CONNECTIONS, seconds=2)
        names = {b.proc.pid: thread_names(spy, b.proc.pid) for b in stack.backends.values()}
        for round_number in range(args.rounds):
            log(f"round {round_number + 1} of {args.rounds}")
            for scenario in SCENARIOS:
                assert scenario.backend is not None
                pid = stack.backends[scenario.backend].proc.pid
                run = cpu_run(stack, scenario, args.seconds, names[pid], spy)
                figs[scenario.name].cpu.append(run)
                log(f"  {scenario.name:10} {run.requests / run.seconds:8.0f} req/s  {run.total:5.0f} µs/req")
                if recording and spy is not None:
                    out = workdir / f"{scenario.name}-{round_number}.raw"
                    try:
                        figs[scenario.name].spy.append(spy_run(stack, scenario, args.seconds, spy, out))
                    except BenchError as exc:  # e.g. no ptrace permission: the CPU part is still worth writing
                        log(f"py-spy: {exc}")
                        notes["pyspy"] = f"**py-spy failed** ({exc}): no GIL shares"
                        recording = False
                        for fig in figs.values():
                            fig.spy.clear()
    return figs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the authz processes' CPU per request, by thread role and by code")
    parser.add_argument("--seconds", type=int, default=6, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every scenario")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-pyspy", action="store_true", help="only the per-thread CPU, no GIL samples")
    args = parser.parse_args(argv)
    if args.seconds < 1 or args.rounds < 1:
        parser.error("--seconds and --rounds must be at least 1")
    if shutil.which("wrk") is None:
        print("error: wrk is missing: run 'sudo apt-get install wrk'", file=sys.stderr)
        return 1
    spy = py_spy()
    if args.no_pyspy:
        pyspy_note = "not taken (--no-pyspy)"
    if spy is None:
        pyspy_note = "**py-spy is missing** (`pip install py-spy`, in the dev extra): no GIL shares, and the Python "
        pyspy_note += "threads other than the first cannot be told apart (counted as 'other threads')"
    elif not args.no_pyspy:
        version = subprocess.run([spy, "--version"], capture_output=True, text=True, check=False).stdout.strip()
        pyspy_note = (
            f"separate runs **with** `{version} record --gil --nonblocking -r {SAMPLE_RATE}` (it slows the process "
            "it samples, so only its shares are used), classified by the innermost Python frame's file; summed over "
            "the rounds"
        )
    notes = {"machine": machine(), "commit": checkout(), "pyspy": pyspy_note}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="session-sidecar-profile-") as tmp:
        workdir = Path(tmp)
        try:
            figs = measure(workdir, args, spy, notes)
        except BENCH_ERRORS as exc:
            show_failure(workdir, exc)
            return 1
    notes["seconds"] = f"{time.monotonic() - started:.0f}"
    notes["load_end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    text = report(figs, args, notes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
