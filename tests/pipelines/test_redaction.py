"""One list of secret parameters: URL redaction (tile records, geoemb:source_data, STAC links) and
log redaction agree on every signed-URL and credential parameter (pipelines/redaction.py)."""

from __future__ import annotations

import traceback

import pytest

from pipelines.redaction import (
    CREDENTIAL_PARAMS,
    SIGNED_URL_PARAMS,
    SIGNED_URL_PREFIXES,
    redact_record,
    redact_text,
    unsign_url,
)
from pipelines.storage import redact_url

CANARY = "c4n4ry-S3CR3T%2Fv"

# signed URLs as the providers issue them (the secret parts hold CANARY)
SIGNED = [
    "https://b.s3.amazonaws.com/k.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={c}"
    "&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    "&X-Amz-Security-Token={c}&X-Amz-Signature={c}",
    "https://storage.googleapis.com/b/k.tif?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential={c}"
    "&X-Goog-Date=20240101T000000Z&X-Goog-Expires=900&X-Goog-SignedHeaders=host&X-Goog-Signature={c}",
    "https://a.blob.core.windows.net/c/k.tif?sv=2022-11-02&ss=b&srt=o&sp=r&se=2030-01-01&st=2024-01-01"
    "&spr=https&sig={c}",
    "https://d111.cloudfront.net/k.tif?Expires=1700000000&Signature={c}&Key-Pair-Id={c}",
    "https://maps.googleapis.com/x?center=1&key={c}",
    "https://api.example.org/items?access_token={c}&page=2",
    "https://api.example.org/items?api_key={c}&apikey={c}&page=2",
    "https://apim.azure-api.net/x?subscription-key={c}&page=2",
    "https://h/x?token={c}&password={c}&client_secret={c}",
]


@pytest.mark.parametrize("url", SIGNED)
def test_url_and_log_redaction_remove_every_signature_and_credential(url: str) -> None:
    """redact_url kept X-Goog-Signature, X-Goog-Credential, access_token, api_key, key and
    subscription-key values (it lands in tile records and STAC links); the log filter kept some of
    the others. Both now read one list."""
    url = url.format(c=CANARY)
    for redacted in (redact_url(url), redact_text(f"GET {url} -> 403")):
        assert CANARY not in redacted, redacted
        assert "***" in redacted and url.split("?")[0] in redacted  # the path stays readable


@pytest.mark.parametrize("name", sorted(SIGNED_URL_PARAMS | CREDENTIAL_PARAMS))
def test_every_listed_parameter_is_redacted_by_both(name: str) -> None:
    for case in (name, name.upper()):
        url = f"https://h/p/x.tif?a=1&{case}={CANARY}&b=2"
        assert redact_url(url) == f"https://h/p/x.tif?a=1&{case}=***&b=2"
        # the log filter says the same (its header rule may hide more of the line, never less)
        assert CANARY not in redact_text(url) and redact_text(url).startswith(
            f"https://h/p/x.tif?a=1&{case}=***"
        )


def test_ordinary_text_and_query_parameters_stay() -> None:
    line = "tile key=T001 se=3 monkey=1 https://h/x.tif?version=2&page=3"
    assert redact_text(line) == line and redact_url("https://h/x.tif?version=2&page=3").endswith("page=3")
    assert redact_text("Authorization: AWS4-HMAC-SHA256 Credential=AKIAX/1, Signature=f00d") == (
        "Authorization: ***"
    )
    assert "AKIAX" not in redact_text("aws: Credential=AKIAX/20240101/us-east-1/s3/aws4_request")


@pytest.mark.parametrize(
    "name", sorted(SIGNED_URL_PARAMS | CREDENTIAL_PARAMS | {"X-Amz-Date", "X-Goog-Expires"})
)
def test_unsign_url_drops_signatures_and_masks_credentials(name: str) -> None:
    """unsign_href (saved asset hrefs and links) removed only the signed-URL parameters: an API key,
    an OAuth token or a password in a query was saved as found. Signed-URL parameters are dropped
    (the reader signs again), every other credential is masked as redact_url masks it."""
    for case in (name, name.upper()):
        url = f"https://h/p/x%20y.tif?a=b%2Fc&{case}={CANARY}&page=2#frag"
        low = name.lower()
        signed = low in SIGNED_URL_PARAMS or low.startswith(SIGNED_URL_PREFIXES)
        middle = "" if signed else f"{case}=***&"
        assert unsign_url(url) == f"https://h/p/x%20y.tif?a=b%2Fc&{middle}page=2#frag"
    for url in SIGNED:
        assert CANARY not in unsign_url(url.format(c=CANARY))


