"""What a person (or a script) sees while downloads run: a live rich display, plain lines, NDJSON.

All three are fed the same way: `on_views` with fresh GroupViews (about once a second), `on_event`
with every event, and `tick(now)` a few times a second to redraw. Nothing here computes a speed
or an ETA: both come from the manager's estimator, through the views and the progress events,
and read `—` while unknown. Nothing here does I/O except writing to the stream it was given, and
every time-dependent word ("retrying in 12 s") takes `now` (epoch seconds) as a parameter.

rich is imported by what draws (the live display, the tables, the summary), inside the functions
that draw: the words and the plain and NDJSON displays do without it.
"""

from modelfetch.render.collapse import MANY_GROUPS, MAX_GROUP_ROWS, many_line, summary_words
from modelfetch.render.display import Display
from modelfetch.render.listing import files_table, group_progress, queue_table
from modelfetch.render.live import MAX_FILE_ROWS, LiveDisplay, render_groups
from modelfetch.render.ndjson import JsonDisplay
from modelfetch.render.plain import PlainDisplay
from modelfetch.render.summary import completed_line, paused_hint, print_summary
from modelfetch.render.words import (
    STALL_AFTER,
    event_line,
    file_state,
    group_line,
    group_state,
    short_error,
)

__all__ = [
    "MANY_GROUPS",
    "MAX_FILE_ROWS",
    "MAX_GROUP_ROWS",
    "STALL_AFTER",
    "Display",
    "JsonDisplay",
    "LiveDisplay",
    "PlainDisplay",
    "completed_line",
    "event_line",
    "file_state",
    "files_table",
    "group_line",
    "group_progress",
    "group_state",
    "many_line",
    "paused_hint",
    "print_summary",
    "queue_table",
    "render_groups",
    "short_error",
    "summary_words",
]
