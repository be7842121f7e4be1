"""The display: state words, the live table, plain lines and NDJSON, rendered into strings."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from typing import Any

from rich.console import Console

from modelfetch.core import events as ev
from modelfetch.render import (
    MAX_GROUP_ROWS,
    JsonDisplay,
    LiveDisplay,
    PlainDisplay,
    event_line,
    file_state,
    group_line,
    group_state,
    render_groups,
    short_error,
)
from modelfetch.views import FileView, GroupView

MIB = 1 << 20
NOW = 1_800_000_000.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def file_view(index: int = 1, **changes: Any) -> FileView:
    base = FileView(
        ref=f"7.{index}",
        name=f"Q4_K_M/model-Q4_K_M-0000{index}-of-00003.gguf",
        status="active",
        dest=f"/models/model-{index}.gguf",
        url="https://hub.example/o/n/resolve/abc/model.gguf",
        position=None,
        downloaded=25 * MIB,
        total=100 * MIB,
        speed=12_500_000.0,
        eta=6.0,
        attempts=0,
        error_kind=None,
        error_message=None,
        retry_at=None,
        pause_reason=None,
        sha256=None,
        verified=False,
        idle_for=0.2,
    )
    return dataclasses.replace(base, **changes)


def group_view(*files: FileView, **changes: Any) -> GroupView:
    files = files or (file_view(),)
    base = GroupView(
        id=7,
        name="owner/model-GGUF:Q4_K_M",
        spec="hf://owner/model-GGUF@main:Q4_K_M",
        status="active",
        dest_dir="/models/owner/model-GGUF",
        position=None,
        downloaded=sum(f.downloaded for f in files),
        total=sum(f.total or 0 for f in files),
        speed=12_500_000.0,
        eta=6.0,
        created_at=NOW - 60,
        finished_at=None,
        files=list(files),
    )
    return dataclasses.replace(base, **changes)


def render_text(groups: list[GroupView], width: int = 140) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=False, color_system=None)
    console.print(render_groups(groups, NOW, width=width))
    return buffer.getvalue()


# ------------------------------------------------------------------------------ words


def test_waiting_states_read_as_words() -> None:
    assert file_state(file_view(status="queued", position=3), NOW) == "queued #3"
    retrying = file_view(
        status="waiting_retry",
        retry_at=NOW + 11.2,
        error_kind="server_busy",
        error_message="HTTP 503 Service Unavailable from https://cdn.example.org/o/n/x.gguf",
    )
    assert file_state(retrying, NOW) == "retrying in 12 s: 503 from cdn.example.org"
    assert file_state(file_view(idle_for=20.4), NOW) == "stalled 21 s"
    assert file_state(file_view(idle_for=1.0), NOW) is None  # moving: no words, just numbers
    paused = file_view(status="paused", pause_reason="disk_full")
    assert file_state(paused, NOW) == "paused: disk full"
    assert file_state(file_view(status="paused", pause_reason="user"), NOW) == "paused"


def test_short_error_keeps_the_gist() -> None:
    assert (
        short_error("HTTP 429 Too Many Requests from http://127.0.0.1:9/x") == "429 from 127.0.0.1"
    )
    long = "the response body was cut short: Response payload is not completed: <detail>"
    assert short_error(long) == "the response body was cut short"
    assert short_error(None, "stalled") == "stalled"
    gave_up = (
        "Gave up after 8 failed attempts. Network error (cannot resolve x.invalid: [Errno -2])"
    )
    assert short_error(gave_up) == gave_up[:79] + "…"  # no cut inside the parentheses


def test_group_state_follows_its_files() -> None:
    queued = group_view(file_view(status="queued", position=2), status="queued", position=2)
    assert group_state(queued, NOW) == "queued #2"
    full = group_view(file_view(status="paused", pause_reason="disk_full"), status="paused")
    assert group_state(full, NOW) == "paused: disk full"
    stalled = group_view(file_view(idle_for=30.0), file_view(2, idle_for=25.0))
    assert group_state(stalled, NOW) == "stalled 25 s"
    failed = group_view(
        file_view(status="failed", error_message="gone"), file_view(2, status="completed")
    )
    assert group_state(dataclasses.replace(failed, status="partial"), NOW) == "failed: 1 of 2 files"


# ------------------------------------------------------------------------------ live table


def test_live_table_shows_model_row_active_files_and_waiting_words() -> None:
    group = group_view(
        file_view(1, status="completed", downloaded=100 * MIB, speed=None, eta=None),
        file_view(2, downloaded=50 * MIB, speed=2_000_000.0, eta=25.0),
        file_view(
            3,
            status="waiting_retry",
            downloaded=0,
            speed=None,
            eta=None,
            retry_at=NOW + 12,
            error_kind="server_busy",
            error_message="HTTP 503 Service Unavailable from http://127.0.0.1:8080/cdn/x",
        ),
        speed=2_000_000.0,
        eta=75.0,
    )
    queued = group_view(
        file_view(1, status="queued", position=1, downloaded=0, speed=None, eta=None),
        id=8,
        name="owner/other-GGUF:Q8_0",
        status="queued",
        position=1,
        speed=None,
        eta=None,
    )
    text = render_text([group, queued])
    lines = text.splitlines()
    model = next(line for line in lines if line.startswith("owner/model-GGUF:Q4_K_M"))
    assert "1/3 files" in model and "50%" in model and "2.0 MB/s" in model and "ETA 1m 15s" in model
    assert "150.0 MiB / 300.0 MiB" in model
    shard2 = next(line for line in lines if "00002-of-00003" in line)
    assert "50%" in shard2 and "ETA 25s" in shard2
    shard3 = next(line for line in lines if "00003-of-00003" in line)
    assert "retrying in 12 s: 503 from 127.0.0.1" in shard3
    assert not any("00001-of-00003" in line for line in lines)  # finished files leave
    other = next(line for line in lines if line.startswith("owner/other-GGUF:Q8_0"))
    assert "queued #1" in other
    assert "—" in other  # its speed is unknown, not zero


def test_unknown_speed_and_eta_show_a_dash_never_zero() -> None:
    text = render_text([group_view(file_view(speed=None, eta=None), speed=None, eta=None)])
    model = text.splitlines()[0]
    assert "ETA —" in model and "—" in model.split("MiB")[-1]
    assert "0 B/s" not in text


def test_narrow_terminal_keeps_the_numbers() -> None:
    group = group_view(file_view(status="waiting_retry", retry_at=NOW + 5, error_message="x" * 200))
    text = render_text([group], width=90)
    assert all(len(line) <= 90 for line in text.splitlines())
    assert "25.0 MiB / 100.0 MiB" in text
    assert "…" in text  # the long state is cut, not wrapped


def test_live_display_redraws_with_new_progress() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, force_terminal=True, color_system=None)
    display = LiveDisplay(console, hint="Ctrl-C pauses")
    group = group_view(file_view(downloaded=10 * MIB), downloaded=10 * MIB, total=100 * MIB)
    display.track([7])
    display.begin()
    display.on_views([group])
    display.tick(NOW)
    display.on_event(
        ev.GroupProgress(
            group_id=7,
            name=group.name,
            downloaded=60 * MIB,
            total=100 * MIB,
            speed=5_000_000.0,
            eta=8.0,
            files_done=0,
            files_total=1,
        )
    )
    display.tick(NOW + 0.25)
    display.end()
    out = ANSI.sub("", buffer.getvalue())
    assert "10%" in out and "60%" in out
    assert "5.0 MB/s" in out and "Ctrl-C pauses" in out


def test_status_events_patch_the_rows_between_reloads() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=140, color_system=None)
    display = LiveDisplay(console)
    display.on_views([group_view(file_view(), file_view(2, status="queued", position=1))])
    display.on_event(
        ev.StatusChanged(
            ref="7.1",
            group_id=7,
            name="x",
            status="paused",
            previous="active",
            reason="disk_full",
        )
    )
    display.on_event(
        ev.StatusChanged(
            ref="7.2", group_id=7, name="y", status="paused", previous="queued", reason="disk_full"
        )
    )
    console.print(display.renderable(NOW))
    assert "paused: disk full" in buffer.getvalue()


# ------------------------------------------------------------------------------ plain and JSON


def test_plain_display_prints_state_changes_and_periodic_lines() -> None:
    stream = io.StringIO()
    display = PlainDisplay(stream, interval=3.0)
    display.track([7])
    display.on_views([group_view()])
    display.on_event(
        ev.FileStarted(ref="7.1", group_id=7, name="a.gguf", offset=5 * MIB, total=10 * MIB)
    )
    display.on_event(  # another group's events are not ours
        ev.FileStarted(ref="9.1", group_id=9, name="other.gguf", offset=0, total=None)
    )
    display.tick(NOW)
    display.tick(NOW + 1)  # too soon for a periodic line
    display.tick(NOW + 3.5)
    display.on_event(
        ev.StatusChanged(
            ref="7.1",
            group_id=7,
            name="a.gguf",
            status="waiting_retry",
            previous="active",
            retry_at=NOW + 2,
            error_kind="rate_limited",
            error_message="HTTP 429 Too Many Requests from https://hub.example/x",
            ts=NOW,
        )
    )
    lines = stream.getvalue().splitlines()
    assert lines[0] == "resuming 7.1 a.gguf from 5.0 MiB"
    assert lines[1] == group_line(group_view(), NOW + 3.5)
    assert "25%" in lines[1] and "12.5 MB/s" in lines[1]
    assert lines[2] == "retrying 7.1 a.gguf in 2 s: 429 from hub.example"
    assert len(lines) == 3


def test_event_lines_for_completion_and_failure() -> None:
    done = ev.FileCompleted(
        ref="7.1", group_id=7, name="a.gguf", path="/m/a.gguf", sha256="ab" * 32, size=MIB
    )
    assert event_line(done, NOW) == "done 7.1 a.gguf (1.0 MiB, sha256 abababababab…)"
    finished = ev.GroupFinished(
        group_id=7,
        name="o/n:Q4_K_M",
        status="partial",
        completed=2,
        failed=1,
        cancelled=0,
        dest_dir="/m",
    )
    assert event_line(finished, NOW) == "finished o/n:Q4_K_M: partial (2 completed, 1 failed)"
    progress = ev.FileProgress(
        ref="7.1", group_id=7, name="a", downloaded=1, total=2, speed=None, eta=None
    )
    assert event_line(progress, NOW) is None


def test_json_display_writes_one_event_per_line_and_ends_each_group() -> None:
    stream, messages = io.StringIO(), io.StringIO()
    display = JsonDisplay(stream, messages)
    display.track([7])
    finished = ev.GroupFinished(
        group_id=7, name="n", status="completed", completed=1, failed=0, cancelled=0, dest_dir="/m"
    )
    late = ev.GroupProgress(
        group_id=7,
        name="n",
        downloaded=1,
        total=1,
        speed=None,
        eta=None,
        files_done=1,
        files_total=1,
    )
    for event in (
        ev.FileStarted(ref="7.1", group_id=7, name="a", offset=0, total=1, seq=1, ts=NOW),
        ev.FileProgress(
            ref="7.1", group_id=7, name="a", downloaded=0, total=1, speed=None, eta=None, seq=2
        ),
        ev.FileStarted(ref="8.1", group_id=8, name="b", offset=0, total=1, seq=2, ts=NOW),
        dataclasses.replace(finished, seq=3, ts=NOW),
        dataclasses.replace(late, seq=4, ts=NOW),
    ):
        display.on_event(event)
    display.message("a summary")
    rows = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["type"] for r in rows] == ["file_started", "file_progress", "group_finished"]
    assert rows[-1]["status"] == "completed" and rows[-1]["seq"] == 3
    assert "speed" not in rows[1] and "eta" not in rows[1]  # unknown is left out, not zero
    assert messages.getvalue() == "a summary\n"


# ------------------------------------------------------------------------------ many downloads


def many_groups(count: int) -> list[GroupView]:
    """`count` one-file downloads (as `get -I list` of plain URLs makes): the first 40 done
    but #7 (failed), then 3 moving, #44 waiting to retry, the rest queued."""
    groups = []
    queued = 0
    for gid in range(1, count + 1):
        status = "completed" if gid <= 40 else "active" if gid <= 43 else "queued"
        changes: dict[str, Any] = {"status": status}
        if gid == 7:
            status = "failed"
            changes = {"status": "failed", "error_message": "Not found (HTTP 404)"}
        elif gid == 44:
            changes = {
                "status": "waiting_retry",
                "retry_at": NOW + 9,
                "error_kind": "server_busy",
                "error_message": "HTTP 503 Service Unavailable from http://cdn.example/x",
            }
        elif status == "queued":
            queued += 1
            changes["position"] = queued
        moving = status == "active"
        done = MIB if status == "completed" else MIB // 4 if moving else 0
        speed = 1_000_000.0 if moving else None
        f = file_view(
            1,
            ref=f"{gid}.1",
            name=f"file-{gid:03d}.bin",
            downloaded=done,
            total=MIB,
            speed=speed,
            **changes,
        )
        groups.append(
            group_view(
                f,
                id=gid,
                name=f"file-{gid:03d}.bin",
                status=status,
                position=changes.get("position"),
                speed=speed,
            )
        )
    return groups


