"""Figures 1, 2 and 4a: per-message cost against the floor and the azure-batch SDK; tokens and RSS over a long run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests
from azure.functions.queue import QueueMessage

import terminate_job
from bench.harness import (
    Contender,
    Figure,
    JobIds,
    Sample,
    environment,
    interleave,
    median_cpu,
    median_wall,
    messages,
    settled_rss,
)
from bench.services import Services
from shared import wiring
from shared.config.settings import DEFAULT_API_VERSION

QUEUE_NAME = "bench-terminate"
REASON = "bench"
PER_MESSAGE_TARGET = 1.2
PEER_TARGET = 2.0
RSS_TARGET_BYTES = 5 * 1024 * 1024
# requests adds these itself; the rest of the recorded headers are replayed as they were.
_TRANSPORT_HEADERS = frozenset({"host", "content-length", "connection", "accept-encoding"})


def function_environment(services: Services, storage_connection: str) -> dict[str, str | None]:
    """The app settings terminate_job reads, pointing at the emulator and the identity endpoint."""
    env: dict[str, str | None] = {
        "BATCH_ACCOUNT_URL": services.batch_url,
        "TERMINATE_QUEUE_NAME": QUEUE_NAME,
        "AzureWebJobsStorage": storage_connection,
        "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "5",
    }
    for name in ("POISON_QUEUE_NAME", "BATCH_API_VERSION", "BATCH_TIMEOUT_SECONDS", "AZURE_CLIENT_ID", "MSI_ENDPOINT"):
        env[name] = None
    env.update(services.identity_env)
    return env


@contextlib.contextmanager
def function_app(services: Services, storage_connection: str) -> Iterator[None]:
    """terminate_job configured from the environment, as the Functions worker loads it; reset after."""
    with environment(function_environment(services, storage_connection)):
        wiring.reset()
        try:
            yield
        finally:
            wiring.reset()


class Ours:
    """terminate_job.main over queue messages built before the timing."""

    def __init__(self, ids: JobIds) -> None:
        self._ids = ids

    def prepare(self, n: int) -> list[QueueMessage]:
        """n messages for fresh jobs."""
        return messages(self._ids.take(n), REASON)

    def run(self, work: list[QueueMessage]) -> None:
        """Invoke the function once per message, as the worker does."""
        main = terminate_job.main
        for message in work:
            main(message)

    def settle(self) -> None:
        """Nothing runs in the background."""

    def handle(self, n: int) -> None:
        """Prepare and run n messages."""
        self.run(self.prepare(n))


class Floor:
    """A bare requests.Session.post with the URL, headers and body the function sends."""

    def __init__(self, services: Services, ids: JobIds, *, trust_env: bool = True) -> None:
        path, query, headers, body = services.last_request()
        self._ids = ids
        self._prefix = services.batch_url + "/jobs/"
        self._suffix = "/terminate?" + "&".join(f"{k}={v}" for k, v in query.items())
        self._headers = {k: v for k, v in headers.items() if k not in _TRANSPORT_HEADERS}
        self._body = body
        self._session = requests.Session()
        self._session.trust_env = trust_env
        self.template = f"POST {path}{self._suffix.partition('/terminate')[2]} headers={sorted(self._headers)}"

    def prepare(self, n: int) -> list[str]:
        """n URLs for fresh jobs."""
        return [self._prefix + job_id + self._suffix for job_id in self._ids.take(n)]

    def run(self, work: list[str]) -> None:
        """One post per URL, checking only the status."""
        post, headers, body = self._session.post, self._headers, self._body
        for url in work:
            response = post(url, data=body, headers=headers, timeout=35.0, allow_redirects=False)
            if response.status_code != 202:
                raise RuntimeError(f"floor request got HTTP {response.status_code}")

    def settle(self) -> None:
        """Nothing runs in the background."""


class Peer:
    """The azure-batch 15.x SDK: begin_terminate_job without waiting for its poller."""

    def __init__(self, services: Services, ids: JobIds) -> None:
        from azure.batch import BatchClient
        from azure.batch.models._models import BatchJobTerminateOptions  # not re-exported in 15.1.0
        from azure.core.pipeline.policies import SansIOHTTPPolicy
        from azure.identity import ManagedIdentityCredential

        class AllowPlainHttp(SansIOHTTPPolicy):
            """Lets the bearer-token policy run over the emulator's http:// (the SDK insists on https)."""

            def on_request(self, request: Any) -> None:
                """Mark the request as exempt from the https check."""
                request.context["enforce_https"] = False

        self._ids = ids
        self.options = BatchJobTerminateOptions(termination_reason=REASON)
        self._pollers: list[Any] = []
        with environment(services.identity_env):
            credential = ManagedIdentityCredential()
        self.client = BatchClient(
            services.batch_url, credential, api_version=DEFAULT_API_VERSION, per_call_policies=[AllowPlainHttp()]
        )

    def prepare(self, n: int) -> list[str]:
        """n fresh job ids."""
        return self._ids.take(n)

    def run(self, work: list[str]) -> None:
        """Start one terminate per job; each LROPoller polls on its own thread."""
        begin, options = self.client.begin_terminate_job, self.options
        for job_id in work:
            self._pollers.append(begin(job_id, options, service_timeout=30))

    def settle(self) -> None:
        """Wait for the pollers started so far, so they do not run into the next contender's chunk."""
        pollers, self._pollers = self._pollers, []
        for poller in pollers:
            poller.wait(30)


