"""The PostgreSQL fixtures: the server answers through psql, and psycopg
connects through its URLs over TCP and over the Unix socket."""

from __future__ import annotations

import psycopg
from pgserver import External, Server


def test_psql_over_the_socket(pg_server: Server | External, pg_dsn: str) -> None:
    assert pg_server.psql("SELECT 1") == "1"
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_url_over_tcp(pg_server: Server | External) -> None:
    with psycopg.connect(pg_server.url(tcp=True)) as conn:
        row = conn.execute("SELECT 1, inet_server_addr()::text").fetchone()
    if isinstance(pg_server, Server):
        assert row == (1, "127.0.0.1/32")
    else:  # an external server: whatever its DSN connects through
        assert row is not None and row[0] == 1


def test_url_over_the_socket(pg_server: Server | External) -> None:
    url = pg_server.url()
    assert pg_server.url("name") == url + "#name"
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT 1, inet_server_addr()").fetchone()
    if isinstance(pg_server, Server):
        assert row == (1, None)  # no server address: a Unix socket
    else:
        assert row is not None and row[0] == 1
