"""Narration on a rich console (the ``bench`` extra): progress bars and notes while a scenario
runs, the summary table after it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from bench.options import Result


class Ui:
    """Progress bars and notes on a rich console (or nothing, when ``quiet``)."""

    def __init__(self, console: Console | None = None, *, quiet: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {text}")

    @contextlib.contextmanager
    def progress(self, what: str, total: float | None) -> Iterator[Callable[[float], None]]:
        """A progress bar for one phase; yields ``update(completed)``."""
        if self.quiet:
            yield lambda _done: None
            return
        columns = (
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(what, total=total)
            yield lambda done: bar.update(task, completed=done)


def render_summary(scenario: str, result: Result, console: Console) -> None:
    """The summary table of one run."""
    table = Table(title=f"push-bridge bench {scenario}", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("goal")
    for label, value, goal in result.get("summary", []):
        style = "red" if "NOT met" in goal else ("green" if goal else "")
        table.add_row(label, value, goal, style=style)
    console.print(table)
    for extra in result.get("tables", []):
        more = Table(title=extra["title"], title_justify="left")
        for i, column in enumerate(extra["columns"]):
            more.add_column(column, justify="left" if i == 0 else "right")
        for row in extra["rows"]:
            more.add_row(*row)
        console.print(more)
    m = result.get("machine", {})
    console.print(
        f"[dim]{m.get('nproc')} × {m.get('cpu_model')}, {m.get('ram_gib')} GiB, Python {m.get('python')}; "
        f"load average at start {m.get('loadavg_at_start')}; code at {m.get('git_head')}[/dim]"
    )
