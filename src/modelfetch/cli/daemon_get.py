"""`modelfetch get` through a running daemon, on a pipe: one batch request, then the event stream.

When a daemon serves the home, `get` does no downloading itself: it hands the list over and
shows what happens. Here that is done with the standard library only (`remote_light`), the
plain display and a rich-free summary, so the command costs little more than starting Python:
the whole list goes in one `POST /api/downloads:batch` (recorded in waves by the daemon),
and `GET /api/events?since=` replays everything that batch caused, so no line is lost between
the request and the stream. The output and exit statuses are those of `run_get` with a plain
display; on a terminal, with --json or --quiet, `run_get` (rich, aiohttp) is used instead.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from modelfetch.cli.errors import EXIT_FAILED, EXIT_OK, exit_code_for, report
from modelfetch.cli.follow import FINISHED, RELOAD, TICK
from modelfetch.core.errors import ModelfetchError

if TYPE_CHECKING:
    from modelfetch.cli.get_options import GetOptions
    from modelfetch.config import Config
    from modelfetch.core import events as ev
    from modelfetch.remote_light import DaemonClient, EventReader, Pending
    from modelfetch.render.plain import PlainDisplay
    from modelfetch.views import GroupView

__all__ = ["get_via_daemon", "light_path_applies", "run_get_via_daemon"]

_BUSY = frozenset({"queued", "active", "waiting_retry"})
# What following many downloads on a pipe uses (`GET /api/events?types=`): their states and
# the lines of their ends, retries, pauses and resumes. Not their progress, queue positions
# or arrivals (the batch's answer has those): a third of the events of a list of small files.
# The periodic progress line reads the views just before it instead.
_FOLLOWED_WHEN_MANY = (
    "status_changed",
    "file_started",
    "file_completed",
    "file_failed",
    "cancelled",
    "group_finished",
    "notice",
)
_EXIT_INTERRUPTED = 130
_DRAIN_GRACE = 2.0  # seconds to wait for the group_finished of what ended (as EventFeed.drain)


def get_via_daemon(
    debug: bool, prepare: Callable[[], tuple[Config, GetOptions]], hint: Callable[[], str]
) -> bool:
    """`get` through the daemon, before any event loop exists (asyncio's import alone is a
    noticeable part of this path); errors are reported as `execute` reports them. False when
    this path does not apply (a terminal, offline, no daemon): the caller then runs `get` as
    usual. Its exit status is raised as typer.Exit (none for success)."""
    import typer

    from modelfetch.cli.errors import guarded

    if not _plain_stdout():
        return False

    def attempt() -> int | None:
        cfg, options = prepare()
        if cfg.offline or not light_path_applies(options):
            return None
        from modelfetch.cli.backends import refuse_unusable_network
        from modelfetch.cli.get_options import parse_rate_limit
        from modelfetch.cli.specs import check_specs

        check_specs(options.specs, cfg)
        rate = parse_rate_limit(options.limit_rate)
        refuse_unusable_network(cfg)
        return run_get_via_daemon(cfg, options, rate=rate, resume_hint=hint(), debug=debug)

    code = guarded(debug, attempt)
    if code is None:
        return False
    if code:
        raise typer.Exit(code)
    return True


def _plain_stdout() -> bool:
    if os.environ.get("FORCE_COLOR") or os.environ.get("TTY_COMPATIBLE"):
        return False  # rich would treat stdout as a terminal
    return not sys.stdout.isatty()


def light_path_applies(options: GetOptions) -> bool:
    """Plain output only: a terminal gets the live (rich) display, --json and --quiet their own."""
    if options.json or options.quiet:
        return False
    return _plain_stdout()


def run_get_via_daemon(
    cfg: Config,
    options: GetOptions,
    *,
    rate: int | None,
    resume_hint: str,
    debug: bool,
    client: DaemonClient | None = None,
) -> int | None:
    """`run_get` against the daemon serving `cfg.home`; None when none runs (the caller then
    works in this process, as before) or when it is too old to take a batch (the caller then
    drives it as before)."""
    from modelfetch.remote_light import find_daemon

    if client is None:
        client = find_daemon(cfg.home)
    if client is None:
        return None
    _token_note(client, options)
    if options.jobs is not None:
        client.call("PUT", "/api/limits", _limits(max_active=options.jobs))
    if rate is not None:
        client.call("PUT", "/api/limits", _limits(rate_limit=rate))
    run = _Run(client, debug)
    try:
        # The list goes first: the daemon probes and queues it while this process imports
        # and sets up what shows the result.
        run.submit(cfg, options)
        display = run.show()
        return run.go()
    except KeyboardInterrupt:
        display = run.show()
        display.message("Pausing… (press Ctrl-C again to quit at once)")
        run.queued_meanwhile()
        for gid in run.gids:
            try:
                client.call("POST", f"/api/downloads/{gid}/pause")
            except ModelfetchError:
                continue  # finished meanwhile: nothing to pause
        display.end()
        out = sys.stdout
        if not run.gids:
            print("Stopped before anything was queued.", file=out)
            return _EXIT_INTERRUPTED
        count = "1 download" if len(run.gids) == 1 else f"{len(run.gids)} downloads"
        print(f"Paused {count}; the bytes on disk are kept. To resume, run:", file=out)
        print(f"  {resume_hint}", file=out, flush=True)
        return _EXIT_INTERRUPTED
    finally:
        run.close()


def _busy_in(files: dict[str, str]) -> int:
    return sum(status in _BUSY for status in files.values())


def _limits(**caps: int) -> dict[str, int | None]:
    body: dict[str, int | None] = dict.fromkeys(
        (
            "max_active",
            "rate_limit",
            "max_connections",
            "max_connections_per_host",
            "connections_per_file",
        )
    )
    body.update(caps)
    return body


def _token_note(client: DaemonClient, options: GetOptions) -> None:
    """As `refuse_unsupported`: a Hub token stays here when the daemon is elsewhere."""
    from modelfetch.remote_trust import client_hub_token

    if client.on_this_machine:
        return
    if options.token is not None or client_hub_token() is not None:
        print(
            "note: the modelfetch daemon serving this home is not on this machine (or too "
            "old to take a token), so your token is not sent: it downloads with its own",
            file=sys.stderr,
            flush=True,
        )


class _Run:
    """One `get` through the daemon: submit, follow, summarize."""

    def __init__(self, client: DaemonClient, debug: bool) -> None:
        self.client = client
        self._display: PlainDisplay | None = None
        self.debug = debug
        self._parts: list[list[str]] = []
        self._body: dict[str, Any] = {}
        self._headers: dict[str, str] | None = None
        self._unanswered: Pending | None = None  # a batch sent whose answer was not read
        self.gids: list[int] = []
        self.errors: list[int] = []
        self.events: EventReader | None = None
        # File statuses of our downloads, by group: seeded from the batch's views, then kept
        # current by the events published after them (`_seq`).
        self.statuses: dict[int, dict[str, str]] = {}
        self._busy_files = 0  # of those, how many are queued, active or waiting to retry
        self.finished: set[int] = set()
        self._seq = 0
        self._narrow = False  # following without progress events (`_FOLLOWED_WHEN_MANY`)

    def close(self) -> None:
        if self.events is not None:
            self.events.close()

    @property
    def display(self) -> PlainDisplay:
        assert self._display is not None, "show() first"
        return self._display

    def show(self) -> PlainDisplay:
        """The plain display, begun (made on first use)."""
        if self._display is None:
            from modelfetch.cli.follow import _progress_interval
            from modelfetch.render.plain import PlainDisplay

            self._display = PlainDisplay(sys.stdout, interval=_progress_interval())
            self._display.begin()
        return self._display

    def submit(self, cfg: Config, options: GetOptions) -> None:
        """Send the first batch of the list (a longer list than a batch takes is sent in
        parts, the others once this one is answered)."""
        from modelfetch.remote_light import BATCH_SIZE
        from modelfetch.remote_trust import client_hub_token

        self._body = {
            "quant": options.quant,
            "revision": options.revision,
            "include": list(options.include),
            "exclude": list(options.exclude),
            "layout": options.layout or cfg.layout,
            "models_dir": str(options.root.expanduser().absolute()) if options.root else None,
            "dest_dir": (
                str(options.urls_dir.expanduser().absolute()) if options.urls_dir else None
            ),
        }
        token = options.token or client_hub_token()
        self._headers = {"X-Hub-Token": token} if token and self.client.on_this_machine else None
        specs = list(options.specs)
        self._parts = [specs[i : i + BATCH_SIZE] for i in range(0, len(specs), BATCH_SIZE)]
        self._unanswered = self._send(self._parts[0]) if self._parts else None

    def queued_meanwhile(self) -> None:
        """After a Ctrl-C: the batch sent and not yet answered is queued by the daemon all the
        same, so its answer is read (a second Ctrl-C stops waiting) for the ids to pause."""
        pending, self._unanswered = self._unanswered, None
        if pending is None:
            return
        try:
            answer = pending.answer()
        except ModelfetchError:
            return  # refused, or an older daemon: nothing of it was queued
        for item in answer.get("results", []):
            download = item.get("download") if item.get("error") is None else None
            if isinstance(download, dict) and download.get("id") not in self.gids:
                self.gids.append(int(download["id"]))

    def _send(self, part: list[str]) -> Pending:
        return self.client.send(
            "POST", "/api/downloads:batch", {**self._body, "specs": part}, headers=self._headers
        )

    def go(self) -> int | None:
        from modelfetch.remote_codec import RouteMissingError, batch_item_error, group_view_of

        views: dict[int, GroupView] = {}
        since: int | None = None
        # One request for the whole list (a longer list than a batch takes: one per batch).
        for number, part in enumerate(self._parts):
            if number > 0:
                self._unanswered = self._send(part)
            pending = self._unanswered
            assert pending is not None
            try:
                answer = pending.answer()
                self._unanswered = None
            except RouteMissingError:
                self._unanswered = None
                if number == 0:
                    return None  # an older daemon, without batches: `run_get` adds one by one
                raise
            since = answer["since"] if since is None else since
            self._seq = int(answer["seq"])
            for item in answer["results"]:
                if item.get("error") is not None:
                    error = batch_item_error(item)
                    report(error, self.debug, what=item["spec"])
                    self.errors.append(exit_code_for(error))
                    continue
                view = group_view_of(item["download"])
                views[view.id] = view
                if view.id not in self.gids:
                    self.gids.append(view.id)
        if not self.gids:
            return max(self.errors) if self.errors else EXIT_FAILED
        wanted = set(self.gids)
        for view in views.values():
            self._set_files(view.id, {f.ref: f.status for f in view.files})
        before = {gid: views[gid].status for gid in self.gids}
        self.display.track(wanted)
        self._narrow = self.display.many()  # its one summary line needs no progress events
        self.events = self.client.open_events(since, _FOLLOWED_WHEN_MANY if self._narrow else ())
        self._put_first([views[gid] for gid in self.gids])
        self.display.on_views([views[gid] for gid in self.gids])
        self._follow(wanted)
        final = self._views(wanted)
        ended = {v.id for v in final if v.status in FINISHED and before.get(v.id) not in FINISHED}
        self._drain(ended)
        self.display.on_views(final)
        self.display.tick(time.time())
        self.display.end()
        return self._summary(final)

    def _put_first(self, views: Sequence[GroupView]) -> None:
        """What an earlier Ctrl-C paused runs again, and what the user waits for goes first
        (as `get._put_first`), asked only where it changes something: positions 1..n, in the
        order given, mean they are first already."""
        resumed = False
        for view in views:
            if any(f.status == "paused" for f in view.files):
                self.client.call("POST", f"/api/downloads/{view.id}/resume")
                resumed = True
        ours = [v for v in views if v.position]
        if not resumed and [v.position for v in ours] == list(range(1, len(ours) + 1)):
            return
        for view in reversed(views):
            try:
                self.client.call("POST", f"/api/downloads/{view.id}/move", {"position": 1})
            except ModelfetchError:
                continue  # not waiting (active, done): it cannot move

    def _follow(self, wanted: set[int]) -> None:
        """Events to the display until every download of ours is settled (paused counts)."""
        assert self.events is not None
        # The plain display draws from its views only in its periodic lines (every `interval`
        # s), and events keep them current in between: reloading every listing (a snapshot
        # the daemon builds) more often than that buys nothing on a pipe.
        reload = max(RELOAD, self.display.interval)
        next_reload = time.monotonic() + reload
        next_tick = 0.0
        while self._busy():
            now = time.monotonic()
            if now >= next_reload and not self._narrow:
                self.display.on_views(self._views(wanted))
                next_reload = time.monotonic() + reload
            if now >= next_tick:
                wall = time.time()
                if self._narrow and self.display.due(wall):
                    # No progress comes on a narrowed stream: the line shows views read now.
                    self.display.on_views(self._views(wanted))
                self.display.tick(wall)
                next_tick = now + TICK
            message = self.events.next(timeout=max(0.0, next_tick - time.monotonic()))
            if message is None:
                if self.events.ended:
                    return  # the daemon stopped: as RemoteManager.wait, nothing more to wait for
                continue
            self._apply(message.event, message.data, message.id)

    def _apply(self, kind: str, data: str, seq_text: str | None) -> None:
        import json

        from modelfetch.core import events as ev

        try:
            event = ev.from_dict(json.loads(data))
        except (ValueError, TypeError):
            return  # a type this version does not know
        if isinstance(event, ev.Snapshot | ev.SnapshotPage):
            # The daemon no longer had what we asked to replay (or we fell behind): the
            # snapshot's statuses are current, the events after it apply on top. A long
            # queue's snapshot comes in pages, each with the snapshot's seq.
            for item in event.items:
                gid = int(item["id"])
                if gid in self.statuses:
                    self._set_files(gid, {f["ref"]: f["status"] for f in item.get("files", [])})
                    if item.get("status") in FINISHED:
                        # Its group_finished came before the snapshot: waiting for it would
                        # only run out the drain's grace.
                        self.finished.add(gid)
            self._seq = event.seq
            return
        self._see(event, seq_text)
        self.display.on_event(event)

    def _see(self, event: ev.Event, seq_text: str | None) -> None:
        from modelfetch.core import events as ev

        if isinstance(event, ev.GroupFinished):
            self.finished.add(event.group_id)
        seq = int(seq_text) if seq_text and seq_text.isdigit() else event.seq
        if seq <= self._seq:
            return  # already in the views the statuses were seeded from
        if isinstance(event, ev.StatusChanged) and event.group_id in self.statuses:
            files = self.statuses[event.group_id]
            self._busy_files += (event.status in _BUSY) - (files.get(event.ref) in _BUSY)
            files[event.ref] = event.status

    def _set_files(self, gid: int, files: dict[str, str]) -> None:
        old = self.statuses.get(gid, {})
        self._busy_files += _busy_in(files) - _busy_in(old)
        self.statuses[gid] = files

    def _busy(self) -> bool:
        # Kept as a count: asked after every event, and 200 downloads make ~1,500 of them.
        return self._busy_files > 0

    def _drain(self, ended: set[int]) -> None:
        """Until a group_finished was seen for each download that ended in this run (at most
        _DRAIN_GRACE), so its line is printed as with the manager in this process."""
        assert self.events is not None
        deadline = time.monotonic() + _DRAIN_GRACE
        while not ended <= self.finished and not self.events.ended:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            message = self.events.next(timeout=left)
            if message is not None:
                self._apply(message.event, message.data, message.id)

    def _views(self, wanted: set[int]) -> list[GroupView]:
        from modelfetch.remote_codec import group_view_of

        return [group_view_of(item) for item in self.client.downloads(wanted)]

    def _summary(self, final: list[GroupView]) -> int:
        from modelfetch.render.plaintext import PlainConsole
        from modelfetch.render.summary import print_summary

        console = PlainConsole(sys.stdout)
        order = {gid: i for i, gid in enumerate(self.gids)}
        ok = print_summary(sorted(final, key=lambda v: order[v.id]), console, time.time())
        if ok and not self.errors:
            return EXIT_OK
        console.print("Run the same command again to retry; it continues from the bytes on disk.")
        return max(self.errors) if self.errors else EXIT_FAILED
