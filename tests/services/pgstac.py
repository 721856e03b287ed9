"""A throwaway PostgreSQL + PostGIS + pgstac database behind a real stac-fastapi-pgstac API.

Usage (tests, benchmarks, scripts)::

    with PgstacService() as api:
        api.load_collections([collection_dict])
        api.load_items([item_dict, ...])
        pystac_client.Client.open(api.url).search(...)

What happens on ``start()``:

1. ``initdb`` a fresh cluster in a temp dir. PostgreSQL refuses to run as root, so when we are root
   the cluster belongs to an unprivileged system user (``aomtest``, created with ``useradd`` if
   missing) and the server processes run as that user.
2. ``postgres`` listens on ``127.0.0.1:<free port>`` (TCP, scram-sha-256 password auth) and on a
   Unix socket inside the temp dir; durability is off (``fsync=off``) because the data is disposable.
3. ``pypgstac`` migrations install pgstac (extensions postgis, btree_gist, unaccent).
4. ``uvicorn stac_fastapi.pgstac.app:create_app --factory`` serves the API on another free port;
   we wait until ``/`` and ``/collections`` answer.

``stop()`` stops uvicorn (SIGTERM) then the postmaster (SIGINT = fast shutdown), each by PID,
falling back to SIGKILL, and deletes the temp dir.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.services.ports import LOCALHOST, ManagedProcess, ServiceUnavailable, free_port, http_ok, wait_until

PG_MAJOR = os.environ.get("AOM_TEST_PG_MAJOR", "15")
SERVICE_USER = os.environ.get("AOM_TEST_SERVICE_USER", "aomtest")
PG_SUPERUSER = "postgres"
PG_PASSWORD = "aomtest-password"
PG_DATABASE = "pgstac"


def pg_bindir() -> Path:
    """Directory with ``initdb``/``postgres`` (``AOM_TEST_PG_BIN`` overrides)."""
    override = os.environ.get("AOM_TEST_PG_BIN")
    if override:
        return Path(override)
    return Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")


def postgis_available(bindir: Path | None = None) -> bool:
    """True when the PostGIS extension is installed for this PostgreSQL."""
    bindir = bindir or pg_bindir()
    pg_config = bindir / "pg_config"
    sharedir = Path(f"/usr/share/postgresql/{PG_MAJOR}")
    if pg_config.exists():
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True, check=True)
            sharedir = Path(out.stdout.strip())
    return (sharedir / "extension" / "postgis.control").exists()


def check_prerequisites() -> None:
    """Raise :class:`ServiceUnavailable` with a helpful reason if the stack cannot run here."""
    bindir = pg_bindir()
    if not (bindir / "initdb").exists():
        raise ServiceUnavailable(
            f"PostgreSQL {PG_MAJOR} not found at {bindir} (set AOM_TEST_PG_BIN, or install postgresql-{PG_MAJOR})"
        )
    if not postgis_available(bindir):
        raise ServiceUnavailable(
            f"PostGIS for PostgreSQL {PG_MAJOR} is not installed; run scripts/install_test_services.sh as root"
        )


def ensure_service_user(name: str = SERVICE_USER) -> str:
    """Return ``name``, creating it as a no-login system user if missing (root only)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
    return name


def _as_dict(obj: Any) -> dict:
    """Accept plain dicts and pystac objects (anything with ``to_dict``)."""
    if isinstance(obj, Mapping):
        return dict(obj)
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    raise TypeError(f"expected a dict or a pystac object, got {type(obj).__name__}")


