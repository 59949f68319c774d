"""Apps run inside sandbox child processes by tests/test_process.py.

Each module's ``children`` (or another entry function) returns the app's child
specs; the tests start them with ``app_path`` = the ``tests`` directory and an
entry such as ``"apps.echo:children"``.
"""
