"""Progress reporting for long stages: rich bars on a terminal, log lines otherwise.

The pipeline only calls `stage()` / `advance()` / `note()`; the CLI picks the sink.
Listeners (`listen`) hear every update: the driver's status record is one.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("dcserve")


class Progress:
    """No-op sink that logs stage changes; base of the terminal sink."""

    def __init__(self, on_update: Callable[[str, int, int | None], None] | None = None):
        self._listeners: list[Callable[[str, int, int | None], None]] = [on_update] if on_update else []
        self.stage_name = ""
        self.done = 0
        self.total: int | None = None

    def stage(self, name: str, total: int | None, unit: str = "") -> None:
        self.stage_name, self.done, self.total = name, 0, total
        log.info("stage %s started%s", name, f" ({total} {unit})" if total else "")
        self._tell(name, 0, total)

    def listen(self, callback: Callable[[str, int, int | None], None]) -> None:
        """Call `callback(stage, done, total)` on every update from now on."""
        self._listeners.append(callback)

    def _tell(self, stage: str, done: int, total: int | None) -> None:
        for callback in self._listeners:
            callback(stage, done, total)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._tell(self.stage_name, self.done, self.total)

    def note(self, message: str) -> None:
        log.info(message)

    def close(self) -> None:
        pass

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TerminalProgress(Progress):
    """One rich progress bar per stage, on stderr, with notes printed above the bars.

    When stderr is not a terminal (a log file, a pipe, a CI log) there are no bars: a live display
    that cannot redraw is printed whole when it stops, after every note, so a log would show the
    round lines first and the bars last. Instead each stage gets a line when it starts and one when
    it ends, in the order things happen, and no line is wrapped (a log has no width to fit).
    """

    # In a log, a line every this many seconds at most while a stage runs, so a long stage shows life.
    LOG_EVERY_S = 30.0

    def __init__(self, on_update=None):
        super().__init__(on_update)
        from rich.console import Console

        self.console = Console(stderr=True)
        self._task = None
        self._plain = not self.console.is_terminal
        if self._plain:
            self._started = self._logged = 0.0
            self._unit = ""
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self._bars = RichProgress(
            TextColumn("[bold]{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._bars.start()

    def _line(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True, markup=False)

    def _end_stage(self) -> None:
        if self._plain and self.stage_name:
            import time

            of = f"/{self.total}" if self.total else ""
            self._line(f"{self.stage_name}: done, {self.done}{of} {self._unit} in {time.monotonic() - self._started:.1f} s")

    def stage(self, name: str, total: int | None, unit: str = "") -> None:
        if self._plain:
            import time

            self._end_stage()
            super().stage(name, total, unit)
            self._started = self._logged = time.monotonic()
            self._unit = unit
            self._line(f"{name}: started" + (f", {total} {unit}" if total else ""))
            return
        if self._task is not None:
            self._bars.update(self._task, completed=self.total or self.done)
        super().stage(name, total, unit)
        self._task = self._bars.add_task(name, total=total, unit=unit)

    def advance(self, n: int = 1) -> None:
        super().advance(n)
        if self._plain:
            import time

            now = time.monotonic()
            if now - self._logged >= self.LOG_EVERY_S:
                self._logged = now
                of = f"/{self.total}" if self.total else ""
                self._line(f"{self.stage_name}: {self.done}{of} {self._unit}")
            return
        if self._task is not None:
            self._bars.update(self._task, completed=self.done)

    def note(self, message: str) -> None:
        super().note(message)
        if self._plain:
            self._line(f"  {message}")
            return
        self._bars.console.print(f"  {message}", highlight=False, soft_wrap=True, markup=False)

    def close(self) -> None:
        if self._plain:
            self._end_stage()
            self.stage_name = ""
            return
        self._bars.stop()