def test_unsign_url_leaves_clean_urls_alone() -> None:
    for url in (
        "https://h/x.tif?version=2&monkey=1&a=b%2Fc",
        "s3://b/k.tif",
        "/tmp/a b/x.tif",
        "https://h/x.tif",
    ):
        assert unsign_url(url) == url
    assert unsign_url("https://h/x.tif?sig=abc") == "https://h/x.tif"
    assert unsign_url(f"https://u:{CANARY}@h/x.tif?key=") == "https://***@h/x.tif?key="
    assert unsign_url("https://h/x.tif?key=***") == "https://h/x.tif?key=***"  # idempotent


def test_redact_record_redacts_every_string_value() -> None:
    record = {"a": [f"https://h/x?api_key={CANARY}", 1, None], "b": {"c": f"s3://u:{CANARY}@b/k"}, "key": 3}
    assert redact_record(record) == {
        "a": ["https://h/x?api_key=***", 1, None],
        "b": {"c": "s3://***@b/k"},
        "key": 3,
    }


@pytest.fixture
def fresh_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registered secrets of this test only (registration is process-wide)."""
    import pipelines.redaction as redaction

    monkeypatch.setattr(redaction, "_SECRET_VALUES", set())
    monkeypatch.setattr(redaction, "_SHORT_SECRETS", set(), raising=False)


@pytest.mark.usefixtures("fresh_secrets")
def test_a_short_registered_secret_is_masked_where_it_is_a_whole_value() -> None:
    """A secret shorter than 6 characters (an API key under a parameter name no list knows, a short
    storage-option secret) was never registered, so ``?code=k3Y9`` kept it in URLs and logs. It is
    now masked as the whole value of a query parameter or of a secret-looking option, and nowhere
    else (a short value masked anywhere would mask ordinary words)."""
    from pipelines.redaction import register_secret

    register_secret("k3Y9")
    url = "https://h/x.tif?code=k3Y9&page=2#f"
    assert redact_url(url) == "https://h/x.tif?code=***&page=2#f"
    assert redact_url("https://h/x.tif?a=1&code=k3Y9") == "https://h/x.tif?a=1&code=***"
    assert redact_text(f"GET {url} -> 403") == "GET https://h/x.tif?code=***&page=2#f -> 403"
    for option in ("S3FileSystem(secret='k3Y9', anon=False)", '{"token": "k3Y9"}', "password=k3Y9 ok"):
        assert "k3Y9" not in redact_text(option) and "***" in redact_text(option), option
    # anywhere else it is ordinary text: a word, part of a longer value, a non-secret option
    line = "tile k3Y9 of k3Y9x: ?code=k3Y9x&v=ak3Y9 region=k3Y9 https://h/k3Y9/x.tif"
    assert redact_text(line) == line and redact_url(line) == line


USERINFO = [
    # (URL, the URL with its user:password masked): the same for URLs, log lines and saved hrefs
    ("s3://user:pass@bucket/k.tif", "s3://***@bucket/k.tif"),
    ("https://u:p@h/x?y", "https://***@h/x?y"),
    ("http://u:p@[::1]:8080/x", "http://***@[::1]:8080/x"),
    ("https://ghp_tok@github.com/o/r", "https://***@github.com/o/r"),
    # an '@' in the password, unencoded: clients take the last '@' (all three kept 'ss')
    ("https://user:p@ss@host/x.tif", "https://***@host/x.tif"),
    # a quote is a valid userinfo character (the log rule stopped there and kept it all)
    ("https://bob:it's@h/x.tif", "https://***@h/x.tif"),
    # a '#' in the password, unencoded (the href rule kept it)
    ("https://u:p#ss@h/x.tif", "https://***@h/x.tif"),
    # a URL inside a GDAL path or inside a query (the href rule looked at the start only)
    ("/vsicurl/https://u:pw@h/x.tif", "/vsicurl/https://***@h/x.tif"),
    ("https://h/x.tif?next=s3://u:pw@b/k", "https://h/x.tif?next=s3://***@b/k"),
    # no userinfo: an '@' in the path or the query of a URL without a path (the URL and log rules
    # masked the host: 'https://***@x.org')
    ("https://h/path/a@b.tif", "https://h/path/a@b.tif"),
    ("s3://bucket/users/a@b.com/f.tif", "s3://bucket/users/a@b.com/f.tif"),
    ("https://example.org?email=me@x.org", "https://example.org?email=me@x.org"),
    ("http://[::1]:8080?x=a@b", "http://[::1]:8080?x=a@b"),
    ("https://h:443?to=a@b", "https://h:443?to=a@b"),
]


@pytest.mark.parametrize(("url", "masked"), USERINFO)
def test_url_log_and_href_redaction_mask_the_same_userinfo(url: str, masked: str) -> None:
    """redact_url, redact_text and unsign_url had three userinfo patterns: each kept a password
    another masked, or masked a host. One pattern: from '://' to the last '@' of the authority."""
    assert redact_url(url) == masked
    assert redact_text(f"GET {url} -> 403") == f"GET {masked} -> 403"
    assert redact_text(f"'{url}'") == f"'{masked}'"
    assert unsign_url(url) == masked


def test_userinfo_in_text_stops_at_the_url() -> None:
    """A space ends the URL: redact_url masked 'example.org: ask admin' in this reason."""
    line = "cannot open https://example.org: ask admin@example.org <- s3://k:SECRET@b/x"
    expected = "cannot open https://example.org: ask admin@example.org <- s3://***@b/x"
    assert redact_url(line) == expected and redact_text(line) == expected


def test_redact_exception_cleans_the_messages_of_an_exception_and_its_chain() -> None:
    from pipelines.redaction import redact_exception

    url = "https://user:SECRETPW7@h/x?token=SECRET123"
    try:
        try:
            raise KeyError(f"no {url}")
        except KeyError as inner:
            raise OSError(2, "No such file", url) from inner
    except OSError as exc:
        caught = exc
    caught.add_note(f"while reading {url}")
    assert redact_exception(caught)
    text = "".join(traceback.format_exception(caught))
    assert "SECRET" not in text and "https://***@h/x?token=***" in text
    assert isinstance(caught, FileNotFoundError) and caught.errno == 2  # the same exception

    class Opaque(Exception):
        def __str__(self) -> str:
            return f"GET {url}"

    assert not redact_exception(Opaque())  # a message made of other objects: reported, not cleaned


# ---------------------------------------------------------------------------------------------
# credential_pattern: has_credentials as a JSON Schema pattern (the flows' parameter schemas)

TRICKY = [
    "s3://bucket/cubes",
    "s3://bucket/a@b/c?d=e@f",  # an @ in a path or query is no userinfo
    "https://host:443?q=a@b",  # a port, then a query
    "https://user:pa@ss@h.example/x",  # a password holding @
    "https://user:pa?ss@h.example/x",  # ... or an unencoded ?
    "https://user@h.example/x",
    "https://***@h.example/x?token=***&sig=***",  # masked: no credential
    "https://***@x@h.example/x",
    "https://h/x?token=***x",
    "https://h/x?token=",
    "https://h/x?token=***#frag",
    "https://h/x?token=***?key=v",
    "https://h/x?mytoken=v&my-key=v",
    "https://h/x/token=v",  # a name= anywhere, not only as a query parameter
    "https://h/x/my-token=v",
    "https://h/x?ſig=v",  # re.IGNORECASE folds the long s to s
    "https://h/x?\u212aEY=v",  # ... and the Kelvin sign to k
    "https://h/x?X-Amz-Anything=v",
    "https://h/x?se=2024&sp=r",
    "file:///tmp/a b?token=v",
    "https://h/x?sig=v\n",
    "",
]


@pytest.mark.parametrize("url", [*TRICKY, *(u.format(c=CANARY) for u in SIGNED)])
def test_the_credential_pattern_finds_what_has_credentials_finds(url: str) -> None:
    """Flow parameter schemas carry credential_pattern() so that a Prefect server (which searches
    with Python's re) refuses what the parameter models refuse: the two agree on every URL."""
    import re

    from pipelines.redaction import credential_pattern, has_credentials

    assert (re.search(credential_pattern(), url) is not None) == has_credentials(url), url


def test_the_credential_pattern_folds_case_as_re_ignorecase_does() -> None:
    import re

    from pipelines.redaction import _anycase

    bmp = "".join(chr(i) for i in range(0x10000) if not 0xD800 <= i < 0xE000)
    for letter in "abcdefghijklmnopqrstuvwxyz":
        assert set(re.findall(_anycase(letter), bmp)) == set(re.findall(letter, bmp, re.IGNORECASE))


def test_the_credential_patterns_are_ecmascript_too() -> None:
    """JSON Schema patterns are ECMAScript regular expressions (the Prefect UI's forms): both
    compile there, Unicode mode included, and find the same credential."""
    import json
    import shutil
    import subprocess

    from pipelines.redaction import credential_pattern, secret_option_key_pattern

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = (
        "const [p, k] = JSON.parse(process.argv[1]);"
        "const r = new RegExp(p, 'u'); new RegExp(k, 'u');"
        "console.log(JSON.stringify(process.argv.slice(2).map((u) => r.test(u))));"
    )
    urls = ["https://u:pw@h/x", "https://***@h/x?token=***", "https://h/x?X-Amz-Signature=v", "s3://b/k"]
    out = subprocess.run(
        [node, "-e", script, json.dumps([credential_pattern(), secret_option_key_pattern()]), *urls],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == [True, False, True, False]
