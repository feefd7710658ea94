"""Bare azure-storage-queue loops (no function, no Batch): what Azurite allows with a given number of threads."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from azure.storage.queue import QueueClient

RECEIVE_HIDE_SECONDS = 600


@dataclass(frozen=True)
class Ceiling:
    """Seconds a bare send loop and then a bare receive+delete loop took for the same messages."""

    messages: int
    send_seconds: float
    receive_seconds: float

    @property
    def seconds(self) -> float:
        """Send, then receive and delete: the whole trip."""
        return self.send_seconds + self.receive_seconds

    @property
    def rate(self) -> float:
        """Messages per second over the whole trip."""
        return self.messages / self.seconds

    @property
    def send_rate(self) -> float:
        """Messages per second of the send loop alone."""
        return self.messages / self.send_seconds


def send_loop(queue: QueueClient, texts: list[str], threads: int) -> float:
    """Seconds to send every text with `threads` threads, one send_message call each."""
    started = time.perf_counter()
    with ThreadPoolExecutor(threads, thread_name_prefix="ceiling-send") as pool:
        list(pool.map(queue.send_message, texts))
    return time.perf_counter() - started


def receive_loop(queue: QueueClient, count: int, batch_size: int, threads: int) -> float:
    """Seconds to receive (pages of batch_size, one thread) and delete (`threads` threads) `count` messages."""
    started = time.perf_counter()
    deletes: list[Future[None]] = []
    with ThreadPoolExecutor(threads, thread_name_prefix="ceiling-delete") as pool:
        while len(deletes) < count:
            pages = queue.receive_messages(
                messages_per_page=batch_size, max_messages=batch_size, visibility_timeout=RECEIVE_HIDE_SECONDS
            ).by_page()
            for message in next(pages, []):
                deletes.append(pool.submit(queue.delete_message, message.id, message.pop_receipt))
        for future in deletes:
            future.result()  # a failed delete fails the measurement
    return time.perf_counter() - started


def round_trip(queue: QueueClient, texts: list[str], send_threads: int, batch_size: int, threads: int) -> Ceiling:
    """Send every text, then receive and delete them all: the ceiling of a send-then-process pipeline."""
    send_seconds = send_loop(queue, texts, send_threads)
    receive_seconds = receive_loop(queue, len(texts), batch_size, threads)
    return Ceiling(len(texts), send_seconds, receive_seconds)
