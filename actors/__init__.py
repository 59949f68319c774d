"""The component actors of a runtime: manager, compiler, versions, watcher, monitor, security.

Each module holds one component (or a helper of one); they import :mod:`runtime`
only, never :mod:`sandbox`, which wires them together.
"""

import logging as _logging

# A library prints nothing unless the application configures logging (then its
# handlers get every record): without this, Python's last-resort handler would
# print each warning and error of this package on stderr.
_logging.getLogger("actors").addHandler(_logging.NullHandler())

__all__: list[str] = []
