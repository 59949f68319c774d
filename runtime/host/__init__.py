"""The host side of a child-process actor: the proxy actor and the preloaded fork server."""

__all__: list[str] = []