class PgstacService:
    """PostgreSQL/PostGIS/pgstac + stac-fastapi-pgstac, on free ports of 127.0.0.1.

    Attributes once started: ``url`` (STAC API root, no trailing slash), ``dsn`` (libpq URL of the
    pgstac database as the superuser), ``pg_port``, ``api_port``, ``workdir``, ``timings`` (seconds per
    startup phase).
    """

    def __init__(self, workdir: str | os.PathLike[str] | None = None, keep_workdir: bool = False) -> None:
        self._given_workdir = Path(workdir) if workdir is not None else None
        self.keep_workdir = keep_workdir or os.environ.get("AOM_TEST_KEEP_SERVICE_DIRS") == "1"
        self.workdir: Path | None = None
        self.pg_port: int | None = None
        self.api_port: int | None = None
        self.url: str = ""
        self.dsn: str = ""
        self.timings: dict[str, float] = {}
        self._postgres: ManagedProcess | None = None
        self._api: ManagedProcess | None = None
        self._run_as: str | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> PgstacService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> PgstacService:
        check_prerequisites()
        try:
            self._start_postgres()
            self._migrate()
            self._start_api()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._api is not None:
            self._api.stop(timeout=10)
            self._api = None
        if self._postgres is not None:
            self._postgres.stop(timeout=20)
            self._postgres = None
        if self.workdir is not None and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    @property
    def running(self) -> bool:
        return bool(self._postgres and self._postgres.running and self._api and self._api.running)

    # ------------------------------------------------------------------ postgres
    def _start_postgres(self) -> None:
        t0 = time.perf_counter()
        bindir = pg_bindir()
        if os.geteuid() == 0:
            self._run_as = ensure_service_user()
        if self._given_workdir is not None:
            self._given_workdir.mkdir(parents=True, exist_ok=True)
            self.workdir = Path(tempfile.mkdtemp(prefix="pgstac-", dir=self._given_workdir))
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="aom-pgstac-"))
        datadir = self.workdir / "data"
        sockdir = self.workdir / "sock"
        sockdir.mkdir()
        pwfile = self.workdir / "pwfile"
        pwfile.write_text(PG_PASSWORD + "\n")
        if self._run_as is not None:
            pw = pwd.getpwnam(self._run_as)
            for p in (self.workdir, sockdir, pwfile):
                os.chown(p, pw.pw_uid, pw.pw_gid)
            os.chmod(self.workdir, 0o700)

        subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                PG_SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            user=self._run_as,
            group=self._run_as,
            extra_groups=[] if self._run_as else None,
            cwd=self.workdir,
            env=self._pg_tool_env(),
        )
        self.timings["initdb"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        self.pg_port = free_port()
        self._postgres = ManagedProcess(
            "postgres",
            [
                str(bindir / "postgres"),
                "-D",
                str(datadir),
                "-c",
                f"listen_addresses={LOCALHOST}",
                "-c",
                f"port={self.pg_port}",
                "-c",
                f"unix_socket_directories={sockdir}",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=128MB",
                "-c",
                "log_min_messages=warning",
            ],
            log_path=self.workdir / "postgres.log",
            env=self._pg_tool_env(),
            cwd=self.workdir,
            user=self._run_as,
            # SIGINT = "fast" shutdown (SIGTERM would wait for every client to disconnect);
            # if we die, SIGQUIT = immediate shutdown.
            stop_signal=signal.SIGINT,
            death_signal=signal.SIGQUIT,
        )
        self.dsn = (
            f"postgresql://{PG_SUPERUSER}:{quote(PG_PASSWORD)}@{LOCALHOST}:{self.pg_port}/{PG_DATABASE}"
        )
        pg_isready = bindir / "pg_isready"

        def ready() -> bool:
            r = subprocess.run(
                [str(pg_isready), "-q", "-h", LOCALHOST, "-p", str(self.pg_port), "-U", PG_SUPERUSER],
                capture_output=True,
            )
            return r.returncode == 0

        wait_until(ready, timeout=60, what="postgres to accept connections", proc=self._postgres)
        self._psql_admin(f"CREATE DATABASE {PG_DATABASE}")
        self.timings["postgres_start"] = time.perf_counter() - t1

    def _pg_tool_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _psql_admin(self, sql: str, dbname: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self._dsn_for(dbname), autocommit=True) as conn:
            conn.execute(sql)

    def _dsn_for(self, dbname: str) -> str:
        return f"postgresql://{PG_SUPERUSER}:{quote(PG_PASSWORD)}@{LOCALHOST}:{self.pg_port}/{dbname}"

    # ------------------------------------------------------------------ pgstac
    def _migrate(self) -> None:
        from pypgstac.db import PgstacDB
        from pypgstac.migrate import Migrate

        t0 = time.perf_counter()
        with PgstacDB(dsn=self.dsn) as db:
            self.pgstac_version = Migrate(db).run_migration()
        self.timings["pgstac_migrate"] = time.perf_counter() - t0

    def api_env(self) -> dict[str, str]:
        """Environment for stac-fastapi-pgstac (its ``PostgresSettings`` reads ``PG*``)."""
        drop = ("PG", "POSTGRES_", "DB_", "ENABLED_EXTENSIONS", "ENABLE_", "PREFIX_PATH", "USE_API_HYDRATE")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env.update(
            PGUSER=PG_SUPERUSER,
            PGPASSWORD=PG_PASSWORD,
            PGHOST=LOCALHOST,
            PGPORT=str(self.pg_port),
            PGDATABASE=PG_DATABASE,
            DB_MIN_CONN_SIZE="1",
            DB_MAX_CONN_SIZE="5",
        )
        return env

    def _start_api(self) -> None:
        assert self.workdir is not None
        t0 = time.perf_counter()
        self.api_port = free_port()
        self._api = ManagedProcess(
            "stac-fastapi-pgstac",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "stac_fastapi.pgstac.app:create_app",
                "--factory",
                "--host",
                LOCALHOST,
                "--port",
                str(self.api_port),
                "--log-level",
                "warning",
            ],
            log_path=self.workdir / "stac-api.log",
            env=self.api_env(),
            # stac-fastapi/pypgstac settings also read a `.env` in the CWD: use an empty dir.
            cwd=self.workdir,
        )
        self.url = f"http://{LOCALHOST}:{self.api_port}"
        wait_until(lambda: http_ok(self.url + "/"), timeout=60, what="STAC API /", proc=self._api)
        wait_until(
            lambda: http_ok(self.url + "/collections"),
            timeout=30,
            what="STAC API /collections",
            proc=self._api,
        )
        self.timings["stac_api_start"] = time.perf_counter() - t0

    # ------------------------------------------------------------------ data helpers
    def _loader(self):  # -> tuple[PgstacDB, Loader]
        from pypgstac.db import PgstacDB
        from pypgstac.load import Loader

        db = PgstacDB(dsn=self.dsn)
        return db, Loader(db=db)

    def load_collections(self, collections: Iterable[Any], mode: str = "upsert") -> None:
        """Insert/update collections (dicts or pystac Collections). ``mode``: a pypgstac ``Methods``."""
        from pypgstac.load import Methods

        db, loader = self._loader()
        with db:
            loader.load_collections(iter([_as_dict(c) for c in collections]), insert_mode=Methods(mode))

    def load_items(self, items: Iterable[Any], mode: str = "upsert") -> None:
        """Insert/update items (dicts or pystac Items); their collections must already exist."""
        from pypgstac.load import Methods

        records = [_as_dict(i) for i in items]
        if not records:
            return
        db, loader = self._loader()
        with db:
            loader.load_items(iter(records), insert_mode=Methods(mode))

    def delete_items(self, collection_id: str, item_ids: Iterable[str]) -> None:
        """Delete items by id (simulates items disappearing from the catalog)."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SET search_path TO pgstac, public")
            for item_id in item_ids:
                conn.execute("SELECT delete_item(%s, %s)", (item_id, collection_id))

    def reset(self) -> None:
        """Empty the catalog: delete every item and collection (and their partitions)."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SET search_path TO pgstac, public")
            conn.execute("DELETE FROM items")
            conn.execute("DELETE FROM collections")

    def count_items(self, collection_id: str | None = None) -> int:
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            if collection_id is None:
                row = conn.execute("SELECT count(*) FROM pgstac.items").fetchone()
            else:
                row = conn.execute(
                    "SELECT count(*) FROM pgstac.items WHERE collection = %s", (collection_id,)
                ).fetchone()
        assert row is not None
        return int(row[0])
