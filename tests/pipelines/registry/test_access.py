"""pipelines.registry.access: SAS tokens cached until expiry, credentials from their standard places,
one-line hints; against a local token server (no internet)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.registry import AccessDeniedError, SasTokens, load_registry, resolve_access
from pipelines.retry import RetryPolicy
from tests.pipelines.access_servers import SAS_SIG, registry_yaml, serve

FAST = RetryPolicy(max_attempts=3, initial_delay_s=0.0, jitter=0.0, max_delay_s=0.0, timeout_s=5.0)


def _registry(tmp_path: Path, server: object, catalog: str, kind: str) -> object:
    reg = tmp_path / f"{catalog}.yaml"
    reg.write_text(registry_yaml(server, catalog, kind))  # type: ignore[arg-type]
    return load_registry([reg])


def test_sas_tokens_are_cached_until_shortly_before_expiry(tmp_path: Path) -> None:
    with serve(tmp_path, "sas", token_expiry_s=3600) as server:
        reg = _registry(tmp_path, server, "test-pc", "sas-token")
        tokens = SasTokens(policy=FAST)
        a = resolve_access(reg, "test-pc", "landsat-c2-l2", tokens=tokens)  # type: ignore[arg-type]
        b = resolve_access(reg, "test-pc", "landsat-c2-l2", tokens=tokens)  # type: ignore[arg-type]
        assert server.token_requests == 1 and a.token == b.token
        assert a.sign(f"{server.url}/x.tif").endswith(f"sig={SAS_SIG}")
        assert a.sign("https://other.example/x.tif") == "https://other.example/x.tif"
        assert SAS_SIG not in repr(a)  # the resolved access never shows its secrets
        server.token_expiry_s = 60  # less than the renewal margin: every use fetches a fresh one
        tokens.clear()
        for _ in range(2):
            resolve_access(reg, "test-pc", "landsat-c2-l2", tokens=tokens)  # type: ignore[arg-type]
        assert server.token_requests == 3


def test_a_refused_token_request_names_the_subscription_key(tmp_path: Path) -> None:
    with serve(tmp_path, "sas", force=[429, 401]) as server:
        reg = _registry(tmp_path, server, "test-pc", "sas-token")
        with pytest.raises(AccessDeniedError, match=r"refused test-pc/landsat-c2-l2 \(HTTP 401\)"):
            resolve_access(reg, "test-pc", "landsat-c2-l2", tokens=SasTokens(policy=FAST))  # type: ignore[arg-type]
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
