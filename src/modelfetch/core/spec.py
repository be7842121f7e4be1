"""What a user asks for, parsed: a Hub model/file (`HubSpec`) or a plain URL (`UrlSpec`).

Decisions where the forms could be read two ways:

- `owner/name:QUANT` splits on the `:` only when no file path follows the repo id, so a `:` in a
  repo path stays part of the path. A quant and a path cannot be combined.
- A revision ends at the first `/` or `:` after `@`. A revision containing `/` is written
  percent-encoded (`owner/name@refs%2Fpr%2F1`), as the Hub's own URLs do; `refs/pr/N` is also
  accepted unencoded because it is unambiguous. A 40-hex commit sha is just a revision.
- The quant token is strict (`parse_quant_token`): `q4_k_m`, `UD-Q4_K_M`, `UD_Q4_K_M`, `fp16`.
  It is stored in canonical form (`Q4_K_M`), so `:q4_k_m` and `:Q4_K_M` are one request.
- Only model repos: `datasets/…` and `spaces/…` are refused by name. A repo id always has an
  owner (the Hub's legacy owner-less ids now redirect to an owner/name anyway).
- Spaces are allowed only inside a repo file path (`owner/name/my model.gguf`); a URL must
  write them as `%20`. Paths in the bare and `hf://` forms are taken literally (no
  percent-decoding); only URL forms are decoded.
- Repo ids keep their case: the key is what the user wrote, the Hub resolves the casing.
- A Hub URL that is neither a model page, `/tree/<rev>`, nor a file (`/resolve/`, `/blob/`,
  `/raw/`) is refused rather than downloaded as a plain URL (it would be an HTML page).
  A `/tree/<rev>/<folder>` URL is refused too: a folder is not a file nor a quant.
- Hub hosts are `huggingface.co`, `www.huggingface.co`, `hf.co` and the configured endpoint
  (scheme-insensitive; the endpoint's port and path prefix must match).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from modelfetch.core.errors import SpecError
from modelfetch.core.headers import content_disposition_filename
from modelfetch.core.paths import FALLBACK_FILENAME, sanitize_filename
from modelfetch.core.quant import parse_quant_token

__all__ = [
    "ACCEPTED_FORMS",
    "DEFAULT_ENDPOINT",
    "HUB_HOSTS",
    "HubSpec",
    "Spec",
    "UrlSpec",
    "filename_from_url",
    "parse_spec",
    "validate_repo_id",
]

DEFAULT_ENDPOINT = "https://huggingface.co"
HUB_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})

ACCEPTED_FORMS = """\
Accepted forms:
  owner/name                          a model; its quantization is chosen for you
  owner/name:Q4_K_M                   a model at one quantization (also UD-Q4_K_M)
  owner/name@REVISION[:Q4_K_M]        at a branch, tag or commit sha (a / in it written as %2F)
  owner/name/path/in/repo.gguf        one file of a repo
  owner/name@REVISION/path.gguf       one file at a revision
  hf://owner/name[@REVISION][/path]   the same, as an hf:// URL
  https://huggingface.co/owner/name[/tree/REVISION]          a model page
  https://huggingface.co/owner/name/resolve/REVISION/path    a file (/blob/ and /raw/ too)
  https://example.com/file.gguf       any other http(s) URL"""

_REPO_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_MAX_REPO_PART = 96
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*(?=:)")
# Schemes refused by name even without "//" (`javascript:alert(1)`, `file:/etc/passwd`).
_FOREIGN_SCHEMES = frozenset(
    {"file", "ftp", "ftps", "sftp", "javascript", "vbscript", "data", "mailto", "magnet", "about"}
    | {"blob", "ssh", "git", "s3", "gs", "ws", "wss"}
)
# A whole path segment: `refs/pr/1a` is the revision `refs` and the path `pr/1a`.
_PR_REF = re.compile(r"refs/pr/[0-9]+(?=$|[/:])")
# git check-ref-format: no control chars, space, ~ ^ : ? * [ \, no "..", no "@{".
_BAD_REVISION_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_ECHO = 200


@dataclass(frozen=True, slots=True)
class HubSpec:
    """A model (`path` None; `quant` chosen or requested) or one file (`path` set) on the Hub."""

    repo_id: str
    revision: str | None = None  # None: the default branch
    quant: str | None = None  # canonical, e.g. "Q4_K_M"; never set together with path
    path: str | None = None

    def canonical(self) -> str:
        """A stable key: `hf://owner/name@main:Q4_K_M`, `hf://owner/name@<rev>/dir/file.gguf`.

        The default branch is written `main`; a revision is percent-encoded so it never
        contains `/`. `parse_spec(key)` gives back an equivalent spec."""
        revision = quote(self.revision or "main", safe="")
        if revision == "refs" and self.path is not None and _PR_REF.match(f"refs/{self.path}"):
            # `@refs/pr/1/x` would read back as the revision refs/pr/1: encode the whole name.
            revision = "".join(f"%{ord(ch):02X}" for ch in revision)
        text = f"hf://{self.repo_id}@{revision}"
        if self.path is not None:
            return f"{text}/{self.path}"
        if self.quant is not None:
            return f"{text}:{self.quant}"
        return text


