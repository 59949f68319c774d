"""sandbox.start(): every option checked before anything is made; nothing left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sandbox
from runtime.errors import ActorError, ConfigError

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "option, value",
    [
        ("history", -1),
        ("history", 0),
        ("monitor_interval", 0),
        ("monitor_interval", "1"),
        ("name", "a b/c"),
        ("name", ""),
        ("max_restarts", -1),
        ("max_seconds", 0),
        ("watch_backend", "fsevents"),
        ("listen", "localhost:80"),
        ("tls", ("cert.pem", "key.pem")),  # without a tcp listen
    ],
)
def test_bad_option_is_a_config_error_naming_it_and_leaves_nothing(tmp_path, option, value):
    with pytest.raises(ConfigError) as info:
        sandbox.start(base_dir=tmp_path, **{option: value})
    assert info.value.option == option
    assert f"invalid {option}=" in str(info.value)
    assert list(tmp_path.iterdir()) == [], "a failed start left files behind"


def test_a_start_failing_late_leaves_nothing(tmp_path):
    busy = tmp_path / "busy.sock"
    base = tmp_path / "base"
    base.mkdir()
    with sandbox.start(listen=f"unix:{busy}"):
        with pytest.raises(ConfigError, match="another runtime serves"):
            sandbox.start(base_dir=base, listen=f"unix:{busy}")
    assert list(base.iterdir()) == []


def test_a_runtime_never_stopped_is_cleaned_up_at_exit(tmp_path):
    script = (
        "import sandbox, sys\n"
        f"rt = sandbox.start(base_dir={str(tmp_path)!r})\n"
        "sb = rt.create_sandbox('left', 'examples/counter')\n"
        "print(sb.info()['pid'], flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout)
    assert list(tmp_path.iterdir()) == [], "the base dir or audit file outlived the program"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_default_temp_dir_is_left_as_it_was(tmp_path):
    # Without base_dir everything goes to the temp dir: failed starts (each a
    # ConfigError, not a ChildStartFailed or a raw OSError) and a runtime that is
    # never stopped leave nothing there (no sandbox-rt* dir, no .audit.jsonl).
    script = (
        "import sandbox\n"
        "for bad in ({'history': -1}, {'monitor_interval': 0}, {'name': 'a b/c'}):\n"
        "    try:\n"
        "        sandbox.start(**bad)\n"
        "    except sandbox.ConfigError as exc:\n"
        "        print(type(exc).__name__, exc.option)\n"
        "sb = sandbox.start().create_sandbox('left', 'examples/counter')\n"
        "sb.hot_reload(source={'counter': open('examples/counter/counter.py').read()})\n"
    )
    temp = tmp_path / "tmp"
    temp.mkdir()
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=90, env={**os.environ, "TMPDIR": str(temp)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["ConfigError history", "ConfigError monitor_interval",
                                        "ConfigError name"]
    assert list(temp.iterdir()) == []


def test_a_handle_belongs_to_one_sandbox():
    with sandbox.start() as rt:
        old = rt.create_sandbox("same-id", "examples/counter")
        old.call("counter", "incr")
        old.destroy()
        new = rt.create_sandbox("same-id", "examples/counter")
        for use in (lambda: old.call("counter", "get"), old.info, old.destroy,
                    lambda: old.cast("counter", "incr"), old.hot_reload):
            with pytest.raises(sandbox.SandboxNotFound):
                use()
        assert new.call("counter", "get") == 0
        assert rt.reload_status("same-id") is None  # the old handle reloaded nothing


@pytest.mark.parametrize(
    "profile, request_, error, wanted",
    [
        ("high", object(), TypeError, "argument 'request' of call() to sandbox 'msg' cannot "
                                      "be sent: a object value"),
        ("medium", "x" * (9 * 1024 * 1024), sandbox.ProtocolError,
         "argument 'request' of call() to sandbox 'msg' is 9437"),
    ],
    ids=["unencodable", "oversized"],
)
def test_an_argument_that_cannot_be_sent_is_named(profile, request_, error, wanted):
    with sandbox.start() as rt:
        sb = rt.create_sandbox("msg", "examples/counter", profile=profile)
        with pytest.raises(error) as info:
            sb.call("counter", request_)
        assert sb.call("counter", "incr") == 1  # nothing was sent; the sandbox is fine
    text = str(info.value)
    assert text.startswith(wanted), text
    # only settings a user can change are named
    assert "max_frame" not in text and "allow_pickle" not in text and "reply" not in text


BIG_OR_ODD = '''
from runtime.genserver import GenServer


class Odd(GenServer):
    def init(self):
        return 0

    def handle_call(self, request, state):
        if request == "object":
            return object(), state
        return "x" * (9 * 1024 * 1024), state


def children():
    return [Odd.child_spec(name="odd")]
'''


@pytest.mark.parametrize(
    "request_, wanted",
    [("object", "replies carry only msgpack-native values"),
     ("big", "is over the 8 MiB a message may carry")],
)
def test_a_reply_that_cannot_be_sent_names_no_hidden_setting(tmp_path, request_, wanted):
    (tmp_path / "app.py").write_text(BIG_OR_ODD)
    with sandbox.start() as rt:
        sb = rt.create_sandbox("odd", str(tmp_path))
        with pytest.raises(ActorError) as info:
            sb.call("odd", request_, timeout=30)
    text = str(info.value)
    assert text.startswith("the reply of ") and wanted in text, text
    assert "max_frame" not in text and "allow_pickle" not in text