def test_many_downloads_collapse_to_a_summary_row_and_what_needs_attention() -> None:
    groups = many_groups(200)
    lines = render_text(groups).splitlines()
    head = lines[0]
    assert head.startswith("200 downloads 39/200 done")
    assert "3 active, 157 queued, 39 done, 1 failed" in head
    assert "3.0 MB/s" in head  # the manager's speeds of the moving ones, summed
    assert "20%  39.8 MiB / 200.0 MiB" in head
    names = [line.split()[0] for line in lines[1:]]
    # Moving first, then waiting to retry, then failed; done and plainly queued are counted only.
    assert names == ["file-041.bin", "file-042.bin", "file-043.bin", "file-044.bin", "file-007.bin"]
    assert "retrying in 9 s: 503 from cdn.example" in lines[4]
    assert len(lines) <= 2 + MAX_GROUP_ROWS

    # A few downloads keep a row each, as before.
    few = render_text(groups[38:43]).splitlines()
    assert not few[0].startswith("5 downloads")
    rows = [line.split()[0] for line in few]
    assert rows == ["file-039.bin", "file-040.bin"] + [
        name
        for g in (41, 42, 43)
        for name in (f"file-{g:03d}.bin",) * 2  # model, then its file
    ]


def test_many_moving_downloads_are_capped_with_a_count() -> None:
    groups = [
        dataclasses.replace(g, status="active", position=None)
        for g in many_groups(40)[10:40]  # 30 moving at once (-j 30)
    ]
    lines = render_text(groups).splitlines()
    assert lines[0].startswith("30 downloads")
    assert lines[-1].strip() == f"… {30 - MAX_GROUP_ROWS} more"
    assert len(lines) == 1 + MAX_GROUP_ROWS + 1


