"""Redaction of credentials: of log lines, URLs and storage options. Every handler of the command line (and of the flows) carries
:class:`RedactingFilter`, so no logger (ours or a third party's, at any level) prints a credential.
URL user:password, auth headers, signature/token/credential parameters (one list,
:data:`SIGNED_URL_PARAMS` + :data:`CREDENTIAL_PARAMS`, shared with ``redact_url`` and the stripping
of signed hrefs) and registered secret values (typed storage-option secrets) become ``***``;
:func:`redact_url` and :func:`redact_options` give copies safe to print or record. Re-exported by
:mod:`pipelines.storage`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus

_NOT_IN_AUTHORITY = r'\s/"<>\\^`{|}'
_USERINFO = re.compile(
    rf"://(?:[^{_NOT_IN_AUTHORITY}?#\[\]]+"
    rf"|[^{_NOT_IN_AUTHORITY}?#\[\]:@]*:(?!\d*[?#])[^{_NOT_IN_AUTHORITY}?#@]*[?#][^{_NOT_IN_AUTHORITY}]*)@"
)
"""The ``user:password@`` of a URL, in a URL or anywhere in a line (:func:`redact_userinfo`, the
one rule of URL, log and href redaction): from ``://`` to the last ``@`` of the authority, which
ends at ``/``, ``?``, ``#``, whitespace or a character no URL holds (``"``, ``<``, ``>`` ...);
so a password may hold ``@`` or ``'`` unencoded, and an ``@`` in a path or query is no userinfo.
A password with an unencoded ``?`` or ``#`` after ``user:`` (a client reads it as a port) is
masked too; ``host:443?q=a@b`` (digits, then the query) is a port."""
_SECRET_HEADER = re.compile(
    r"(?i)((?:proxy-)?authorization|x-amz-security-token|x-api-key|api-key|cookie|set-cookie"
    r"|ocp-apim-subscription-key)(['\"]?\s*[:=,]\s*(?-i:b)?['\"]?)[^'\"\r\n]+"
)

# ---------------------------------------------------------------------------------------------
# The one list of secret parameter names: URL redaction (pipelines.storage.redact_url, which feeds
# tile records, geoemb:source_data and STAC links), log redaction (redact_text) and the stripping of
# signed asset hrefs (pipelines.search.signing.unsign_href) all read it from here.

SIGNED_URL_PARAMS = frozenset(
    {
        # Azure SAS (every field of the token; sig is the signature)
        *("sig", "se", "st", "sp", "sv", "sr", "spr", "srt", "ss", "sip", "sdd", "ses"),
        *("skoid", "sktid", "skt", "ske", "sks", "skv", "saoid", "suoid", "scid"),
        # CloudFront signed URLs, generic signatures and tokens, GCS
        *("signature", "expires", "key-pair-id", "policy", "token", "x-goog-signature"),
    }
)
"""Query parameters (lower case) that make a URL a signed URL: removed from saved asset hrefs,
redacted in URLs and logs. Every ``X-Amz-*`` / ``X-Goog-*`` parameter counts too
(:data:`SIGNED_URL_PREFIXES`)."""

SIGNED_URL_PREFIXES = ("x-amz-", "x-goog-")
"""Query parameter prefixes of AWS SigV4 and GCS V4 signed URLs (signature, credential, token ...)."""

CREDENTIAL_PARAMS = frozenset(
    {
        *("access_token", "refresh_token", "id_token", "sas_token", "api_key", "apikey", "api-key"),
        *("key", "subscription-key", "password", "passwd", "secret", "client_secret", "credential"),
        *("account_key", "aws_secret_access_key", "aws_session_token"),
    }
)
"""Query or ``name=value`` parameters (lower case) whose value is a credential (API keys, OAuth
tokens, Azure API Management ``subscription-key``, passwords): redacted in URLs and logs."""

_ANYWHERE = frozenset(
    {
        *("sig", "signature", "token", "access_token", "refresh_token", "id_token", "sas_token"),
        *("api_key", "apikey", "subscription-key", "password", "passwd", "secret", "client_secret"),
        *("account_key", "aws_secret_access_key", "aws_session_token", "credential"),
        *("x-amz-signature", "x-amz-credential", "x-amz-security-token"),
        *("x-goog-signature", "x-goog-credential"),
    }
)
"""The names distinctive enough to redact as ``name=value`` anywhere in a log line; the others
(``se=``, ``key=`` ...) only as URL query parameters (after ``?`` or ``&``)."""


def _alternation(names: frozenset[str] | set[str]) -> str:
    return "|".join(re.escape(n) for n in sorted(names, key=lambda n: (-len(n), n)))


_SECRET_PARAM = re.compile(
    r"(?i)((?:[?&](?:" + _alternation(SIGNED_URL_PARAMS | CREDENTIAL_PARAMS)
    + r"|(?:" + "|".join(re.escape(p) for p in SIGNED_URL_PREFIXES) + r")[\w-]*)"
    r"|(?<![\w.-])(?:" + _alternation(_ANYWHERE) + r"))=)[^&\s'\"#]+"
)  # fmt: skip


def redact_params(text: str) -> str:
    """``text`` (a URL or a log line) with the value of every secret parameter replaced by ``***``."""
    return _SECRET_PARAM.sub(r"\1***", text)


_SECRET_VALUES: set[str] = set()


_SECRET_OPTION_KEYS = re.compile(
    r"(secret|token|password|passwd|key|credential|signature|sig)", re.IGNORECASE
)


def is_secret_option(key: Any) -> bool:
    """Whether a storage option's value is secret by its key (``secret_access_key``, ``token``, ...)."""
    return bool(_SECRET_OPTION_KEYS.search(str(key))) and key != "endpoint_url"


