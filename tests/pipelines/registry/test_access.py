"""pipelines.registry.access: SAS tokens cached until expiry, credentials from their standard places,
one-line hints; against a local token server (no internet)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines.registry import AccessDeniedError, Registry, SasTokens, load_registry, resolve_access
from pipelines.retry import RetryPolicy
from tests.pipelines.access_servers import SAS_SIG, ProviderServer, registry_yaml, serve

FAST = RetryPolicy(max_attempts=3, initial_delay_s=0.0, jitter=0.0, max_delay_s=0.0, timeout_s=5.0)


def _registry(tmp_path: Path, server: ProviderServer, catalog: str, kind: str) -> Registry:
    reg = tmp_path / f"{catalog}.yaml"
    reg.write_text(registry_yaml(server, catalog, kind))
    return load_registry([reg])


def test_sas_tokens_are_cached_until_shortly_before_expiry(tmp_path: Path) -> None:
    with serve(tmp_path, "sas", token_expiry_s=3600) as server:
        reg = _registry(tmp_path, server, "test-pc", "sas-token")
        tokens = SasTokens(policy=FAST)
        a = resolve_access(reg, "test-pc", "landsat-c2-l2", tokens=tokens)
        b = resolve_access(reg, "test-pc", "landsat-c2-l2", tokens=tokens)
        assert server.token_requests == 1 and a.token == b.token
        assert a.sign(f"{server.url}/x.tif").endswith(f"sig={SAS_SIG}")
        assert a.sign("https://other.example/x.tif") == "https://other.example/x.tif"
        assert SAS_SIG not in repr(a)  # the resolved access never shows its secrets
        server.token_expiry_s = 60  # less than the renewal margin: every use fetches a fresh one
        tokens.clear()
        for _ in range(2):
            resolve_access(reg, "test-pc", "landsat-c2-l2", tokens=tokens)
        assert server.token_requests == 3


def test_a_refused_token_request_names_the_subscription_key(tmp_path: Path) -> None:
    with serve(tmp_path, "sas", force=[429, 401]) as server:
        reg = _registry(tmp_path, server, "test-pc", "sas-token")
        with pytest.raises(AccessDeniedError, match=r"refused test-pc/landsat-c2-l2 \(HTTP 401\)"):
            resolve_access(reg, "test-pc", "landsat-c2-l2", tokens=SasTokens(policy=FAST))
        assert server.token_requests == 0 and len(server.requests) == 2  # the 429 was retried


def test_builtin_hints_name_each_credential() -> None:
    reg = load_registry()
    pc = reg.access_for("planetary-computer", "sentinel-2-l2a")
    assert pc.kind == "sas-token" and pc.key_env == "PC_SDK_SUBSCRIPTION_KEY"
    assert reg.access_for("earth-search", "landsat-c2-l2").kind == "requester-pays"
    assert reg.access_for("earth-search", "sentinel-2-c1-l2a").kind == "anonymous"
    assert reg.access_for("cmr-stac-lpcloud", "HLSS30.v2.0").kind == "earthdata"


def test_earthdata_netrc_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = load_registry()
    monkeypatch.delenv("EARTHDATA_TOKEN", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine urs.earthdata.nasa.gov login someone password secret-pw\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    access = resolve_access(reg, "cmr-stac-lpcloud", "HLSS30_2.0")
    assert access.gdal_options["GDAL_HTTP_NETRC"] == "YES" and access.gdal_options[
        "GDAL_HTTP_NETRC_FILE"
    ] == str(netrc)
    assert "secret-pw" not in repr(access)
    netrc.write_text("machine elsewhere login a password b\n")
    with pytest.raises(AccessDeniedError, match=r"EARTHDATA_TOKEN=<token> .* ~/.netrc"):
        resolve_access(reg, "cmr-stac-lpcloud", "HLSS30_2.0")


def _api_key_registry(query_env: dict[str, str]) -> Registry:
    from pipelines.registry import parse_registry

    access = {"kind": "api-key", "query_env": query_env, "sign_hosts": [".data.example"]}
    return parse_registry(
        [("k.yaml", {"catalogs": {"keyed": {"kind": "stac-api", "url": "https://x", "access": access}}})]
    )


def test_api_keys_fill_masked_or_missing_parameters_of_the_named_hosts_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipelines.redaction import redact_text, redact_url

    secret = "s3cret/Value+9"  # a parameter name no redaction list knows: the value itself is redacted
    monkeypatch.setenv("AOM_TEST_TOKEN", secret)
    monkeypatch.setenv("AOM_TEST_KEY", "k-123456")
    reg = _api_key_registry({"apiToken": "AOM_TEST_TOKEN", "key": "AOM_TEST_KEY"})
    access = resolve_access(reg, "keyed")
    enc = "s3cret%2FValue%2B9"
    assert access.sign("https://a.data.example/x.tif?apiToken=***&v=1%202#f") == (
        f"https://a.data.example/x.tif?apiToken={enc}&v=1%202&key=k-123456#f"
    )
    assert access.sign("https://a.data.example/x.tif?APITOKEN=%2A%2A%2A&key=live") == (
        f"https://a.data.example/x.tif?APITOKEN={enc}&key=live"  # a live value is kept
    )
    assert (
        access.sign("https://other.example/x.tif?apiToken=***") == "https://other.example/x.tif?apiToken=***"
    )
    signed = access.sign("https://a.data.example/x.tif")
    from pipelines.search import catalog_signer, sign_for_reading

    item: dict[str, Any] = {"id": "i", "assets": {"b": {"href": "https://a.data.example/x.tif?key=***"}}}
    (copy,) = sign_for_reading([item], catalog_signer("keyed", reg))
    assert copy["assets"]["b"]["href"] == f"https://a.data.example/x.tif?key=k-123456&apiToken={enc}"
    assert item["assets"]["b"]["href"].endswith("?key=***")  # the caller's item stays masked
    assert secret not in repr(access) and "k-123456" not in repr(access)
    for shown in (redact_url(signed), redact_text(f"GDAL: opening {signed}"), redact_text(f"token {secret}")):
        assert secret not in shown and enc not in shown and "k-123456" not in shown, shown


def test_a_short_api_key_is_redacted_under_any_parameter_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key shorter than 6 characters was not registered with redaction: under a parameter name
    no list knows (``code``) it showed in redacted URLs and log lines."""
    import pipelines.redaction as redaction
    from pipelines.redaction import redact_text, redact_url

    monkeypatch.setattr(redaction, "_SHORT_SECRETS", set(), raising=False)
    monkeypatch.setenv("AOM_TEST_CODE", "Zq7x")
    access = resolve_access(_api_key_registry({"code": "AOM_TEST_CODE"}), "keyed")
    signed = access.sign("https://a.data.example/x.tif?v=1")
    assert signed == "https://a.data.example/x.tif?v=1&code=Zq7x"
    assert redact_url(signed) == "https://a.data.example/x.tif?v=1&code=***"
    assert redact_text(f"GDAL: opening {signed} failed") == f"GDAL: opening {redact_url(signed)} failed"


def test_a_missing_api_key_variable_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AOM_TEST_KEY", "k-123456")
    monkeypatch.setenv("AOM_TEST_TOKEN", "  ")  # blank is not a key
    reg = _api_key_registry({"key": "AOM_TEST_KEY", "apiToken": "AOM_TEST_TOKEN"})
    with pytest.raises(AccessDeniedError) as err:
        resolve_access(reg, "keyed")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("no API key found (AOM_TEST_TOKEN not set): keyed needs")
    assert "set AOM_TEST_KEY (query parameter 'key'), AOM_TEST_TOKEN (query parameter 'apiToken')" in msg
    assert "k-123456" not in msg
