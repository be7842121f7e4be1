from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest

from modelfetch.core.events import (
    EVENT_TYPES,
    Cancelled,
    Event,
    FileCompleted,
    FileFailed,
    FileProgress,
    FileStarted,
    GroupFinished,
    GroupProgress,
    GroupQueued,
    Missed,
    Notice,
    QueueChanged,
    Snapshot,
    SnapshotPage,
    StatusChanged,
    from_dict,
    to_dict,
)

ONE_OF_EACH: list[Event] = [
    GroupQueued(group_id=12, name="acme/llama:Q4_K_M", files=3, total=30 << 30, position=2),
    GroupQueued(group_id=13, name="f.bin", files=1, total=None, position=None),
    FileStarted(ref="12.1", group_id=12, name="m-00001-of-00003.gguf", offset=4096, total=10 << 30),
    FileProgress(
        ref="12.1", group_id=12, name="m.gguf", downloaded=5, total=10, speed=1.5e6, eta=3.25
    ),
    GroupProgress(
        group_id=12,
        name="acme/llama:Q4_K_M",
        downloaded=5,
        total=30,
        speed=2e6,
        eta=12.0,
        files_done=1,
        files_total=3,
    ),
    StatusChanged(
        ref="12.2",
        group_id=12,
        name="m.gguf",
        status="waiting_retry",
        previous="active",
        reason="rate limited (HTTP 429)",
        retry_at=1_700_000_030.0,
        error_kind="rate_limited",
        error_message="Rate limited (HTTP 429) by huggingface.co",
    ),
    StatusChanged(ref="12.2", group_id=12, name="m.gguf", status="active", previous="queued"),
    FileCompleted(
        ref="12.3", group_id=12, name="m.gguf", path="/models/m.gguf", sha256="ab" * 32, size=99
    ),
    FileFailed(ref="12.3", group_id=12, name="m.gguf", error_kind="not_found", message="Not found"),
    Cancelled(ref="12", group_id=12, name="acme/llama:Q4_K_M"),
    Cancelled(ref="12.3", group_id=12, name="m.gguf"),
    GroupFinished(
        group_id=12,
        name="acme/llama:Q4_K_M",
        status="partial",
        completed=2,
        failed=1,
        cancelled=0,
        dest_dir="/models/acme_llama",
    ),
    Notice(message="resuming 3 downloads"),
    Notice(message="disk almost full", level="warning", ref="12"),
    Missed(count=17),
    Snapshot(items=[{"ref": "12", "status": "active", "downloaded": 5}]),
    Snapshot(items=[{"ref": "12", "status": "queued"}], next=12),
    SnapshotPage(items=[{"ref": "13", "status": "queued"}], next=None, as_of=44),
    QueueChanged(positions={"12": 1, "14": 2}),
]


def test_every_type_is_registered_once_under_a_snake_case_name() -> None:
    assert set(EVENT_TYPES) == {
        "group_queued",
        "file_started",
        "file_progress",
        "group_progress",
        "status_changed",
        "file_completed",
        "file_failed",
        "cancelled",
        "group_finished",
        "notice",
        "missed",
        "snapshot",
        "snapshot_page",
        "queue_changed",
    }
    for name, cls in EVENT_TYPES.items():
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", name)
        assert cls.type == name
        assert issubclass(cls, Event)
    assert {type(e) for e in ONE_OF_EACH} == set(EVENT_TYPES.values())


@pytest.mark.parametrize("event", ONE_OF_EACH, ids=lambda e: e.type)
def test_round_trip_through_json(event: Event) -> None:
    stamped = dataclasses.replace(event, seq=41, ts=1_700_000_000.5)
    wire = json.loads(json.dumps(to_dict(stamped)))
    assert wire["type"] == event.type
    assert wire["seq"] == 41
    assert wire["ts"] == 1_700_000_000.5
    assert from_dict(wire) == stamped


def test_fields_are_flat_beside_type_seq_and_ts() -> None:
    event = Cancelled(ref="12.3", group_id=12, name="m.gguf", seq=3, ts=2.0)
    assert to_dict(event) == {
        "type": "cancelled",
        "seq": 3,
        "ts": 2.0,
        "ref": "12.3",
        "group_id": 12,
        "name": "m.gguf",
    }


@pytest.mark.parametrize(
    "event",
    [
        FileProgress(
            ref="1.1", group_id=1, name="a", downloaded=0, total=None, speed=None, eta=None
        ),
        GroupProgress(
            group_id=1,
            name="a",
            downloaded=0,
            total=None,
            speed=None,
            eta=None,
            files_done=0,
            files_total=1,
        ),
        StatusChanged(ref="1.1", group_id=1, name="a", status="queued", previous="paused"),
    ],
    ids=lambda e: e.type,
)
def test_unknown_values_are_omitted_never_sent_as_zero(event: Event) -> None:
    wire = to_dict(event)
    for key in ("speed", "eta", "retry_at", "error_kind", "error_message"):
        assert key not in wire
    assert from_dict(wire) == event


def test_a_real_zero_speed_is_kept() -> None:
    event = FileProgress(
        ref="1.1", group_id=1, name="a", downloaded=7, total=9, speed=0.0, eta=None
    )
    wire = to_dict(event)
    assert wire["speed"] == 0.0
    assert "eta" not in wire


def test_an_unknown_total_stays_explicit() -> None:
    # An unknown total is a fact about the file, sent as null; only live estimates are omitted.
    wire = to_dict(FileStarted(ref="1.1", group_id=1, name="a", offset=0, total=None))
    assert wire["total"] is None


def test_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown event type: 'download_progress'"):
        from_dict({"type": "download_progress", "seq": 1})
    with pytest.raises(ValueError, match="unknown event type"):
        from_dict({"seq": 1})
    with pytest.raises(ValueError, match="unknown event type"):
        from_dict({"type": "event"})  # the base is not an event on the wire


def test_a_missing_required_field_is_refused() -> None:
    wire = to_dict(Missed(count=2))
    del wire["count"]
    with pytest.raises(ValueError, match="missed event without its 'count' field"):
        from_dict(wire)


def test_fields_from_a_newer_writer_are_ignored_and_defaults_fill_in() -> None:
    event = from_dict({"type": "notice", "message": "hello", "colour": "green"})
    assert event == Notice(message="hello", level="info", ref=None, seq=0, ts=0.0)


def test_events_are_immutable() -> None:
    event = Missed(count=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.count = 2  # type: ignore[misc]


def test_snapshot_items_are_copied_into_the_wire_form() -> None:
    items: list[dict[str, Any]] = [{"ref": "1", "status": "queued"}]
    wire = to_dict(Snapshot(items=items))
    wire["items"][0]["status"] = "tampered"
    assert items[0]["status"] == "queued"


def test_events_take_keywords_only() -> None:
    with pytest.raises(TypeError):
        Missed(3)  # type: ignore[call-arg]
