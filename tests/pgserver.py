"""A throwaway PostgreSQL server for the tests and the benchmarks (no pytest here)."""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote, urlencode

# The server refuses to run as root: as root, initdb and pg_ctl run as this
# system user (made by Debian's postgresql package).
SYSTEM_USER = "postgres"

# A Unix socket's path is at most 107 bytes (sun_path), ".s.PGSQL.NNNNN" included.
_MAX_SOCKET_DIR = 107 - len("/.s.PGSQL.65535")


def find_bin_dir() -> str | None:
    """The directory holding initdb and pg_ctl: PATH first, else the newest
    /usr/lib/postgresql/*/bin (Debian puts neither on PATH)."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        # Through symlinks, to the server's own bin directory.
        bin_dir = os.path.dirname(os.path.realpath(initdb))
        if _has_server(bin_dir):
            return bin_dir
        bin_dir = os.path.dirname(initdb)
        if _has_server(bin_dir):
            return bin_dir
    found = [d for d in glob.glob("/usr/lib/postgresql/*/bin") if _has_server(d)]
    return max(found, key=_version_key, default=None)


def _has_server(bin_dir: str) -> bool:
    """Does bin_dir hold an executable initdb and pg_ctl?"""
    return all(os.access(os.path.join(bin_dir, name), os.X_OK) for name in ("initdb", "pg_ctl"))


def _version_key(bin_dir: str) -> tuple[int, ...]:
    """/usr/lib/postgresql/15/bin -> (15,): sorts 9.6 before 10."""
    version = Path(bin_dir).parent.name
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (-1,)


def _psql_path(bin_dir: str | None = None) -> str:
    """The psql client: beside the server if it is there, else the system's."""
    if bin_dir is not None and os.access(os.path.join(bin_dir, "psql"), os.X_OK):
        return os.path.join(bin_dir, "psql")
    found = shutil.which("psql")
    if found is None:
        raise RuntimeError("psql not found (apt-get install postgresql-client)")
    return found


