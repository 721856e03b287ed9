"""No credential in any log line of the command line, third-party DEBUG loggers included: a
canary password in a catalog URL, run at ``-v`` against a local STAC API, never appears in the
output, neither as text nor as its ``Authorization: Basic`` base64."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

from tests.pipelines.search.support import all_items, fake_api

REPO = Path(__file__).resolve().parents[2]
CANARY = "SECRET-canary-42"


def test_a_password_in_the_catalog_url_never_reaches_the_log(tmp_path: Path) -> None:
    basic = base64.b64encode(f"user:{CANARY}".encode()).decode()
    with fake_api(all_items()) as api:
        url = api.url.replace("http://", f"http://user:{CANARY}@") + "/"
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "flows.cli",
                "-v",
                "search",
                "--catalog-url",
                url,
                "-c",
                "sentinel-2-l2a",
                "--out",
                str(tmp_path / "found.ndjson"),
                "--no-progress",
                "--max-items",
                "3",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
    output = r.stdout + r.stderr
    assert r.returncode == 0, output
    assert api.auth and api.auth[0] == f"Basic {basic}"  # the client did send the password
    assert "DEBUG pystac_client" in output  # a third-party DEBUG logger did log the request
    assert "'Authorization': '***'" in output and "http://***@127.0.0.1" in output
    assert CANARY not in output and basic not in output
    saved = (tmp_path / "found.ndjson").read_text() + (tmp_path / "found.ndjson.meta.json").read_text()
    assert CANARY not in saved


def test_every_handler_redacts_at_debug(tmp_path: Path) -> None:
    """In process: a handler added by a library after the CLI set up logging still redacts."""
    import logging

    from pipelines.storage import install_log_redaction

    install_log_redaction()
    log_file = tmp_path / "log.txt"
    handler = logging.FileHandler(log_file)
    logger = logging.getLogger("some.third.party")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.debug(
            "GET %s headers %s", f"https://u:{CANARY}@h/x?sig=abc&se=1", {"Authorization": "Bearer tok"}
        )
        try:
            raise OSError(f"cannot open s3://k:{CANARY}@bucket/key")
        except OSError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        handler.close()
    text = log_file.read_text()
    assert CANARY not in text and "Bearer tok" not in text and "sig=abc" not in text
    assert "https://***@h/x?sig=***&se=***" in text and "Traceback" in text
