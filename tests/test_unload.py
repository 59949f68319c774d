"""Unloading a module from a running sandbox (issue 17): refused while another
loaded module imports it; otherwise gone from the sandbox and from the current
versions, with its history kept for rollback; a reload whose file was deleted
offers it."""

from __future__ import annotations

import importlib
import sys

import cloudpickle
import pytest
from helpers import path_of

from runtime.errors import ReloadFailed

pytestmark = pytest.mark.timeout(90)

# Probes sent with Sandbox.run are pickled by value: the sandbox cannot import tests.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

APP = {
    "app.py": "import counter\n\n\ndef children():\n"
              "    return [counter.Counter.child_spec(name='counter')]\n",
    "counter.py": "from runtime.genserver import GenServer\n\n\nclass Counter(GenServer):\n"
                  "    def init(self):\n        return 0\n\n"
                  "    def handle_call(self, request, state):\n        return state, state\n",
    "plugin.py": "import tools\n\n\ndef run():\n    return tools.VALUE\n",
    "tools.py": "VALUE = 7\n",
}


def imported(name: str) -> bool:
    """Probe run inside the sandbox: is ``name`` importable (and imported) there?"""
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        return False
    return name in sys.modules


def test_unload_refused_while_imported_then_done_and_rolled_back(sandbox_factory):
    sb = sandbox_factory(APP)
    assert sb.run(imported, "plugin")  # loaded on demand, as an app would
    for module, importer in (("tools", "plugin"), ("counter", "app")):
        with pytest.raises(ReloadFailed, match=f"loaded module {importer} imports it") as err:
            sb.unload_module(module)
        assert err.value.step == "unload" and err.value.module == module
    assert sb.module_versions() == {"app": 1, "counter": 1, "plugin": 1, "tools": 1}

    report = sb.unload_module("plugin")
    assert report.ok and report.kind == "unload" and report.removed == ["plugin"]
    assert sb.module_versions() == {"app": 1, "counter": 1, "tools": 1}
    assert [v.version for v in sb.module_versions("plugin")] == [1], "history kept"
    assert not sb.run(imported, "plugin"), "not served from disk either"
    sb.unload_module("tools")  # nothing imports it any more
    assert sb.runtime.reload_status(sb.id)["kind"] == "unload"

    sb.rollback_module("tools", 1)
    sb.rollback_module("plugin", 1)
    assert sb.run(lambda: importlib.import_module("plugin").run()) == 7
    assert sb.module_versions() == {"app": 1, "counter": 1, "plugin": 1, "tools": 1}
    assert sb.call("counter", "get") == 0


@pytest.mark.parametrize("module, why", [
    ("app", "holds the app's entry"),
    ("nothing", "no loaded module 'nothing'"),
])
def test_unload_refusals_name_the_reason(sandbox_factory, module, why):
    sb = sandbox_factory(APP)
    with pytest.raises(ReloadFailed, match=why):
        sb.unload_module(module)
    assert sb.call("counter", "get") == 0


def test_a_reload_whose_file_was_deleted_unloads_it(sandbox_factory):
    # Issue 12: the reload after a delete unloads the module (it used to stay loaded
    # with a warning offering unload_module).
    sb = sandbox_factory(APP)
    (path_of(sb) / "plugin.py").unlink()
    report = sb.hot_reload()
    assert report.ok and report.removed == ["plugin"] and report.warnings == []
    assert "plugin" not in sb.module_versions()
    with pytest.raises(ReloadFailed, match="no loaded module 'plugin'"):
        sb.unload_module("plugin")
    assert sb.hot_reload().removed == []
