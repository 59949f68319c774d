import os, builtins
def _open():
    builtins._uss_fd = os.open(f"/tmp/uss5/steps/{os.getpid()}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    builtins._uss_rf = os.open("/proc/self/smaps_rollup", os.O_RDONLY)
def mark(step):
    if getattr(builtins, "_uss_fd", None) is None:
        _open()
    try:
        data = os.pread(builtins._uss_rf, 4096, 0)
    except OSError:
        _open(); data = os.pread(builtins._uss_rf, 4096, 0)
    for line in data.split(b"\n"):
        if line.startswith(b"Private_Dirty"):
            import time; os.write(builtins._uss_fd, f"{step} {int(line.split()[1])} {time.perf_counter()*1000:.3f}\n".encode())