def _psql(psql: str, dsn: str, sql: str) -> str:
    """Run sql with psql against dsn; its output, stripped (RuntimeError on failure)."""
    argv = [psql, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", sql]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    if done.returncode != 0:
        raise RuntimeError(f"psql failed ({done.returncode}) on {sql!r}: {done.stderr.strip()}")
    return done.stdout.strip()


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _conf_string(value: str) -> str:
    """value as a quoted postgresql.conf string."""
    return "'" + value.replace("'", "''") + "'"


def _tail(path: str, lines: int = 20) -> str:
    """The last lines of a file, or a note that there is none."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return f"(no log: {e})"
    return "\n".join(text.splitlines()[-lines:])


class Server:
    """A PostgreSQL server of its own in a fresh directory, for one test session or
    benchmark run: Server.start(base_dir), then stop()."""

    user = "postgres"
    dbname = "postgres"

    def __init__(
        self, bin_dir: str, work_dir: str, port: int, netns: str | None = None, listen: str = ""
    ) -> None:
        """Use Server.start(); this only names the parts."""
        self.netns = netns  # the network namespace it runs in (None: ours)
        self.listen = listen or "127.0.0.1"
        self.bin_dir = bin_dir
        self.work_dir = work_dir  # removed by stop()
        self.data_dir = os.path.join(work_dir, "data")
        self.host = os.path.join(work_dir, "sock")  # the Unix socket's directory
        self.log_path = os.path.join(work_dir, "postgres.log")
        self.port = port
        self._as_root = os.geteuid() == 0
        self._pid = os.getpid()
        self._stopped = False

    @classmethod
    def start(
        cls, base_dir: str, *, netns: str | None = None, listen: str = "", trust: str = ""
    ) -> Server:
        """Make a data directory in a fresh directory in base_dir, initdb it and
        start the server (RuntimeError, with the log's end, if it does not start).
        netns: run it in that network namespace; listen: its listen_addresses;
        trust: a network (CIDR) whose clients it trusts, beside localhost."""
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server not installed (apt-get install postgresql)")
        work_dir = tempfile.mkdtemp(prefix="pg-", dir=base_dir)
        os.chmod(work_dir, 0o755)
        server = cls(bin_dir, work_dir, _free_port(), netns, listen)
        try:
            if len(server.host) > _MAX_SOCKET_DIR:
                raise RuntimeError(f"socket directory too long for a Unix socket: {server.host}")
            server._prepare()
            server._initdb()
            if trust:
                with open(os.path.join(server.data_dir, "pg_hba.conf"), "a") as hba:
                    hba.write(f"host all all {trust} trust\n")
            server._configure()
            # The port may be taken between _free_port() and the server's bind.
            for attempt in range(3):
                try:
                    server._pg_ctl("start", "-w", "-t", "60")
                    break
                except RuntimeError:
                    if attempt == 2 or "already in use" not in _tail(server.log_path):
                        raise
                    server.port = _free_port()
                    server._configure()
        except BaseException:
            server.stop()
            raise
        atexit.register(server._stop_at_exit)
        return server

    def _prepare(self) -> None:
        """The socket directory; as root, everything for the postgres user to use."""
        os.mkdir(self.host)
        if not self._as_root:
            return
        try:
            account = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise RuntimeError(
                f"running as root, and there is no {SYSTEM_USER} user to run the server as"
            ) from None
        for path in (self.work_dir, self.host):
            os.chown(path, account.pw_uid, account.pw_gid)
        # The postgres user must be able to traverse every directory above
        # (pytest's temporary directories are 0700): o+x, not listing.
        for parent in Path(self.work_dir).parents:
            mode = parent.stat().st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)

    def _initdb(self) -> None:
        """A new cluster in data_dir: trust, superuser postgres, UTF8, locale C."""
        self._run(
            "initdb",
            "-D",
            self.data_dir,
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )

    def _configure(self) -> None:
        """Append this server's settings to postgresql.conf (the last one wins), so
        that a restart keeps them."""
        settings = {
            "port": str(self.port),
            "listen_addresses": _conf_string(self.listen),
            "unix_socket_directories": _conf_string(self.host),
            "fsync": "off",
            "max_connections": "300",  # tests open many connections
        }
        lines = "".join(f"{name} = {value}\n" for name, value in settings.items())
        with open(os.path.join(self.data_dir, "postgresql.conf"), "a") as conf:
            conf.write("\n# tests/pgserver.py\n" + lines)

    def _run(self, program: str, *args: str) -> None:
        """Run one of the server's programs, as the postgres user if we are root
        (RuntimeError with its output and the log's end on failure)."""
        argv: Sequence[str] = [os.path.join(self.bin_dir, program), *args]
        if self._as_root:
            if shutil.which("setpriv") is not None:
                argv = [
                    "setpriv",
                    f"--reuid={SYSTEM_USER}",
                    f"--regid={SYSTEM_USER}",
                    "--init-groups",
                    *argv,
                ]
            else:
                argv = ["runuser", "-u", SYSTEM_USER, "--", *argv]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.work_dir,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} failed ({done.returncode}):\n"
                f"{(done.stdout + done.stderr).strip()}\n"
                f"-- last lines of {self.log_path}:\n{_tail(self.log_path)}"
            )

    def _pg_ctl(self, action: str, *args: str) -> None:
        """pg_ctl ACTION on this data directory, the server's output to the log
        (never to our pipes, which would then stay open)."""
        self._run("pg_ctl", action, "-D", self.data_dir, "-l", self.log_path, *args)

    @property
    def dsn(self) -> str:
        """The libpq key=value DSN over the Unix socket."""
        return f"host={self.host} port={self.port} user={self.user} dbname={self.dbname}"

    @property
    def tcp_dsn(self) -> str:
        """The libpq key=value DSN over TCP on 127.0.0.1."""
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={self.dbname}"

    def url(self, fragment: str = "", tcp: bool = False) -> str:
        """A postgresql:// URL (over the socket, its directory percent-encoded as the
        host), with #fragment if one is given."""
        host = "127.0.0.1" if tcp else quote(self.host, safe="")
        url = f"postgresql://{self.user}@{host}:{self.port}/{self.dbname}"
        return f"{url}#{fragment}" if fragment else url

    def psql(self, sql: str) -> str:
        """Run sql with psql over the socket; its output, stripped."""
        return _psql(_psql_path(self.bin_dir), self.dsn, sql)

    def restart(self, mode: str = "fast") -> None:
        """Restart the server (pg_ctl restart -m MODE), with the same settings."""
        self._pg_ctl("restart", "-m", mode, "-w", "-t", "60")

    def down(self) -> None:
        """Stop the server (pg_ctl stop -m fast), keeping it to start again with up()."""
        self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60")

    def up(self) -> None:
        """Start the server again after down()."""
        self._pg_ctl("start", "-w", "-t", "60")

    def stop(self) -> None:
        """Stop the server at once (-m immediate) and remove its directories; safe twice."""
        if self._stopped:
            return
        self._stopped = True
        if os.path.exists(os.path.join(self.data_dir, "postmaster.pid")):
            with contextlib.suppress(RuntimeError):  # not running
                self._pg_ctl("stop", "-m", "immediate", "-w", "-t", "60")
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def _stop_at_exit(self) -> None:
        """stop() at interpreter exit, unless this is a forked child."""
        if os.getpid() == self._pid:
            self.stop()


class External:
    """An existing server named by a DSN (TOUCHFILE_TEST_DSN), used as a Server is."""

    def __init__(self, dsn: str) -> None:
        """dsn: a libpq key=value string or a postgresql:// URL."""
        self.dsn = dsn

    @property
    def tcp_dsn(self) -> str:
        """The same DSN (whatever it connects through)."""
        return self.dsn

    def url(self, fragment: str = "", tcp: bool = False) -> str:
        """A postgresql:// URL for the DSN (tcp is ignored), with #fragment if given."""
        from psycopg.conninfo import conninfo_to_dict

        params = {k: str(v) for k, v in conninfo_to_dict(self.dsn).items() if v is not None}
        user = params.pop("user", "")
        password = params.pop("password", "")
        host = params.pop("host", "")
        port = params.pop("port", "")
        dbname = params.pop("dbname", "")
        userinfo = quote(user, safe="")
        if password:
            userinfo += ":" + quote(password, safe="")
        netloc = (userinfo + "@" if userinfo else "") + quote(host, safe="")
        if port:
            netloc += ":" + port
        url = f"postgresql://{netloc}/{quote(dbname, safe='')}"
        if params:
            url += "?" + urlencode(params, quote_via=quote)
        return f"{url}#{fragment}" if fragment else url

    def psql(self, sql: str) -> str:
        """Run sql with the system psql against the DSN; its output, stripped."""
        return _psql(_psql_path(), self.dsn, sql)

    def restart(self, mode: str = "fast") -> None:
        """Not ours to restart: NotImplementedError (tests that need it skip)."""
        raise NotImplementedError("cannot restart an external server (TOUCHFILE_TEST_DSN)")

    def stop(self) -> None:
        """Nothing: the server is not ours."""
