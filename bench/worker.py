"""A stand-in for the Functions Python worker: its own process, a thread pool, invoked by the host over a pipe."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

import azure.functions as func

# In Azure the host (.NET) receives and deletes queue messages and the worker process runs the function; keeping
# them in separate processes here too stops the storage SDK's CPU from competing with the function for one GIL.


def _serve(conn: multiprocessing.connection.Connection, env: dict[str, str | None], threads: int, mode: str) -> None:
    """Child: run invocations on `threads` threads until the pipe closes."""
    import os

    from azure.functions.queue import QueueMessage

    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    from bench.harness import worker_logging

    send_lock = threading.Lock()

    handler: Callable[[func.QueueMessage], None]
    if mode == "sleep":
        seconds = float(os.environ.get("BENCH_SLEEP_SECONDS", "0.02"))

        def sleep_only(message: func.QueueMessage) -> None:
            time.sleep(seconds)

        handler = sleep_only
    else:
        import terminate_job

        handler = terminate_job.main

    spans: list[tuple[float, float]] = []

    def invoke(call_id: int, message_id: str, body: bytes, dequeue_count: int) -> None:
        error: str | None = None
        started = time.perf_counter()
        try:
            handler(QueueMessage(id=message_id, body=body, dequeue_count=dequeue_count, pop_receipt="bench"))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        spans.append((started, time.perf_counter()))
        with send_lock:
            conn.send((call_id, error))

    with worker_logging() as log:
        with ThreadPoolExecutor(threads, thread_name_prefix="worker") as pool:
            with send_lock:
                conn.send(("ready", os.getpid()))
            while True:
                try:
                    request = conn.recv()
                except (EOFError, OSError):
                    return
                if request is None:
                    break
                pool.submit(invoke, *request)
        with send_lock:
            conn.send(("warnings", (log.take_warnings(), spans)))


class RemoteWorker:
    """The host-side handler: sends each invocation to the worker process and waits for its result."""

    def __init__(self, env: Mapping[str, str | None], threads: int, mode: str = "function") -> None:
        self._env = dict(env)
        self._threads = threads
        self._mode = mode
        self._conn: multiprocessing.connection.Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._send_lock = threading.Lock()
        self._pending: dict[int, tuple[threading.Event, list[str | None]]] = {}
        self._pending_lock = threading.Lock()
        self._next = 0
        self._reader: threading.Thread | None = None
        self._finished = threading.Event()
        self.warnings: list[tuple[str, str]] = []
        self.spans: list[tuple[float, float]] = []  # (start, end) of each invocation in the worker, at stop

    def start(self) -> RemoteWorker:
        """Start the process and wait until it is ready."""
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child, self._env, self._threads, self._mode), name="bench-worker", daemon=True
        )
        self._process.start()
        child.close()
        self._conn = parent
        if not parent.poll(60):
            self.stop()
            raise RuntimeError("the worker process did not start")
        parent.recv()
        self._reader = threading.Thread(target=self._read, name="bench-worker-reader", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        """Route each result to the invocation waiting for it."""
        assert self._conn is not None
        while True:
            try:
                call_id, error = self._conn.recv()
            except (EOFError, OSError):
                break
            if call_id == "warnings":
                warnings, spans = error
                self.warnings, self.spans = list(warnings), list(spans)
                self._finished.set()
                break
            with self._pending_lock:
                waiter = self._pending.pop(call_id, None)
            if waiter is not None:
                waiter[1].append(error)
                waiter[0].set()
        with self._pending_lock:
            waiters, self._pending = list(self._pending.values()), {}
        for event, result in waiters:
            result.append("the worker process went away")
            event.set()

    def __call__(self, message: func.QueueMessage) -> None:
        """Invoke the function in the worker; raise (so the host retries) when it raised."""
        if self._conn is None:
            raise RuntimeError("the worker is not started")
        event, result = threading.Event(), list[str | None]()
        with self._pending_lock:
            call_id = self._next
            self._next += 1
            self._pending[call_id] = (event, result)
        with self._send_lock:
            self._conn.send((call_id, message.id or str(uuid.uuid4()), message.get_body(), message.dequeue_count or 1))
        event.wait()
        if result[0] is not None:
            raise RuntimeError(result[0])

    def stop(self) -> None:
        """Close the pipe and end the process."""
        conn, process = self._conn, self._process
        self._conn = self._process = None
        if conn is not None:
            try:
                with self._send_lock:
                    conn.send(None)
                self._finished.wait(30)  # the worker finishes its invocations, then reports its warnings
            except (OSError, EOFError):
                pass
            conn.close()
        if process is not None:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(5)

    def __enter__(self) -> RemoteWorker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
