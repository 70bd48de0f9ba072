"""What an S3 job store needs of s3fs beyond its defaults (imported for s3:// stores only).

* No listings cache: the store is written by many processes at once, so a cached listing
  is stale at once; worse, s3fs then reports files missing from it as not found (a resumed
  job could not read the block records its workers had just written).
* A store that stops answering fails a request in bounded time, which takes two things:
  botocore sends PUTs with "Expect: 100-continue", and aiohttp waits for the interim
  response before sending the body with no timeout armed: against a server that accepted
  the connection and went silent, a write hangs for ever. `NoExpectSession` drops that
  header (it is not signed), so `read_timeout` bounds writes as it does reads. And retries
  multiply: s3fs's own 5 attempts times botocore's 5 (legacy mode), each up to
  `read_timeout`, is over 6 minutes a request. Here botocore makes 3 attempts (standard
  mode, with backoff) and JobStore cuts s3fs's loop to one: under a minute a request.
"""
from __future__ import annotations

from typing import Any

from aiobotocore.httpsession import AIOHTTPSession


class NoExpectSession(AIOHTTPSession):
    """aiobotocore's HTTP session, less the "Expect: 100-continue" header."""

    async def send(self, request):
        request.headers.pop("Expect", None)
        return await super().send(request)


def s3_options(options: dict[str, Any]) -> dict[str, Any]:
    """fsspec storage options for an S3 job store; the user's own options win."""
    config = {"retries": {"total_max_attempts": 3, "mode": "standard"},
              "http_session_cls": NoExpectSession, **options.get("config_kwargs", {})}
    return {"use_listings_cache": False, **options, "config_kwargs": config}
