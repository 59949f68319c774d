"""The wire between the host and a sandbox: msgpack frames, the channel, shipped functions."""

__all__: list[str] = []
