"""The kernel's local input history."""

from __future__ import annotations

from e2b_kernel.kernel.history import SESSION, CellHistory


def make() -> CellHistory:
    history = CellHistory()
    for line, code in [(1, "a = 1"), (2, "6*7"), (3, "6*7"), (4, "b")]:
        history.add(line, code)
    return history


def test_tail_with_and_without_output() -> None:
    history = make()
    assert history.query("tail", n=2) == [(SESSION, 3, "6*7"), (SESSION, 4, "b")]
    # IPython keeps no outputs by default (db_log_output): python3 answers None too.
    assert history.query("tail", n=1, output=True) == [(SESSION, 4, ("b", None))]


def test_range_in_the_current_session_only() -> None:
    history = make()
    # IPython numbers the current session's range 0, however it was asked for.
    assert history.query("range", session=0, start=2, stop=4) == [(0, 2, "6*7"), (0, 3, "6*7")]
    assert history.query("range", session=SESSION, start=4) == [(0, 4, "b")]
    assert history.query("range", session=-1, start=1) == []


def test_search_globs_unique_and_n() -> None:
    history = make()
    assert [e[1] for e in history.query("search", pattern="6?7")] == [2, 3]
    assert [e[1] for e in history.query("search", pattern="6?7", unique=True)] == [3]
    assert [e[1] for e in history.query("search", pattern="*", n=1)] == [4]
    assert history.query("unknown") == []
