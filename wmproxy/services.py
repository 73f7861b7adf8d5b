"""What the running process hands its listeners: the services they share, instead of the App.

A listener (and the center client) receives one :class:`Services` and uses nothing else of the
process: no feature reaches into the App, scans its listeners or asks it for attributes. What
changes with a reload (the center client, the center server's mapping registry) is reached
through a function that answers for the configuration in force.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

if TYPE_CHECKING:
    from .config import ProxyConfig
    from .listener import ConnStats
    from .net.dns import Resolver

#: the forward proxy as a function of (connection, client address)
Handler = Callable[..., None]  # (connection, client address[, on whose behalf]) -> served


class ProxyHandlerFactory(Protocol):
    def __call__(self, proxy_cfg: "ProxyConfig", stats: "ConnStats", exposed: bool) -> Handler:
        """The forward proxy for connections a feature accepted itself (the center server's
        PROXY streams, proxy mappings); ``exposed``: other hosts can reach them."""


class ProcessControl(Protocol):
    """What the control API may do to the process."""

    @property
    def grace(self) -> float:
        """Seconds live connections get on stop."""

    def status(self) -> dict[str, Any]: ...

    def reload(self, trigger: str) -> dict[str, Any]: ...

    def upgrade(self, trigger: str) -> dict[str, Any]:
        """New worker processes on the installed code; ``{"ok": False, "alone": True, ...}``
        from a process that serves alone (it has no workers to replace)."""

    def request_stop(self, why: str) -> None: ...

    def act(self, action: str, **args: Any) -> dict[str, Any]:
        """An operator's action (the control API's /api): ``{"ok": ...}``, with an HTTP
        ``status`` when refused."""


@dataclass(frozen=True)
class Services:
    resolver: "Resolver"
    #: [http] upstream groups (pools, health checks) and limit_req buckets: shared by the http
    #: listeners, kept across reloads while their configuration is unchanged
    http_groups: dict[Any, Any]
    http_limits: dict[Any, Any]
    proxy_handler: ProxyHandlerFactory
    #: the local entry of the center client in force (center.entry), or None: a forward proxy
    #: listener of a center client hands it every connection
    center_entry: Callable[[], Optional[Callable[..., None]]]
    mapping_registry: Callable[[], Optional[Any]]  # the center server's MappingRegistry, or None
    process: ProcessControl
    #: [stream] upstreams' health checkers (stream.health), shared and kept as http_groups are
    stream_health: dict[Any, Any] = field(default_factory=dict)