def test_plain_display_with_many_downloads_prints_one_summary_line_per_tick() -> None:
    stream = io.StringIO()
    display = PlainDisplay(stream, interval=1.0)
    groups = many_groups(200)
    display.track(g.id for g in groups)
    display.on_views(groups)
    for event in (
        ev.GroupQueued(group_id=150, name="file-150.bin", position=107, files=1, total=MIB),
        ev.FileStarted(ref="45.1", group_id=45, name="file-045.bin", offset=0, total=MIB),
        ev.FileStarted(ref="46.1", group_id=46, name="file-046.bin", offset=MIB // 2, total=MIB),
        ev.FileCompleted(
            ref="41.1", group_id=41, name="file-041.bin", path="/m/f", sha256="cd" * 32, size=MIB
        ),
        ev.GroupFinished(
            group_id=41,
            name="file-041.bin",
            status="completed",
            completed=1,
            failed=0,
            cancelled=0,
            dest_dir="/m",
        ),
    ):
        display.on_event(event)
    display.tick(NOW)
    display.tick(NOW + 1.5)
    display.tick(NOW + 3)
    lines = stream.getvalue().splitlines()
    # Routine events (queued, started from zero, a download completed) have no line of their
    # own among many; a resume and a file's `done` line do.
    assert lines[0] == "resuming 46.1 file-046.bin from 512.0 KiB"
    assert lines[1].startswith("done 41.1 file-041.bin (1.0 MiB, sha256 cdcdcdcdcdcd")
    periodic = lines[2:]
    summaries = [line for line in periodic if line.startswith("200 downloads: ")]
    assert len(summaries) == 2
    assert "(2 active, 157 queued, 40 done, 1 failed)" in summaries[0]
    # Per tick: the summary and one line per moving download, never one per download.
    assert len(periodic) == 2 * (1 + 2)
    assert all(line.startswith("  file-04") for line in periodic if line not in summaries)


def test_status_names_the_host_that_holds_an_active_file_on_a_shared_queue() -> None:
    from modelfetch.render.listing import files_table

    held = file_view(1, worker="gpu-07/4242/a1b2c3")
    mine = file_view(2, status="queued", position=1)
    buffer = io.StringIO()
    console = Console(file=buffer, width=160, force_terminal=False, color_system=None)
    console.print(files_table(group_view(held, mine), NOW))
    rows = {line.split()[0]: line for line in buffer.getvalue().splitlines() if line[:2] == "7."}
    assert "active on gpu-07" in rows["7.1"]
    assert "4242" not in rows["7.1"]  # the host, not the whole worker id
    assert " on " not in rows["7.2"]  # one host's queue (SQLite) names no worker


def test_ls_names_the_hosts_running_a_download_on_a_shared_queue() -> None:
    from modelfetch.render.listing import queue_table

    def ls_row(v: GroupView) -> str:
        buffer = io.StringIO()
        console = Console(file=buffer, width=160, force_terminal=False, color_system=None)
        console.print(queue_table([v], NOW))
        (row,) = [line for line in buffer.getvalue().splitlines() if line.split()[:1] == ["7"]]
        return row

    one_host = ls_row(group_view(file_view(1), file_view(2)))
    assert "active" in one_host and " on " not in one_host  # one host's queue (SQLite)
    held = group_view(
        file_view(1, worker="gpu-07/4242/a1b2c3"),
        file_view(2, worker="gpu-07/4242/a1b2c3"),
        file_view(3, worker="gpu-08/17/ffffff"),
    )
    assert "active on gpu-07, gpu-08 " in ls_row(held)  # each host once, in file order
    many = group_view(*(file_view(n, worker=f"gpu-0{n}/1/abc") for n in range(1, 5)))
    assert "active on gpu-01, gpu-02 +2" in ls_row(many)


def test_a_worker_is_kept_for_active_files_only() -> None:
    from modelfetch.core.models import FileRecord, FileStatus
    from modelfetch.views import file_view as view_of_record

    def record(status: FileStatus) -> FileRecord:
        return FileRecord(
            group_id=7, index=1, name="a.bin", url="u", dest="/m/a.bin", status=status
        )

    holder = "gpu-07/4242/a1b2c3"
    assert view_of_record(record(FileStatus.ACTIVE), None, worker=holder).worker == holder
    assert view_of_record(record(FileStatus.ACTIVE), None).worker is None
    assert view_of_record(record(FileStatus.COMPLETED), None, worker=holder).worker is None
    assert view_of_record(record(FileStatus.QUEUED), 1, worker=holder).worker is None
