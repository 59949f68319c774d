"""A failing code_change says where: file:line in the message, the traceback beside it."""

from __future__ import annotations

import pytest

import sandbox

pytestmark = pytest.mark.timeout(120)

APP = '''
from runtime.genserver import GenServer


class C(GenServer):
    vsn = 1

    def init(self):
        return 0

    def handle_call(self, request, state):
        return state, state


def children():
    return [C.child_spec(name="c")]
'''

BROKEN = APP.replace("    vsn = 1\n", '''    vsn = 2

    def code_change(self, old_vsn, state, extra):
        return state / 0
''')


def test_a_failing_code_change_carries_file_line_and_traceback(tmp_path):
    (tmp_path / "app.py").write_text(APP)
    with sandbox.start() as rt:
        sb = rt.create_sandbox("cc", str(tmp_path))
        with pytest.raises(sandbox.ReloadFailed) as info:
            sb.hot_reload(source={"app": BROKEN})
        assert sb.call("c", "get") == 0  # the old code still serves
    err = info.value
    line = BROKEN.splitlines().index("        return state / 0") + 1
    assert err.step == "code_change"
    assert f"app.py:{line}: ZeroDivisionError" in str(err)
    assert "Traceback (most recent call last)" in err.remote_traceback


@pytest.fixture(scope="module")
def counter_sandbox():
    with sandbox.start() as rt:
        yield rt.create_sandbox("shapes", "examples/counter")


SHAPE = "source= maps module names to source text, e.g. source={'app': text}"


@pytest.mark.parametrize("args, error, says", [
    ({"source": {"counter.py": "x = 1"}}, sandbox.ReloadFailed,
     "'counter.py' is not a module name: use 'counter'"),
    ({"source": {"pkg/mod.py": "x = 1"}}, sandbox.ReloadFailed, "use 'pkg.mod'"),
    ({"source": "x = 1"}, TypeError, f"{SHAPE}, not a str"),
    ({"source": ["counter"]}, TypeError, f"{SHAPE}, not a list"),
    ({"source": {1: "x = 1"}}, TypeError, f"{SHAPE}; got a int key 1"),
    ({"source": {"counter": b"x = 1"}}, TypeError,
     "the value for 'counter' is a bytes (decode it first)"),
    ({"modules": "counter"}, TypeError,
     "modules= takes module names, e.g. modules=['app'], not a str"),
    ({"modules": [1]}, TypeError, "got a int 1"),
], ids=["file-name", "path", "str", "list", "int-key", "bytes", "modules-str", "modules-int"])
def test_a_wrong_shape_of_argument_names_the_parameter_and_the_shape(
        counter_sandbox, args, error, says):
    with pytest.raises(error) as info:
        counter_sandbox.hot_reload(**args)
    assert says in str(info.value)
    assert counter_sandbox.call("counter", "incr") > 0, "the sandbox serves on"
