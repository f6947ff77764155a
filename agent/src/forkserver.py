# The Python forkserver of the sandbox agent (agent/src/forkserver.rs is the agent's side).
#
# Started as `python3 -c <this>` with the agent's control socket as fd 3, it lets the
# interpreter finish its start-up (site, encodings, the .pth files: most of the ~40 ms a fresh
# `python3 -c` costs under gVisor), then forks children ahead of their requests:
#
# - The agent sends b"F" with four descriptors: an execution's stdin, stdout and stderr, and a
#   request pipe. The forkserver forks; the child takes the three as 0, 1, 2 and waits on the
#   request pipe; the forkserver answers b"R" + pid.
# - The agent writes the request (cwd, code, then environment names and values, separated by
#   NUL bytes) and closes the pipe; the child then behaves like `python3 -c code` (see _run).
# - The forkserver is the children's parent: when one exits it reports b"X" + pid + how it
#   ended, before it reaps it (so no exit status is lost if it dies in between: the zombie then
#   goes to the agent, which is init and reaps it itself).
# - If what the interpreter's start-up read has changed since (a .pth file or a site directory
#   came or went, e.g. through `pip install`), a fork request makes it exit with STALE: the
#   agent starts a new one.
#
# A child must look like a fresh interpreter: nothing the forkserver imported for itself stays
# in sys.modules, no descriptor but 0, 1 and 2 stays open, no signal handler of its own stays
# installed, import caches are invalidated (files installed since are found), and
# tracebacks, exit codes and the end by SIGINT are those of `python3 -c`.
def _sandbox_forkserver():
    import sys

    preloaded = set(sys.modules)
    import gc
    import os
    import select
    import site
    import _signal
    import _socket

    stale_exit = 75
    control = _socket.socket(fileno=3)

    # What site.py read at start-up: each site directory's existence and its .pth and
    # site/usercustomize entries. A directory's mtime is the cheap first check.
    site_dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        site_dirs.append(site.getusersitepackages())

    def mtimes():
        stamps = []
        for directory in site_dirs:
            try:
                stamps.append(os.stat(directory).st_mtime_ns)
            except OSError:
                stamps.append(None)
        return stamps

    def startup_files():
        found = []
        for directory in site_dirs:
            try:
                names = sorted(os.listdir(directory))
            except OSError:
                found.append(None)
                continue
            entries = []
            for name in names:
                if name.endswith(".pth") or name.startswith(("sitecustomize", "usercustomize")):
                    try:
                        info = os.stat(os.path.join(directory, name))
                        entries.append((name, info.st_mtime_ns, info.st_size))
                    except OSError:
                        entries.append((name, None, None))
            found.append(entries)
        return found

    seen_mtimes = mtimes()
    seen_files = startup_files()
    # What the interpreter made at start-up stays out of every garbage collection, in the
    # children too, which would otherwise copy most of the heap page by page (copy-on-write
    # faults are slow under gVisor) for their last collection at exit.
    gc.freeze()

    def stale():
        current = mtimes()
        if current == seen_mtimes:
            return False
        return startup_files() != seen_files

    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    os.set_blocking(wake_read, False)
    _signal.signal(_signal.SIGCHLD, lambda signum, frame: None)
    _signal.set_wakeup_fd(wake_write)
    poller = select.poll()
    poller.register(3, select.POLLIN)
    poller.register(wake_read, select.POLLIN)
    children = set()

    def report_exits():
        while children:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            if info.si_code == os.CLD_EXITED:
                how = b"\0" + info.si_status.to_bytes(4, "little", signed=True)
            else:
                how = b"\1" + info.si_status.to_bytes(4, "little", signed=True)
            control.send(b"X" + info.si_pid.to_bytes(4, "little") + how)
            os.waitpid(info.si_pid, 0)
            children.discard(info.si_pid)

    def serve():
        """Fork on request; returns only in a child, with its request."""
        while True:
            for fd, _ in poller.poll():
                if fd == wake_read:
                    while True:
                        try:
                            if not os.read(wake_read, 64):
                                break
                        except BlockingIOError:
                            break
                    report_exits()
                    continue
                message, ancillary, _, _ = control.recvmsg(
                    16, _socket.CMSG_SPACE(4 * 4), _socket.MSG_CMSG_CLOEXEC
                )
                if not message:
                    os._exit(0)  # the agent is gone
                fds = []
                for level, kind, data in ancillary:
                    if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                        fds.extend(
                            int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data) - 3, 4)
                        )
                if message != b"F" or len(fds) != 4:
                    raise RuntimeError("bad request from the agent: %r with %d fds" % (message, len(fds)))
                if stale():
                    os._exit(stale_exit)
                seen_mtimes[:] = mtimes()
                pid = os.fork()
                if pid == 0:
                    return wait_for_request(fds)
                for fd in fds:
                    os.close(fd)
                children.add(pid)
                control.send(b"R" + pid.to_bytes(4, "little"))

    def wait_for_request(fds):
        os.setpgid(0, 0)
        _signal.set_wakeup_fd(-1)
        _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
        control.close()
        os.close(wake_read)
        os.close(wake_write)
        stdin, stdout, stderr, request = fds
        for source, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(source, target)
            os.close(source)
        for name in [name for name in sys.modules if name not in preloaded]:
            del sys.modules[name]
        chunks = []
        while True:
            chunk = os.read(request, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(request)
        fields = b"".join(chunks).split(b"\0")
        if len(fields) < 2 or len(fields) % 2:
            os._exit(0)  # dismissed (or nonsense): nothing to run
        return fields

    fields = serve()
    _run(fields, stale)


def _run(fields, stale):
    """Be `python3 -c code` from here on (the forkserver's frames stay below; nothing else)."""
    import os
    import sys

    cwd, code = os.fsdecode(fields[0]), fields[1].decode()
    os.chdir(cwd)
    if len(fields) > 2:
        # The environment a fresh process would get: the base, overridden, in name order.
        environment = dict(os.environ)
        pairs = fields[2:]
        for index in range(0, len(pairs), 2):
            environment[os.fsdecode(pairs[index])] = os.fsdecode(pairs[index + 1])
        os.environ.clear()
        for name in sorted(environment):
            os.environ[name] = environment[name]
    command = ["/usr/bin/python3", "-c", code]
    if stale():
        os.execv(command[0], command)
    for finder in sys.meta_path:
        if hasattr(finder, "invalidate_caches"):
            finder.invalidate_caches()
    sys.argv = ["-c"]
    sys.orig_argv = command
    import __main__

    namespace = __main__.__dict__
    namespace.pop("_sandbox_forkserver", None)
    namespace.pop("_run", None)
    del fields, stale, cwd, command
    compiled = None
    try:
        compiled = compile(code, "<string>", "exec")
        del code
        exec(compiled, namespace)
    except SystemExit:
        raise
    except BaseException as error:
        # Report it as the interpreter would from the top level, but with the user's frames
        # only: the hook is called by the interpreter on the way out, which also keeps the
        # exit code (1) and the end by SIGINT of an uncaught KeyboardInterrupt.
        trace = error.__traceback__
        while trace is not None and trace.tb_frame.f_code is not compiled:
            trace = trace.tb_next
        original = getattr(sys, "excepthook", None)
        if original is not None:

            def report(kind, value, _trace):
                sys.excepthook = original
                value.__traceback__ = trace
                original(kind, value, trace)

            sys.excepthook = report
        error.__traceback__ = trace
        del error
        raise


_sandbox_forkserver()
