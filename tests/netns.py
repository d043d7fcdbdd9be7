"""Hosts of the tests' own: network namespaces joined by veth links to a
server namespace, whose links a test can cut (CI runs as root)."""

from __future__ import annotations

import os
import subprocess
import uuid
from types import TracebackType


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Hosts:
    """A server namespace and client namespaces, each on a link of its own:
    client i is 10.77.i.2, and reaches the server at 10.77.i.1. Removed on
    exit, even after a failure."""

    def __init__(self, clients: int = 2) -> None:
        tag = uuid.uuid4().hex[:6]
        self.server = f"tf-srv-{tag}"
        self.clients = [f"tf-c{i}-{tag}" for i in range(1, clients + 1)]
        self._links = [f"tfs{i}{tag}" for i in range(1, clients + 1)]  # server ends

    def __enter__(self) -> Hosts:
        if os.geteuid() != 0:
            raise PermissionError("network namespaces need root")
        try:
            _ip("netns", "add", self.server)
            _ip("-n", self.server, "link", "set", "lo", "up")
            for i, (client, link) in enumerate(zip(self.clients, self._links), 1):
                _ip("netns", "add", client)
                _ip("-n", client, "link", "set", "lo", "up")
                _ip("link", "add", "eth0", "netns", client, "type", "veth",
                    "peer", "name", link, "netns", self.server)  # fmt: skip
                _ip("-n", client, "addr", "add", f"10.77.{i}.2/24", "dev", "eth0")
                _ip("-n", client, "link", "set", "eth0", "up")
                _ip("-n", self.server, "addr", "add", f"10.77.{i}.1/24", "dev", link)
                _ip("-n", self.server, "link", "set", link, "up")
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def remove(self) -> None:
        for ns in [*self.clients, self.server]:  # its links go with it
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)

    def on(self, client: int, argv: list[str]) -> list[str]:
        """argv, to run on client (1-based)."""
        return ["ip", "netns", "exec", self.clients[client - 1], *argv]

    def server_address(self, client: int) -> str:
        return f"10.77.{client}.1"

    def cut(self, client: int) -> None:
        """Take client's link down at the server's end: no packet crosses."""
        _ip("-n", self.server, "link", "set", self._links[client - 1], "down")
