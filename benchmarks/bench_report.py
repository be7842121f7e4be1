"""The report of bench_transfer.py: the table of medians and ratios, case 1's floor, where
modelfetch's time went per stage, and each goal of the speed issues met or missed."""

from __future__ import annotations

import platform
import statistics
import subprocess
from collections.abc import Callable

from bench_common import BENCH_DIR, Case, MiB, Run, cpu_and_memory

DAEMON_ROW = "modelfetch get -I list via daemon"  # case 3 through a running `modelfetch serve`


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def machine() -> str:
    fs = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(BENCH_DIR)],
        capture_output=True,
        text=True,
    ).stdout
    fs = " ".join(fs.split())
    versions = []
    for argv in (["nginx", "-v"], ["curl", "--version"], ["aria2c", "--version"]):
        try:
            text = subprocess.run(argv, capture_output=True, text=True)
            first = (text.stdout or text.stderr).splitlines()[0]
            versions.append(" ".join(first.split()[:3]).replace("nginx version: ", ""))
        except (OSError, IndexError):
            versions.append(f"{argv[0]}: ?")
    return (
        f"{cpu_and_memory()}, output on {fs or '?'}; Python {platform.python_version()};"
        f" {'; '.join(versions)}"
    )


def median(runs: list[Run], pick: Callable[[Run], float | None]) -> float | None:
    values = [v for v in map(pick, runs) if v is not None]
    return statistics.median(values) if values else None


def report(cases: list[Case], rss: dict[str, int], loads: tuple[str, str]) -> str:
    """The markdown table: medians [min-max] of spawn-to-exit seconds, and modelfetch's speed
    as a multiple of each baseline's, from spawn to exit and from its in-process work time
    (what a running daemon pays: no interpreter start, no imports)."""
    lines = [
        f"Machine: {machine()}.",
        f"Load average (1/5/15 min) at start: {loads[0]}; at end: {loads[1]}.",
        "",
        "| case | tool | seconds, median [min-max] | MiB/s | modelfetch speed ÷ tool's:"
        " spawn to exit | ... in-process work |",
        "|---|---|---|---|---|---|",
    ]
    for case in cases:
        mf = median(case.runs["modelfetch"], lambda r: r.seconds)
        mf_work = median(case.runs["modelfetch"], lambda r: r.work)
        assert mf is not None
        for name, runs in case.runs.items():
            secs = median(runs, lambda r: r.seconds)
            assert secs is not None
            spread = f"{secs:.2f} [{min(r.seconds for r in runs):.2f}-"
            spread += f"{max(r.seconds for r in runs):.2f}]"
            speed = f"{case.size / MiB / secs:.0f}"
            work = median(runs, lambda r: r.work)
            if name in case.baseline_for_ratio:
                by_work = f"**{secs / mf_work:.2f}x**" if mf_work else ""
                cells = f"**{secs / mf:.2f}x** | {by_work}"
            else:
                cells = "| " + (f"work {work:.2f} s" if work is not None else "")
                connections = [r.connections for r in runs if r.connections]
                if connections:
                    cells += f", connections: up to {max(connections)}"
            tool = f"**{name}**" if name == "modelfetch" else name
            lines.append(f"| {case.title} | {tool} | {spread} | {speed} | {cells} |")
        for kind, names in (("floor", case.floor_of), ("durable floor", case.durable_floor_of)):
            floor = floor_of(case, names)
            if floor is None:
                continue
            what = f"{kind}: max(" + ", ".join(names) + ")"
            ratio = f"modelfetch takes **{mf / floor:.2f}x** it"
            if mf_work:
                ratio += f" | in-process work: **{mf_work / floor:.2f}x**"
            speed = case.size / MiB / floor
            lines.append(f"| {case.title} | {what} | {floor:.2f} | {speed:.0f} | {ratio} |")
    lines += stage_table(cases)
    lines += ["", "| case 4: peak RSS of modelfetch | MiB |", "|---|---|"]
    for what, kib in rss.items():
        lines.append(f"| {what} | {kib / 1024:.0f} |")
    lines += goal_table(cases)
    return "\n".join(lines)


def floor_of(case: Case, names: tuple[str, ...]) -> float | None:
    """The slowest median of these rows (None unless all ran)."""
    medians = [median(case.runs[name], lambda r: r.seconds) for name in names if name in case.runs]
    found = [m for m in medians if m is not None]
    return max(found) if names and len(found) == len(names) else None


STAGES = ("request", "receive", "pwrite", "hash", "hash_tail", "fsync", "rename")


def stage_table(cases: list[Case]) -> list[str]:
    """Where modelfetch's time went, per stage (medians over the rounds; transfer/stages.py):
    `receive` is first response head to last byte, `pwrite` the part of it inside pwrite
    (summed over connections), `hash` the digest thread's busy time alongside, `hash tail`
    what hashing added after the last byte, then the publish's fsync and rename."""
    rows = []
    for case in cases:
        for name, runs in case.runs.items():
            staged = [r.stages for r in runs if r.stages]
            if not staged:
                continue
            cells = [f"{statistics.median(s.get(k, 0.0) for s in staged):.3f}" for k in STAGES]
            rows.append(f"| {case.title} | {name} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    head = "| case | tool | " + " | ".join(k.replace("_", " ") for k in STAGES) + " |"
    return [
        "",
        "Where modelfetch's time went (seconds, medians):",
        "",
        head,
        "|---|---|" + "---|" * len(STAGES),
        *rows,
    ]


# (case number, tool row, the goal: our row's speed ÷ that row's at least this; or, for a
# floor, our row's time ÷ the floor at most this; our row)
GOALS: tuple[tuple[str, str, str, float, str], ...] = (
    ("1.", "floor", "time ÷ floor ≤", 1.05, "modelfetch"),
    ("1.", "durable floor", "time ÷ floor ≤ (not an issue's goal)", 1.05, "modelfetch"),
    ("2.", "aria2c -x8 -s8 -k1M", "speed ÷ tool's ≥", 1.0, "modelfetch"),
    ("2.", "aria2c -x16 -s16 -k1M", "speed ÷ tool's ≥", 1.2, "modelfetch"),
    ("3.", "aria2c -j16 -i list", "speed ÷ tool's ≥", 1.0, DAEMON_ROW),
    ("3.", "aria2c -j16 -i list", "speed ÷ tool's ≥", 0.7, "modelfetch"),
)


def goal_table(cases: list[Case]) -> list[str]:
    lines = ["", "| goal | result | met |", "|---|---|---|"]
    for prefix, row, rule, target, mine in GOALS:
        case = next((c for c in cases if c.title.startswith(prefix)), None)
        if case is None or mine not in case.runs:
            continue
        mf = median(case.runs[mine], lambda r: r.seconds)
        if row in ("floor", "durable floor"):
            names = case.floor_of if row == "floor" else case.durable_floor_of
            floor = floor_of(case, names)
            if floor is None or mf is None:
                continue
            value, met = mf / floor, mf / floor <= target
        else:
            if row not in case.runs or mf is None:
                continue
            other = median(case.runs[row], lambda r: r.seconds)
            assert other is not None
            value, met = other / mf, other / mf >= target
        what = f"case {prefix} `{mine}` {rule} {target} (`{row}`)"
        lines.append(f"| {what} | {value:.2f}x | {'**met**' if met else '**missed**'} |")
    return lines
