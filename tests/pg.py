"""A throwaway PostgreSQL cluster for the tests: started once per session, a database per test.

`shared_cluster(request)` starts the cluster the first time any test asks (from a fixture or a
helper like `store_impls`, which cannot see fixtures the test module did not import) and stops
it when the session ends; `pg_cluster` is the same as a session fixture and `pg_url` a fresh,
empty schema for one test (dropped after it; `PgCluster.database()` gives a whole database), as
a URL with a password. A test module uses
them by importing the fixture functions (`from .pg import pg_cluster_fixture, pg_url_fixture`).

The cluster is Debian's `postgresql` package (`initdb` and `pg_ctl` under
`/usr/lib/postgresql/*/bin/`, or on PATH), in a temporary directory, listening on 127.0.0.1 only
(and a socket inside that directory), with `fsync=off` (a test cluster has nothing to keep).
Run as root, the server runs as the `postgres` user, which PostgreSQL insists on. Without
PostgreSQL the tests that need it are skipped, never faked.

TCP clients authenticate with scram-sha-256 and `PASSWORD`, so a test can check that no message
ever repeats it; the admin connection uses the socket (trust).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest

SKIP_REASON: Final = "PostgreSQL is not installed (.ci/run installs the postgresql package)"
USER: Final = "postgres"
PASSWORD: Final = "s3cret-pw-never-shown"
TESTS_DB: Final = "tests"  # where each test gets its own schema
_KEY: Final = pytest.StashKey["PgCluster | str"]()
_names = itertools.count(1)


def find_bin_dir() -> Path | None:
    """The directory holding `initdb` and `pg_ctl`: the newest Debian install, else PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(initdb).resolve().parent
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PgCluster:
    """A running cluster: make databases in it, get their URLs, restart or stop it."""

    bin_dir: Path
    base: Path
    port: int
    _as_postgres: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def sockdir(self) -> Path:
        return self.base / "sock"

    def url(self, dbname: str, *, password: str | None = PASSWORD) -> str:
        auth = f"{USER}:{password}" if password is not None else USER
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database; its name."""
        import psycopg

        name = f"t{os.getpid()}_{next(_names)}"
        with psycopg.connect(
            host=str(self.sockdir), port=self.port, user=USER, dbname="postgres", autocommit=True
        ) as db:
            db.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(
            host=str(self.sockdir), port=self.port, user=USER, dbname="postgres", autocommit=True
        ) as db:
            # FORCE: a test that failed half way may have left a connection open.
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextlib.contextmanager
    def schema(self) -> Iterator[str]:
        """A fresh, empty schema in the shared `tests` database for one test (much cheaper than
        a database), as a URL whose search_path is that schema; dropped afterwards, with any
        connection the test left open (found by the URL's application_name)."""
        import psycopg

        name = f"s{os.getpid()}_{next(_names)}"
        with psycopg.connect(
            host=str(self.sockdir), port=self.port, user=USER, dbname=TESTS_DB, autocommit=True
        ) as db:
            db.execute(f'CREATE SCHEMA "{name}"')
        try:
            yield (self.url(TESTS_DB) + f"?options=-csearch_path%3D{name}&application_name={name}")
        finally:
            with psycopg.connect(
                host=str(self.sockdir), port=self.port, user=USER, dbname=TESTS_DB, autocommit=True
            ) as db:
                db.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s AND pid <> pg_backend_pid()",
                    [name],
                )
                db.execute(f'DROP SCHEMA "{name}" CASCADE')

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database for one test, as a URL with the password; dropped afterwards."""
        name = self.create_database()
        try:
            yield self.url(name)
        finally:
            self.drop_database(name)

    def pg_ctl(self, *args: str) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), *args)

    def start(self) -> None:
        options = (
            f"-k {self.sockdir} -c listen_addresses=127.0.0.1 -p {self.port}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self.pg_ctl("-w", "-t", "60", "-l", str(self.base / "server.log"), "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-w", "-m", mode, "stop")

    def _run(self, *command: str) -> None:
        wrapped = [*self._as_postgres, *command]
        if self._as_postgres[:1] == ["su"]:  # su takes one shell command
            wrapped = [*self._as_postgres, shlex.join(command)]
        result = subprocess.run(
            wrapped,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=self.base,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{Path(command[0]).name} failed ({result.returncode}): {result.stderr.strip()}"
            )


def start_cluster(bin_dir: Path) -> PgCluster:
    """initdb a new cluster in a temporary directory and start it."""
    base = Path(tempfile.mkdtemp(prefix="modelfetch-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        runuser = shutil.which("runuser")
        as_postgres = (
            [runuser, "-u", USER, "--"] if runuser else ["su", USER, "-s", "/bin/sh", "-c"]
        )
        shutil.chown(base, user=USER)
        os.chmod(base, 0o700)
    cluster = PgCluster(bin_dir=bin_dir, base=base, port=_free_port(), _as_postgres=as_postgres)
    cluster.sockdir.mkdir()
    pwfile = base / "pwfile"
    pwfile.write_text(PASSWORD + "\n")
    if as_postgres:
        shutil.chown(cluster.sockdir, user=USER)
        shutil.chown(pwfile, user=USER)
    cluster._run(
        str(bin_dir / "initdb"),
        "-D",
        str(cluster.data),
        "-U",
        USER,
        f"--pwfile={pwfile}",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "-E",
        "UTF8",
        "--locale=C",
        "-N",  # no fsync: the cluster is thrown away
    )
    cluster.start()
    import psycopg

    with psycopg.connect(
        host=str(cluster.sockdir), port=cluster.port, user=USER, dbname="postgres", autocommit=True
    ) as db:
        db.execute(f'CREATE DATABASE "{TESTS_DB}"')
    return cluster


def shared_cluster(request: pytest.FixtureRequest) -> PgCluster:
    """The session's cluster, started on first use and stopped when the session ends; skips the
    test when PostgreSQL is not installed (or cannot start: the reason is the skip message)."""
    stash = request.config.stash
    found = stash.get(_KEY, None)
    if found is None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            found = SKIP_REASON
        else:
            cluster = start_cluster(bin_dir)
            request.config.add_cleanup(lambda: _shut_down(cluster))
            found = cluster
        stash[_KEY] = found
    if isinstance(found, str):
        pytest.skip(found)
    return found


def _shut_down(cluster: PgCluster) -> None:
    with contextlib.suppress(Exception):
        cluster.stop("immediate")
    shutil.rmtree(cluster.base, ignore_errors=True)


@pytest.fixture(scope="session", name="pg_cluster")
def pg_cluster_fixture(request: pytest.FixtureRequest) -> PgCluster:
    return shared_cluster(request)


@pytest.fixture(name="pg_url")
def pg_url_fixture(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, empty schema for one test, as a URL with the password."""
    with pg_cluster.schema() as url:
        yield url


@pytest.fixture(name="own_cluster")
def own_cluster_fixture() -> Iterator[PgCluster]:
    """A cluster of the test's own, to stop and start under running workers (the session's
    cluster serves every other test)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(SKIP_REASON)
    cluster = start_cluster(bin_dir)
    try:
        yield cluster
    finally:
        with contextlib.suppress(RuntimeError):  # already stopped
            cluster.stop("immediate")
        shutil.rmtree(cluster.base, ignore_errors=True)
