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
from typing import cast

import azure.functions as func
from azure.functions.queue import QueueMessage

# In Azure the host (.NET) receives and deletes queue messages and the worker process runs the function; keeping
# them in separate processes here too stops the storage SDK's CPU from competing with the function for one GIL.


def _serve(conn: multiprocessing.connection.Connection, env: dict[str, str | None], mode: str) -> None:
    """Child: run invocations on the worker's pool (sized from PYTHON_THREADPOOL_THREAD_COUNT) until the pipe closes."""
    import os

    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    from bench.deployment import pool_size
    from bench.harness import worker_logging

    send_lock = threading.Lock()
    queue_handler = _queue_handler(mode)
    spans: list[tuple[float, float]] = []

    def invoke(call_id: int, kind: str, payload: tuple[object, ...]) -> None:
        error: str | None = None
        answer: object = None
        started = time.perf_counter()
        try:
            if kind == "http":
                answer = _http(payload)
            else:
                message_id, body, dequeue_count = cast(tuple[str, bytes, int], payload)
                handler = queue_handler if kind == "queue" else _kill_switch_handler()
                handler(QueueMessage(id=message_id, body=body, dequeue_count=dequeue_count, pop_receipt="bench"))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        if kind == "queue":
            spans.append((started, time.perf_counter()))
        with send_lock:
            conn.send((call_id, error, answer))

    with worker_logging() as log:
        threads = pool_size(os.environ)
        with ThreadPoolExecutor(threads, thread_name_prefix="worker") as pool:
            with send_lock:
                conn.send(("ready", threads, None))
            while True:
                try:
                    request = conn.recv()
                except (EOFError, OSError):
                    return
                if request is None:
                    break
                pool.submit(invoke, *request)
        with send_lock:
            conn.send(("warnings", (log.take_warnings(), spans), None))


def _queue_handler(mode: str) -> Callable[[func.QueueMessage], None]:
    """terminate_job.main, or (mode "sleep") a function that only sleeps BENCH_SLEEP_SECONDS."""
    import os

    if mode == "sleep":
        seconds = float(os.environ.get("BENCH_SLEEP_SECONDS", "0.02"))

        def sleep_only(message: func.QueueMessage) -> None:
            time.sleep(seconds)

        return sleep_only
    import terminate_job

    return terminate_job.main


def _kill_switch_handler() -> Callable[[func.QueueMessage], None]:
    """kill_switch.main: the incident queue's function, in the same worker (one pool for every function)."""
    import kill_switch

    return kill_switch.main


def _http(payload: tuple[object, ...]) -> tuple[int, bytes]:
    """alert_terminate.main on one request: (status, body)."""
    import alert_terminate

    url, body = cast(tuple[str, bytes], payload)
    request = func.HttpRequest("POST", url, headers={"Content-Type": "application/json"}, body=body)
    response = alert_terminate.main(request)
    return response.status_code, response.get_body()


class RemoteWorker:
    """The host-side handler: sends each invocation to the worker process and waits for its result."""

    def __init__(self, env: Mapping[str, str | None], mode: str = "function") -> None:
        self._env = dict(env)
        self.threads = 0  # the worker's pool size, known once it started
        self._mode = mode
        self._conn: multiprocessing.connection.Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._send_lock = threading.Lock()
        self._pending: dict[int, tuple[threading.Event, list[tuple[str | None, object]]]] = {}
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
            target=_serve, args=(child, self._env, self._mode), name="bench-worker", daemon=True
        )
        self._process.start()
        child.close()
        self._conn = parent
        if not parent.poll(60):
            self.stop()
            raise RuntimeError("the worker process did not start")
        _, self.threads, _ = parent.recv()
        self._reader = threading.Thread(target=self._read, name="bench-worker-reader", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        """Route each result to the invocation waiting for it."""
        assert self._conn is not None
        while True:
            try:
                call_id, error, answer = self._conn.recv()
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
                waiter[1].append((error, answer))
                waiter[0].set()
        with self._pending_lock:
            waiters, self._pending = list(self._pending.values()), {}
        for event, result in waiters:
            result.append(("the worker process went away", None))
            event.set()

    def __call__(self, message: func.QueueMessage) -> None:
        """Invoke the queue function in the worker; raise (so the host retries) when it raised."""
        self._invoke("queue", (message.id or str(uuid.uuid4()), message.get_body(), message.dequeue_count or 1))

    def kill_switch(self, message: func.QueueMessage) -> None:
        """Invoke kill_switch (the incident queue's function) in the worker; raise when it raised."""
        self._invoke("kill_switch", (message.id or str(uuid.uuid4()), message.get_body(), message.dequeue_count or 1))

    def post(self, url: str, body: bytes) -> tuple[int, bytes]:
        """Invoke alert_terminate in the worker with one POST, as the host forwards an HTTP request: (status, body)."""
        return cast(tuple[int, bytes], self._invoke("http", (url, body)))

    def _invoke(self, kind: str, payload: tuple[object, ...]) -> object:
        """Send one invocation to a worker thread and wait for its answer."""
        if self._conn is None:
            raise RuntimeError("the worker is not started")
        event, result = threading.Event(), list[tuple[str | None, object]]()
        with self._pending_lock:
            call_id = self._next
            self._next += 1
            self._pending[call_id] = (event, result)
        with self._send_lock:
            self._conn.send((call_id, kind, payload))
        event.wait()
        error, answer = result[0]
        if error is not None:
            raise RuntimeError(error)
        return answer

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
