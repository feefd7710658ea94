"""Pooled requests sessions that read the environment once, for Batch and for storage."""

from __future__ import annotations

import os

import requests
from requests.adapters import HTTPAdapter
from requests.utils import get_environ_proxies


def pooled_session(pool_size: int) -> requests.Session:
    """A session keeping up to `pool_size` connections per host, retrying nothing itself (its callers do)."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def ca_bundle() -> str | None:
    """The CA bundle requests would take from the environment, if one is set."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None


def pin_environment(session: requests.Session, url: str) -> None:
    """Resolve once what requests reads from the environment on every request to this URL's host."""
    # requests scans os.environ twice per request for proxy settings (~140 us a call with 36 variables, more
    # with a Function App's: a fifth of each storage call in a profile); the answer depends only on the host and
    # the environment, both fixed for the process.
    session.proxies.update(get_environ_proxies(url))
    session.verify = ca_bundle() or True
    # trust_env=False also drops ~/.netrc basic auth, which would overwrite the bearer token anyway.
    session.trust_env = False