@dataclass(frozen=True, slots=True)
class UrlSpec:
    """Any other http(s) URL, kept as written (it is what gets fetched)."""

    url: str

    def canonical(self) -> str:
        """Scheme and host lowercased, default port, user:password@ and #fragment dropped, so
        a key never carries credentials. Path and query stay as written."""
        parts = urlsplit(self.url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = parts.port
        netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
        return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


Spec: TypeAlias = HubSpec | UrlSpec


def _fail(problem: str, text: str) -> SpecError:
    shown = text if len(text) <= _MAX_ECHO else text[:_MAX_ECHO] + "…"
    return SpecError(f"{problem}: {shown!r}\n{ACCEPTED_FORMS}")


def validate_repo_id(repo_id: str) -> str | None:
    """What is wrong with `repo_id` by the Hub's rules, or None if it is valid."""
    owner, slash, name = repo_id.partition("/")
    if not slash or "/" in name:
        return "a repo id is owner/name"
    for part, what in ((owner, "owner"), (name, "name")):
        if not part:
            return f"the repo {what} is empty"
        if len(part) > _MAX_REPO_PART:
            return f"the repo {what} is longer than {_MAX_REPO_PART} characters"
        if not _REPO_PART.fullmatch(part):
            return (
                f"the repo {what} {part!r} may only contain letters, digits, '-', '_' and '.', "
                "and may not start or end with '-' or '.'"
            )
        if "--" in part or ".." in part:
            return f"the repo {what} {part!r} may not contain '--' or '..'"
    if name.lower().endswith(".git"):
        return "a repo name may not end in .git"
    if owner in ("datasets", "spaces"):
        return f"{owner} are not supported, only model repos"
    return None


def _check_repo(repo_id: str, text: str) -> None:
    problem = validate_repo_id(repo_id)
    if problem is not None:
        raise _fail(problem, text)


def _check_revision(revision: str, text: str) -> str:
    if not revision:
        raise _fail("the revision after '@' is empty", text)
    if (
        _BAD_REVISION_CHARS.search(revision)
        or any(ch.isspace() for ch in revision)
        or ".." in revision
        or "@{" in revision
        or "//" in revision
        or revision.startswith("/")
        or revision.endswith(("/", ".", ".lock"))
    ):
        raise _fail(f"{revision!r} is not a valid revision (branch, tag or commit sha)", text)
    return revision


def _check_path(path: str, text: str) -> str:
    segments = path.split("/")
    if any(seg in ("", ".", "..") for seg in segments):
        raise _fail("a repo path may not have empty, '.' or '..' parts", text)
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise _fail("a repo path may not contain control characters", text)
    if path != path.strip():
        # A request is stripped before parsing, so such a path could not be written back.
        raise _fail("a repo path may not begin or end with whitespace", text)
    return path


_QUANT_SHAPED = re.compile(r"(?:UD[-_])?(?:I?Q\d|F\d|BF\d)[A-Z0-9_]*", re.IGNORECASE)


def _check_quant(token: str, text: str) -> str:
    if not token:
        raise _fail("the quantization after ':' is empty", text)
    if "/" in token:
        raise _fail(
            "a quantization cannot contain '/' (to name a file, write owner/name/path)", text
        )
    quant = parse_quant_token(token)
    if quant is not None:
        return quant.name
    if _QUANT_SHAPED.fullmatch(token):
        # Shaped like a quant but no form we know (a typo: Q4_K_N): let the repo answer, so the
        # error lists the quants it has, as for a valid quant it lacks.
        return token.upper().replace("UD_", "UD-", 1)
    raise _fail(f"{token!r} is not a known quantization (e.g. Q4_K_M, UD-Q4_K_M, F16)", text)


def _parse_hub_ref(ref: str, text: str) -> HubSpec:
    """`owner/name[@rev][:quant]` or `owner/name[@rev]/path` (the part after `hf://`)."""
    match = re.match(r"([^/]*)/([^/@:]*)", ref)
    if match is None:
        raise _fail("expected owner/name", text)
    repo_id = f"{match[1]}/{match[2]}"
    _check_repo(repo_id, text)
    rest = ref[match.end() :]
    revision: str | None = None
    if rest.startswith("@"):
        pr = _PR_REF.match(rest, 1)
        end = pr.end() if pr else len(rest)
        if pr is None:
            for i in range(1, len(rest)):
                if rest[i] in "/:":
                    end = i
                    break
        revision = _check_revision(unquote(rest[1:end]), text)
        rest = rest[end:]
    if rest.startswith(":"):
        return HubSpec(repo_id, revision, quant=_check_quant(rest[1:], text))
    if rest.startswith("/"):
        path = rest[1:]
        if not path:  # a trailing slash: still the whole repo
            return HubSpec(repo_id, revision)
        return HubSpec(repo_id, revision, path=_check_path(path, text))
    if rest:
        raise _fail(f"unexpected {rest[:1]!r} after the repo id", text)
    return HubSpec(repo_id, revision)


def _endpoint_parts(endpoint: str) -> tuple[str, int | None, str]:
    parts = urlsplit(endpoint.strip())
    scheme = parts.scheme.lower()
    port = parts.port or _DEFAULT_PORTS.get(scheme)
    return (parts.hostname or "", port, parts.path.rstrip("/"))


def _hub_path(url_path: str, host: str, port: int | None, endpoint: str) -> str | None:
    """The URL's path below the Hub root if the URL is on a Hub host, else None."""
    if host in HUB_HOSTS and port in (80, 443):
        return url_path
    ep_host, ep_port, ep_prefix = _endpoint_parts(endpoint)
    if host != ep_host or port != ep_port:
        return None
    if not ep_prefix:
        return url_path
    if url_path == ep_prefix or url_path.startswith(ep_prefix + "/"):
        return url_path[len(ep_prefix) :]
    return None


def _parse_hub_url(path: str, text: str) -> HubSpec:
    raw_segments = path.strip("/").split("/") if path.strip("/") else []
    # Split before decoding, so %2F inside a revision stays inside one segment.
    segments = [unquote(seg) for seg in raw_segments]
    if len(segments) < 2:
        raise _fail("a Hub URL must name a model (https://huggingface.co/owner/name)", text)
    repo_id = f"{segments[0]}/{segments[1]}"
    _check_repo(repo_id, text)
    if len(segments) == 2:
        return HubSpec(repo_id)
    kind, tail = segments[2], segments[3:]
    if kind not in ("tree", "resolve", "blob", "raw"):
        raise _fail(f"a Hub URL with /{kind}/ is not a model page or a file", text)
    if not tail:
        raise _fail(f"the Hub URL has no revision after /{kind}/", text)
    if len(tail) >= 3 and tail[0] == "refs" and tail[1] == "pr" and tail[2].isdigit():
        tail = [f"refs/pr/{tail[2]}", *tail[3:]]
    revision = _check_revision(tail[0], text)
    file_path = "/".join(tail[1:])
    if kind == "tree":
        if file_path:
            raise _fail("a folder URL is not a file; give a file URL or the model page", text)
        return HubSpec(repo_id, revision)
    if not file_path:
        raise _fail(f"the Hub URL has no file path after /{kind}/{tail[0]}/", text)
    return HubSpec(repo_id, revision, path=_check_path(file_path, text))


def _parse_http_url(text: str, endpoint: str) -> Spec:
    try:
        parts = urlsplit(text)
        host = (parts.hostname or "").rstrip(".")
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError as exc:  # a bad port or a broken IPv6 literal
        raise _fail(f"not a valid URL ({exc})", text) from None
    if not host:
        raise _fail("the URL has no host", text)
    hub_path = _hub_path(parts.path, host, port, endpoint)
    if hub_path is not None:
        return _parse_hub_url(hub_path, text)
    return UrlSpec(text)


def parse_spec(text: str, *, default_endpoint: str = DEFAULT_ENDPOINT) -> Spec:
    """Parse one request; `SpecError` (naming the problem and listing `ACCEPTED_FORMS`) if it
    is none of them. `default_endpoint` is the Hub whose URLs count as Hub URLs besides
    huggingface.co and hf.co (pass `HubConfig.endpoint` for a mirror or the fake hub)."""
    stripped = text.strip()
    if not stripped:
        raise _fail("the request is empty", text)
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in stripped):
        raise _fail("the request contains control characters", text)
    scheme_match = _SCHEME.match(stripped)
    if scheme_match is not None:
        scheme = scheme_match[0].lower()
        after = stripped[scheme_match.end() + 1 :]
        if scheme == "hf":
            if not after.startswith("//"):
                raise _fail("write hf://owner/name", text)
            return _parse_hub_ref(after[2:], text)
        if scheme in ("http", "https"):
            if not after.startswith("//"):
                raise _fail(f"write {scheme}://host/path", text)
            if any(ch.isspace() for ch in stripped):
                raise _fail("a URL cannot contain spaces (write them as %20)", text)
            return _parse_http_url(stripped, default_endpoint)
        if after.startswith("//") or scheme in _FOREIGN_SCHEMES:
            raise _fail(f"{scheme}: is not a supported scheme (only https, http and hf)", text)
        # Otherwise it is no scheme at all, just a colon in something that is not owner/name.
    return _parse_hub_ref(stripped, text)


def _last_url_segment(url: str) -> str | None:
    try:
        path = urlsplit(url).path
    except ValueError:
        return None
    return unquote(path.rsplit("/", 1)[-1]) or None


def filename_from_url(url: str, content_disposition: str | None = None) -> str:
    """The local file name for a plain URL: Content-Disposition (`filename*` over `filename`,
    RFC 6266), else the URL's last path segment percent-decoded; always one safe name
    (`paths.sanitize_filename`), falling back to "download"."""
    for candidate in (content_disposition_filename(content_disposition), _last_url_segment(url)):
        if candidate:
            name = sanitize_filename(candidate)
            if name != FALLBACK_FILENAME:
                return name
    return FALLBACK_FILENAME
