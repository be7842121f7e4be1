"""The Hub API's error answers as typed errors with messages a person can act on.

A 401 whose `X-Error-Message` is "Invalid credentials in Authorization header" is the Hub
refusing the token itself (`TokenRefusedError`): told apart from a 401 for a private or
missing repo asked without a token, because the fix is a new token rather than a first one.
The token itself is never part of a message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelfetch.core.errors import (
    INVALID_CREDENTIALS,
    AuthRequiredError,
    GatedError,
    HTTPStatusError,
    NotFoundError,
    RateLimitedError,
    ServerBusyError,
    TokenRefusedError,
)
from modelfetch.core.headers import retry_after_seconds

__all__ = ["INVALID_CREDENTIALS", "hub_status_error"]


def hub_status_error(
    status: int,
    headers: Mapping[str, str],
    url: str,
    *,
    repo_id: str,
    revision: str | None,
    description: str,
    endpoint: str,
    has_token: bool,
    now: float,
) -> HTTPStatusError:
    """The error for an API answer `status` about `description` of `repo_id`."""
    code = headers.get("X-Error-Code")
    repo = repo_id
    retry_after = retry_after_seconds(headers, now) if status in (429, 503) else None
    kwargs: dict[str, Any] = {
        "status": status,
        "url": url,
        "error_code": code,
        "retry_after": retry_after,
    }
    if status in (404, 410):
        if code == "RevisionNotFound":
            message = f"revision {revision} not found in {repo}"
        elif code == "EntryNotFound":
            message = f"{description} not found in {repo}"
        elif code == "RepoNotFound" or code is None:
            hint = "or your token cannot see it" if has_token else "or it is private: set HF_TOKEN"
            message = f"repository {repo} not found on {endpoint} ({hint})"
        else:
            message = f"{description} not found on {endpoint} ({code})"
        return NotFoundError(message, **kwargs)
    if status == 401:
        refused = (headers.get("X-Error-Message") or "").strip() == INVALID_CREDENTIALS
        if has_token and refused:
            return TokenRefusedError(
                f"{endpoint} refused the token (invalid or expired) for {repo}: set HF_TOKEN to a "
                f"valid token from {endpoint}/settings/tokens",
                **kwargs,
            )
        if has_token:
            message = (
                f"{endpoint} refused the token for {repo} (HTTP 401): it may be invalid or "
                "expired, or the repository may not exist; set HF_TOKEN to a valid token"
            )
        else:
            message = (
                f"{repo} needs a token: set HF_TOKEN or run huggingface-cli login "
                f"(or check that the repository exists: {endpoint}/{repo})"
            )
        return AuthRequiredError(message, **kwargs)
    if status == 403:
        if code == "GatedRepo":
            message = f"{repo} is gated: accept its terms at {endpoint}/{repo}"
            if not has_token:
                message += ", then set HF_TOKEN"
            return GatedError(message, **kwargs)
        return AuthRequiredError(
            f"access to {repo} was refused (HTTP 403): use a token that can read it (HF_TOKEN)",
            **kwargs,
        )
    if status == 429:
        return RateLimitedError(f"{endpoint} is rate-limiting requests (HTTP 429)", **kwargs)
    if status == 503:
        return ServerBusyError(f"{endpoint} is busy (HTTP 503)", **kwargs)
    return HTTPStatusError(f"{endpoint} answered HTTP {status} for {description}", **kwargs)
