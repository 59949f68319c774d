"""The control endpoint of a runtime and its clients.

- :mod:`sandbox.control.protocol`: addresses, frames, requests, errors on the wire;
- :mod:`sandbox.control.server`: :class:`ControlServer` (``sandbox.start(listen=...)``);
- :mod:`sandbox.control.client`: :func:`connect`, :func:`connect_async`.
"""

from sandbox.control.client import (
    AsyncRemoteRuntime,
    AsyncRemoteSandbox,
    RemoteRuntime,
    RemoteSandbox,
    connect,
    connect_async,
)
from sandbox.control.protocol import Address, AuthenticationError, ControlError, parse_address
from sandbox.control.server import ControlServer

__all__ = [
    "Address",
    "AsyncRemoteRuntime",
    "AsyncRemoteSandbox",
    "AuthenticationError",
    "ControlError",
    "ControlServer",
    "RemoteRuntime",
    "RemoteSandbox",
    "connect",
    "connect_async",
    "parse_address",
]
