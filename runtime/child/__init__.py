"""What runs inside a sandbox process: boot, isolation layers, the guard, the code swap."""

__all__: list[str] = []
