"""bench.enqueue_file: the enqueue_file_1000 figure's shape and that both contenders really send (no timings)."""

from __future__ import annotations

import pytest

from bench import enqueue_file
from local.azurite import Azurite
from shared.storage.terminate_queue import ENQUEUE_THREADS

pytestmark = pytest.mark.integration


def test_the_figure_compares_two_complete_runs(azurite: Azurite) -> None:
    figure = enqueue_file.figure(azurite.connection_string, count=40, rounds=2)
    assert set(figure) == {"name", "value", "unit", "target", "met", "detail", "extra"}
    assert (figure["name"], figure["unit"], figure["target"]) == ("enqueue_file_1000", "%", 80.0)
    assert figure["value"] > 0
    assert figure["met"] == (figure["value"] >= 80.0)
    assert f"40 ids, {ENQUEUE_THREADS} threads each" in figure["detail"]


def test_a_run_that_loses_messages_is_not_a_figure(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(enqueue_file, "bare_send", lambda *args: None)  # a "ceiling" that sends nothing
    with pytest.raises(RuntimeError, match="bare left 0 of 10 messages"):
        enqueue_file.figure(azurite.connection_string, count=10, rounds=1)
