"""The component actors of a runtime: manager, compiler, versions, watcher, monitor, security."""
