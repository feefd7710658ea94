"""The one place a Batch request URL is built: the account, the percent-encoded path, the version's query names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from shared.config.settings import FORCE_API_VERSION, Settings, api_version_at_least
from shared.contract.terminate_request import JOB_ID_PATTERN, is_job_id


def timeout_parameter(api_version: str) -> str:
    """The server-timeout query name as the version's spec spells it: timeOut from 2024-07-01.20.0 on, else timeout."""
    return "timeOut" if api_version_at_least(api_version, FORCE_API_VERSION) else "timeout"


@dataclass(frozen=True)
class BatchUrls:
    """URLs in one Batch account, each with api-version and the server timeout."""

    account_url: str  # no trailing slash
    api_version: str
    timeout_seconds: int

    @classmethod
    def of(cls, settings: Settings, account: str) -> BatchUrls:
        """The URLs of a configured account (KeyError when the alias is not configured)."""
        return cls(settings.account_url(account), settings.batch_api_version, settings.batch_timeout_seconds)

    def query(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The query every request carries, then `extra`."""
        return {
            "api-version": self.api_version,
            timeout_parameter(self.api_version): str(self.timeout_seconds),
            **(extra or {}),
        }

    def url(self, *segments: str, query: Mapping[str, str] | None = None) -> str:
        """{account}/{segments, each percent-encoded}?{query}."""
        path = "/".join(quote(segment, safe="") for segment in segments)
        return f"{self.account_url}/{path}?{encode(self.query(query))}"

    def job(self, job_id: str, *rest: str, query: Mapping[str, str] | None = None) -> str:
        """A URL under /jobs/{jobId}; the id is checked first: never a URL from an id Batch could not have given."""
        if not is_job_id(job_id):
            raise ValueError("job id failed validation")
        return self.url("jobs", job_id, *rest, query=query)

    def resource(self, collection: str, resource_id: str, *rest: str, query: Mapping[str, str] | None = None) -> str:
        """A URL under /{collection}/{id} for a job schedule, pool or node, whose ids follow Batch's id rule."""
        if not JOB_ID_PATTERN.fullmatch(resource_id):
            raise ValueError(f"{collection} id failed validation")
        return self.url(collection, resource_id, *rest, query=query)


def encode(params: Mapping[str, str]) -> str:
    """A query string that keeps OData's $, commas and quotes readable."""
    return urlencode(params, quote_via=quote, safe="$,'")
