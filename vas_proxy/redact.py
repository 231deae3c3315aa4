"""Keeping secrets out of what leaves the process: error messages, `/health`, logs.

An upstream URL may carry credentials (`http://user:pass@host/v1`, `?api_key=...`), and an
upstream's error text may echo the request's `Authorization` header. Both are cleaned where they
enter our messages (the upstream client, the runtime's shown URL), and once more in the error
envelope. A leaf module: anything may import it.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
_SECRET_QUERY = re.compile(r"key|token|secret|sig|auth|pass|credential", re.I)
_PATTERNS = (
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"),  # an echoed Authorization
    re.compile(r"\b(sk|rk|pk)-[A-Za-z0-9_-]{8,}"),  # OpenAI-style keys
    re.compile(r"(?i)\b(api[_-]?key|token|secret|password)(\s*[=:]\s*)[^\s&,;\"']+"),
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+@"),  # user:pass@ in any URL in the text
)
_known: set[str] = set()
_lock = threading.Lock()


def register_secret(secret: str | None) -> None:
    """Mask `secret` (an API key this process was given) wherever `redact` sees it."""
    if secret and len(secret) >= 4:
        with _lock:
            _known.add(secret)


def redact_url(url: str) -> str:
    """`url` without its userinfo and with secret-looking query values masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    netloc = parts.netloc.rpartition("@")[2]
    if "@" in parts.netloc:
        netloc = f"{MASK}@{netloc}"
    query = urlencode([(k, MASK if _SECRET_QUERY.search(k) else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str) -> str:
    """`text` with registered secrets, bearer tokens, key-looking strings and URL credentials
    masked. Meant for messages, not data: it may mask a harmless word that looks like a key."""
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for s in known:
        text = text.replace(s, MASK)
    text = _PATTERNS[0].sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = _PATTERNS[1].sub(lambda m: f"{m.group(1)}-{MASK}", text)
    text = _PATTERNS[2].sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return _PATTERNS[3].sub(f"{MASK}@", text)
