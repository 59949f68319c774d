"""The component actors of a runtime: manager, compiler, versions, watcher, monitor, security.

Each module holds one component (or a helper of one); they import :mod:`runtime`
only, never :mod:`sandbox`, which wires them together.
"""

__all__: list[str] = []
