"""Figure enqueue_file_1000: `batch-terminator enqueue --file` of 1,000 ids against a bare azure-storage-queue loop.

Both contenders send the same JSON messages with the same number of threads
(shared.storage.terminate_queue.ENQUEUE_THREADS) to
fresh queues on one Azurite, interleaved round by round; the value is the CLI's rate in % of the bare loop's
(medians). The CLI runs in-process through its own entry (`ops.__main__.main`): file reading, validation of every
line before the first send, settings, client and progress on stderr are inside its time; the interpreter's start
is outside both.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.queue import QueueClient, TextBase64EncodePolicy
from requests.adapters import HTTPAdapter

from local.azurite import Azurite
from ops.__main__ import main as cli_main
from ops.target import resolve_target
from shared.storage.terminate_queue import ENQUEUE_THREADS

NAME = "enqueue_file_1000"
TARGET_PERCENT = 80.0


def job_ids(count: int) -> list[str]:
    """Distinct valid job ids."""
    return [f"bench-{n:06d}" for n in range(count)]


def _client(connection_string: str, queue: str, encoding: str, threads: int) -> QueueClient:
    policy = TextBase64EncodePolicy() if encoding == "base64" else None
    # A connection per thread, as the CLI keeps: requests' default pool of 10 would churn with more threads.
    session = requests.Session()
    adapter = HTTPAdapter(pool_maxsize=threads)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    transport = RequestsTransport(session=session, session_owner=False)
    return QueueClient.from_connection_string(
        connection_string, queue, message_encode_policy=policy, transport=transport
    )


def _fresh_queue(connection_string: str) -> str:
    name = f"bench-enqueue-{uuid.uuid4().hex[:16]}"
    QueueClient.from_connection_string(connection_string, name).create_queue()
    return name


def _count(connection_string: str, queue: str) -> int:
    properties = QueueClient.from_connection_string(connection_string, queue).get_queue_properties()
    return int(properties.approximate_message_count or 0)


def bare_send(connection_string: str, queue: str, ids: list[str], encoding: str, threads: int) -> None:
    """The ceiling: one client, a thread pool, send_message of each message text; nothing else."""
    client = _client(connection_string, queue, encoding, threads)
    texts = [json.dumps({"jobId": job_id}, separators=(",", ":")) for job_id in ids]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(lambda text: client.send_message(text, time_to_live=-1), texts):
            pass


def cli_send(connection_string: str, queue: str, ids_file: Path) -> str:
    """`batch-terminator enqueue --file` in-process; returns its stderr (the progress lines)."""
    out, err = io.StringIO(), io.StringIO()
    argv = ["--connection-string", connection_string, "--queue", queue, "enqueue", "--file", str(ids_file)]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(argv)
    if code != 0:
        raise RuntimeError(f"enqueue --file exited {code}: {err.getvalue().strip()[-500:]}")
    return err.getvalue()


@contextlib.contextmanager
def _storage(connection_string: str | None) -> Iterator[str]:
    if connection_string is not None:
        yield connection_string
        return
    with Azurite() as azurite:  # in memory, fresh: nothing else competes for it
        yield azurite.connection_string


def figure(connection_string: str | None = None, *, count: int = 1000, rounds: int = 5) -> dict[str, Any]:
    """Measure the figure; on a fresh in-memory Azurite unless a connection string is given."""
    ids = job_ids(count)
    threads = ENQUEUE_THREADS
    with _storage(connection_string) as storage, tempfile.TemporaryDirectory() as folder:
        ids_file = Path(folder) / "ids.txt"
        ids_file.write_text("# bench\n" + "\n".join(ids) + "\n", encoding="utf-8")
        encoding = resolve_target(storage, "bench-encoding-probe").encoding  # what the CLI will write
        bare_send(storage, _fresh_queue(storage), ids[:50], encoding, threads)  # warm both paths up
        cli_send(storage, _fresh_queue(storage), ids_file)
        ours: list[float] = []
        bare: list[float] = []
        for index in range(rounds):
            order = ("cli", "bare") if index % 2 == 0 else ("bare", "cli")
            for contender in order:
                queue = _fresh_queue(storage)
                started = time.perf_counter()
                if contender == "cli":
                    cli_send(storage, queue, ids_file)
                    ours.append(count / (time.perf_counter() - started))
                else:
                    bare_send(storage, queue, ids, encoding, threads)
                    bare.append(count / (time.perf_counter() - started))
                sent = _count(storage, queue)
                if sent != count:
                    raise RuntimeError(f"{contender} left {sent} of {count} messages on {queue}")
    ours_rate, bare_rate = statistics.median(ours), statistics.median(bare)
    value = 100.0 * ours_rate / bare_rate
    return {
        "name": NAME,
        "value": value,
        "unit": "%",
        "target": TARGET_PERCENT,
        "met": value >= TARGET_PERCENT,
        "detail": (
            f"enqueue --file {ours_rate:,.0f} msg/s vs bare send loop {bare_rate:,.0f} msg/s; {count} ids, "
            f"{threads} threads each, messageEncoding {encoding}, median of {rounds} interleaved rounds on Azurite"
        ),
        "extra": {"rate": ours_rate, "bare_rate": bare_rate, "ids": count, "threads": threads, "rounds": rounds},
    }


if __name__ == "__main__":
    print(json.dumps(figure(), indent=2))
