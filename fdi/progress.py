"""Progress reporting shared by every long loop of the library.

The library never imports a UI: long loops (extraction over many pairs, inversion, sampling,
training) take an optional ``progress`` callback ``progress(done: int, total: int) -> None`` that is
called after each unit of work. A callback may raise (ComfyUI's interrupt does,
:class:`fdi.errors.FDIInterrupted` is the library's own) to stop the loop cleanly: loops only ever
write their results after the last step, so nothing half-finished is left behind.

:func:`tqdm_progress` gives the command line a tqdm bar with the same signature.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

ProgressCallback = Callable[[int, int], None]


@contextmanager
def tqdm_progress(
    desc: str, total: int, unit: str = "it", enabled: bool = True, lazy: bool = False
) -> Iterator[Optional[ProgressCallback]]:
    """Yield a progress callback that drives a tqdm bar (or ``None`` when disabled). ``lazy``: the bar appears at
    the callback's first call only (for work that may turn out to be nothing)."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    state = {"done": 0, "bar": None}

    def open_bar(n: int):
        state["bar"] = tqdm(total=n, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
        return state["bar"]

    if not lazy:
        open_bar(total)

    def callback(done: int, total_: int) -> None:
        bar = state["bar"] or open_bar(total_)
        if total_ != bar.total:
            bar.total = total_
        bar.update(done - state["done"])
        state["done"] = done

    try:
        yield callback
    finally:
        if state["bar"] is not None:
            state["bar"].close()


def report(progress: Optional[ProgressCallback], done: int, total: int) -> None:
    """Call ``progress(done, total)`` when a callback was given."""
    if progress is not None:
        progress(done, total)