def redact_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of storage options safe to log: secret-looking values replaced by ``***``."""
    out: dict[str, Any] = {}
    for k, v in (options or {}).items():
        if isinstance(v, Mapping):
            out[k] = redact_options(v)
        else:
            out[k] = "***" if is_secret_option(k) else v
    return out


MASK = "***"
"""What stands for a secret value in everything written: redacted URLs, logs, options, saved hrefs
(where an access rule such as ``api-key`` reads it as "fill the key in here")."""


def redact_url(url: str) -> str:
    """Strip user:password, the values of signature, token and credential query parameters
    (:func:`redact_params`, the list log redaction uses too) and registered secret values
    (:func:`register_secret`: an access rule's API key, whatever its parameter is called) from a URL."""
    return _without_secret_values(redact_params(redact_userinfo(url)))


def redact_userinfo(text: str) -> str:
    """``text`` (a URL or a line) with every URL ``user:password@`` replaced by ``***@``."""
    return _USERINFO.sub("://" + MASK + "@", text)


def has_credentials(url: str) -> bool:
    """Whether ``url`` carries a credential that :func:`redact_url` would mask (``user:password@``,
    a signature, token or credential parameter, a registered secret value). An already masked URL
    (``https://***@host/x?token=***``) carries none."""
    return redact_url(url) != url


_IGNORECASE_FOLDS = {"i": "\u0130\u0131", "k": "\u212a", "s": "\u017f"}
"""The non-ASCII letters ``re.IGNORECASE`` matches to an ASCII letter (dotted and dotless I, the
Kelvin sign, the long s)."""


def _anycase(name: str) -> str:
    """``name`` (lower case: letters, digits, ``-``, ``_``) as a pattern matching it in any case,
    as ``(?i)`` would, without flags (ECMAScript has no inline ones)."""
    return "".join(f"[{c}{c.upper()}{_IGNORECASE_FOLDS.get(c, '')}]" if c.isalpha() else c for c in name)


@lru_cache(maxsize=1)
def credential_pattern() -> str:
    """A regular expression, valid in Python and ECMAScript (JSON Schema ``pattern``, which
    searches), found in a string exactly when :func:`has_credentials` says it carries one, registered
    secret values aside (those live in one process's memory): a ``user:password@`` other than the
    mask ``***@``, or a signature, token or credential parameter whose value is not ``***``. The
    flows' parameter schemas carry it, so that a Prefect server refuses such a parameter before it
    stores it (:class:`flows.params.CredentialFree`)."""
    assert _USERINFO.pattern.startswith("://(?:")
    end = rf"[{_NOT_IN_AUTHORITY}?#\[\]]"  # where an authority ends
    masked_userinfo = rf"\*\*\*@[^{_NOT_IN_AUTHORITY}?#\[\]@]*(?:{end}|$)"
    userinfo = f"://(?!{masked_userinfo})" + _USERINFO.pattern[3:]

    def names(found: frozenset[str] | set[str]) -> str:
        return "|".join(_anycase(n) for n in sorted(found, key=lambda n: (-len(n), n)))

    prefixes = "|".join(_anycase(p) for p in SIGNED_URL_PREFIXES)
    value = r"""=(?!\*\*\*(?:[&\s'"#]|$))[^&\s'"#]"""  # a value, other than the mask
    param = (
        rf"(?:[?&](?:{names(SIGNED_URL_PARAMS | CREDENTIAL_PARAMS)}|(?:{prefixes})[\w-]*)"
        rf"|(?:^|[^\w.-])(?:{names(_ANYWHERE)})){value}"
    )
    return f"{userinfo}|{param}"


def secret_option_key_pattern() -> str:
    """:func:`is_secret_option` as a regular expression (Python and ECMAScript) found in a secret
    storage option's key."""
    return "|".join(_anycase(w) for w in _SECRET_OPTION_KEYS.pattern.strip("()").split("|"))


def unsign_url(url: str) -> str:
    """``url`` fit to persist and to sign again for reading: the signed-URL parameters
    (:data:`SIGNED_URL_PARAMS`, :data:`SIGNED_URL_PREFIXES`) removed, since a reader re-signs its
    in-memory copy and an access rule does not sign an href that still has a ``sig``; the value of
    every other credential parameter (:data:`CREDENTIAL_PARAMS`: ``key``, ``api_key``,
    ``access_token`` ...) replaced by ``***`` as :func:`redact_url` does, so the saved href shows
    that it needed one; ``user:password@`` becomes ``***@``. Every other parameter is kept as
    written (no re-encoding); a URL without a secret comes back unchanged."""
    out = redact_userinfo(url)
    base, question, rest = out.partition("?")
    if not question:
        return out
    query, hash_, fragment = rest.partition("#")
    kept = []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        low = unquote_plus(name).lower()
        if low in SIGNED_URL_PARAMS or low.startswith(SIGNED_URL_PREFIXES):
            continue
        kept.append(f"{name}={MASK}" if low in CREDENTIAL_PARAMS and value else part)
    clean = "&".join(kept)
    return base + (f"?{clean}" if clean else "") + hash_ + fragment


def link_href(url: str) -> str:
    """``url`` as a link in published metadata (STAC links and assets, Zarr attributes, completion
    records): the one rule for such hrefs. ``user:password@`` is dropped, so the link names the
    place a reader opens with their own credentials; signed-URL parameters are removed and other
    credential parameters masked (:func:`unsign_url`); registered secret values are masked
    (:func:`redact_url`). A URL without a secret comes back unchanged."""
    return redact_url(unsign_url(_USERINFO.sub("://", url)))


def redact_record(value: Any) -> Any:
    """A copy of a JSON-like record (dicts, lists, strings ...) with :func:`redact_url` applied to
    every string value (keys stay): the last step before a record, report or attribute that may
    name a URL is written."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, Mapping):
        return {k: redact_record(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_record(v) for v in value]
    return value


ANYWHERE_MIN_LEN = 6
"""A registered secret this long or longer is replaced wherever it appears; a shorter one (``true``,
``1``, a 4-character key) would mask ordinary words, so it is replaced only as a whole value: of a
URL query parameter (``?code=k3Y9&``, whatever the parameter is called) or of a secret-looking
option (``secret='k3Y9'``, ``"token": "k3Y9"``, ``password=k3Y9``: :func:`is_secret_option`).
URL ``user:password@`` is masked whole by the userinfo rule, whatever its length."""

_SHORT_SECRETS: set[str] = set()


def register_secret(value: Any) -> None:
    """Also replace this literal value in every log line and redacted URL (its base64 forms in
    ``user:value`` pairs are caught by the header rule); used for storage-option secrets and the
    API keys of ``api-key`` access rules. A value shorter than :data:`ANYWHERE_MIN_LEN` is replaced
    only where it is a whole parameter or option value."""
    text = str(value) if value is not None else ""
    if len(text) >= ANYWHERE_MIN_LEN:
        _SECRET_VALUES.add(text)
    elif text and text != MASK:
        _SHORT_SECRETS.add(text)


def redact_text(text: str) -> str:
    """A line safe to log: URL user:password, auth headers, signature/token parameters and
    registered secret values replaced by ``***``."""
    text = redact_userinfo(text)
    text = _SECRET_HEADER.sub(r"\1\2***", text)
    return _without_secret_values(redact_params(text))


_EXCEPTION_TEXT_ATTRS = ("filename", "filename2", "strerror", "msg", "reason", "url")


def redact_exception(exc: BaseException) -> bool:
    """Redact, in place, the text of ``exc`` and of its cause and context (their ``args``, notes and
    the string attributes messages are made of: an ``OSError``'s file names, ...), for an
    exception that is persisted (a Prefect run's state message, its pickled result). Returns
    whether ``str()`` of each is clean afterwards (False: a message built from other objects, such
    as an HTTP library's URL object, still names a credential)."""
    clean, seen, todo = True, set(), [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        e.args = tuple(redact_text(a) if isinstance(a, str) else a for a in e.args)
        for attr in _EXCEPTION_TEXT_ATTRS:
            value = getattr(e, attr, None)
            if isinstance(value, str):
                with contextlib.suppress(AttributeError, TypeError):  # a read-only attribute
                    setattr(e, attr, redact_text(value))
        notes = getattr(e, "__notes__", None)
        if isinstance(notes, list):
            notes[:] = [redact_text(n) if isinstance(n, str) else n for n in notes]
        try:
            text = str(e)
        except Exception:
            text = ""
        clean = clean and redact_text(text) == text
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]
    return clean


def _without_secret_values(text: str) -> str:
    for secret in tuple(_SECRET_VALUES):
        text = text.replace(secret, MASK)
    if _SHORT_SECRETS:
        text = _short_value_pattern(frozenset(_SHORT_SECRETS)).sub(r"\g<before>" + MASK, text)
    return text


@lru_cache(maxsize=8)
def _short_value_pattern(secrets: frozenset[str]) -> re.Pattern[str]:
    """The short registered secrets as whole values (:data:`ANYWHERE_MIN_LEN`): after ``?name=`` /
    ``&name=`` (any name), or after a secret-looking name and ``=`` or ``:`` (quoted or not); the
    value must end there (``&``, ``#``, a quote, a space, a separator or the end of the text)."""
    values = _alternation(secrets)
    option = r"(?<![\w-])[\w-]*(?i:" + _SECRET_OPTION_KEYS.pattern + r")[\w-]*['\"]?\s*[=:]\s*"
    return re.compile(
        r"(?P<before>(?:[?&][^=&#\s'\"<>]+=|" + option + r")(?P<quote>['\"]?))"
        r"(?:" + values + r")(?=(?P=quote)(?:[&#\s,;'\"<>)}\]]|$))"
    )


class RedactingFilter(logging.Filter):
    """A handler filter that rewrites each record's message (and traceback text) with
    :func:`redact_text`; it never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let the handler report it as usual
            return True
        clean = redact_text(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def install_log_redaction(*loggers: logging.Logger) -> None:
    """Redact every log line of this process: one :class:`RedactingFilter` on every handler of
    the root logger, of ``loggers`` and of every logger that has handlers now (idempotent), and a
    log-record factory that redacts records made later, for handlers added afterwards (Prefect's)."""
    existing = [logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict)]
    for logger in (logging.getLogger(), *loggers, *existing):
        for handler in getattr(logger, "handlers", ()):
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "aom_redacting", False):
        logging.setLogRecordFactory(_redacting_factory(factory))


def _redacting_factory(inner: Any) -> Any:
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = inner(*args, **kwargs)
        RedactingFilter().filter(record)
        return record

    make.aom_redacting = True  # type: ignore[attr-defined]
    return make