class PeerPostOnly:
    """The SDK's POST alone (its private _terminate_job_internal): the SDK's cost without the poller."""

    def __init__(self, peer: Peer, ids: JobIds) -> None:
        self._client = peer.client
        self._options = peer.options
        self._ids = ids

    def prepare(self, n: int) -> list[str]:
        """n fresh job ids."""
        return self._ids.take(n)

    def run(self, work: list[str]) -> None:
        """One POST per job."""
        internal, options = self._client._terminate_job_internal, self._options
        for job_id in work:
            internal(job_id, options, service_timeout=30)

    def settle(self) -> None:
        """Nothing runs in the background."""


def peer_available() -> str | None:
    """None when azure-batch 15.x imports, else why it does not."""
    try:
        import azure.batch
        from azure.batch import BatchClient
    except ImportError as exc:
        return f"azure-batch is not installed ({exc.name}); pip install -r requirements-bench.txt"
    if not hasattr(BatchClient, "begin_terminate_job"):
        return f"azure-batch {getattr(azure.batch, '__version__', '?')} has no begin_terminate_job (need 15.x)"
    return None


@dataclass
class CallResults:
    """Figures 1 and 2 and the raw samples behind them."""

    figures: list[Figure]
    samples: dict[str, list[Sample]]


def per_call(services: Services, storage_connection: str, *, per_round: int, rounds: int, warmup: int) -> CallResults:
    """Figures 1 and 2, measured in one interleaved loop: ours, the floor, the SDK."""
    with function_app(services, storage_connection):
        ours = Ours(JobIds("ours"))
        ours.handle(1)  # wires the runtime and gives the floor a request to copy
        floor = Floor(services, JobIds("floor"))
        # requests re-reads proxy settings from os.environ on every call unless trust_env is off: the floor
        # below the floor, for reference only (ours resolves them once, see shared.transport.sessions.pin_environment).
        bare = Floor(services, JobIds("floor-noenv"), trust_env=False)
        contenders: dict[str, Contender] = {"ours": ours, "floor": floor, "floor_trust_env_off": bare}
        missing = peer_available()
        peer: Peer | None = None
        if missing is None:
            peer = Peer(services, JobIds("sdk"))
            contenders["sdk"] = peer
            contenders["sdk_post_only"] = PeerPostOnly(peer, JobIds("sdk-post"))
        before = services.terminations()
        samples = interleave(contenders, per_round, rounds, warmup)
        expected = (per_round * rounds + warmup) * len(contenders)
        terminated = services.terminations() - before
        if terminated != expected:
            raise RuntimeError(f"expected {expected} terminations, the emulator saw {terminated}")

    ours_us, floor_us = median_wall(samples["ours"]), median_wall(samples["floor"])
    bare_us = median_wall(samples["floor_trust_env_off"])
    ratio = ours_us / floor_us
    count = per_round * rounds
    figures = [
        Figure(
            "per_message_vs_floor",
            ratio,
            "x",
            f"<= {PER_MESSAGE_TARGET}x",
            ratio <= PER_MESSAGE_TARGET,
            f"ours {ours_us:.0f} us/msg, floor {floor_us:.0f} us/msg (wall, median of {rounds} rounds,"
            f" {count} msgs each); client CPU ours {median_cpu(samples['ours']):.0f} us,"
            f" floor {median_cpu(samples['floor']):.0f} us; for reference, the floor with trust_env off (no"
            f" per-call environment scan) {bare_us:.0f} us/msg, ours = {ours_us / bare_us:.2f}x that",
            {
                "ours_us": ours_us,
                "floor_us": floor_us,
                "floor_trust_env_off_us": bare_us,
                "messages": count,
                "floor_request": floor.template,
            },
        )
    ]
    if peer is None:
        figures.append(Figure("peer_sdk_vs_ours", None, "x", f">= {PEER_TARGET}x", None, f"skipped: {missing}"))
    else:
        sdk_us, post_us = median_wall(samples["sdk"]), median_wall(samples["sdk_post_only"])
        speedup = sdk_us / ours_us
        figures.append(
            Figure(
                "peer_sdk_vs_ours",
                speedup,
                "x",
                f">= {PEER_TARGET}x",
                speedup >= PEER_TARGET,
                f"azure-batch begin_terminate_job {sdk_us:.0f} us/call vs ours {ours_us:.0f} us/msg;"
                f" SDK POST alone (no poller) {post_us:.0f} us = {post_us / ours_us:.2f}x ours",
                {"sdk_us": sdk_us, "sdk_post_only_us": post_us, "ours_us": ours_us},
            )
        )
    return CallResults(figures, samples)


def steady_state(services: Services, storage_connection: str, *, count: int, chunk: int = 500) -> list[Figure]:
    """Token fetches and RSS growth over `count` messages from a cold runtime (figure 4a)."""
    with function_app(services, storage_connection):
        ids = JobIds("steady")
        fetches_before = services.token_fetches()
        ours = Ours(ids)
        ours.handle(min(200, count))  # warm: imports done, pools filled, first token fetched
        rss_before = settled_rss()
        done = 0
        while done < count:
            n = min(chunk, count - done)
            ours.handle(n)
            done += n
        rss_after = settled_rss()
        fetches = services.token_fetches() - fetches_before
    services.reset()
    growth = rss_after - rss_before
    return [
        Figure(
            "token_fetches",
            float(fetches),
            "",
            "1",
            fetches == 1,
            f"token requests to the identity endpoint over {count + min(200, count)} messages from a cold runtime",
            {"messages": count + min(200, count)},
        ),
        Figure(
            "rss_growth",
            growth / 2**20,
            "MB",
            "< 5 MB",
            growth < RSS_TARGET_BYTES,
            f"RSS {rss_before / 2**20:.1f} MB -> {rss_after / 2**20:.1f} MB over {count} messages after warm-up",
            {"messages": count, "rss_before": rss_before, "rss_after": rss_after},
        ),
    ]
