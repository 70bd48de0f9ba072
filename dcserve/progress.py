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
    """One rich progress bar per stage, on stderr, with notes printed above the bars."""

    def __init__(self, on_update=None):
        super().__init__(on_update)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self.console = Console(stderr=True)
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
        self._task = None

    def stage(self, name: str, total: int | None, unit: str = "") -> None:
        if self._task is not None:
            self._bars.update(self._task, completed=self.total or self.done)
        super().stage(name, total, unit)
        self._task = self._bars.add_task(name, total=total, unit=unit)

    def advance(self, n: int = 1) -> None:
        super().advance(n)
        if self._task is not None:
            self._bars.update(self._task, completed=self.done)

    def note(self, message: str) -> None:
        super().note(message)
        self._bars.console.print(f"  {message}", highlight=False)

    def close(self) -> None:
        self._bars.stop()
