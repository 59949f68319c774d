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
