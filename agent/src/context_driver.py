# The driver of a code context: a long-lived Python process that runs code cells in one
# namespace, as a notebook kernel does. The agent starts it (see context.rs) with:
#   fd 3: cells in, each `u32 LE length | JSON {"code", "cell", "max_result_bytes"}`;
#   fd 4: events out, each `u32 LE length | u8 type | payload`: type 1 is one event as JSON
#         (a result or an error), type 2 ends the cell (payload: one byte, 0 or 1 after an
#         error);
#   fd 1 and 2: the cells' stdout and stderr (unbuffered: `-u`), streamed by the agent.
# SIGINT raises KeyboardInterrupt only while a cell runs (an interrupt that arrives between
# cells is ignored). Results are shown the way IPython shows them: `_repr_*_` methods and
# `_repr_mimebundle_`, matplotlib figures as PNG.


def _sandbox_context():
    import ast
    import base64
    import builtins
    import json
    import linecache
    import os
    import signal
    import struct
    import sys
    import traceback

    import __main__

    cells_in = 3
    events_out = 4
    state = {"in_cell": False, "max_result_bytes": 16 << 20, "writing": False, "held": False}

    def on_interrupt(signum, frame):
        if not state["in_cell"]:
            return
        if state["writing"]:
            # Not in the middle of a message on fd 4 (that would cut the stream): raised once
            # the message is whole.
            state["held"] = True
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)

    def read_exactly(count):
        chunks = []
        while count > 0:
            chunk = os.read(cells_in, min(count, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            count -= len(chunk)
        return b"".join(chunks)

    def write_message(kind, payload):
        data = struct.pack("<IB", len(payload) + 1, kind) + payload
        view = memoryview(data)
        state["writing"] = True
        try:
            while view:
                try:
                    written = os.write(events_out, view)
                except InterruptedError:
                    continue
                view = view[written:]
        finally:
            state["writing"] = False
        if state["held"]:
            state["held"] = False
            if state["in_cell"]:
                raise KeyboardInterrupt

    def flush_streams():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass

    def send_event(event):
        flush_streams()
        write_message(1, json.dumps(event, default=str).encode())

    # What a MIME type's value looks like on the wire: text as is, bytes as base64, JSON as JSON.
    repr_methods = (
        ("_repr_html_", "text/html"),
        ("_repr_markdown_", "text/markdown"),
        ("_repr_svg_", "image/svg+xml"),
        ("_repr_png_", "image/png"),
        ("_repr_jpeg_", "image/jpeg"),
        ("_repr_latex_", "text/latex"),
        ("_repr_json_", "application/json"),
    )

    def figure_png(figure):
        import io

        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()

    def is_figure(value):
        module = sys.modules.get("matplotlib.figure")
        return module is not None and isinstance(value, module.Figure)

    def mime_bundle(value):
        data = {}
        if is_figure(value):
            data["image/png"] = figure_png(value)
        elif not isinstance(value, type):
            method = getattr(value, "_repr_mimebundle_", None)
            if callable(method):
                try:
                    bundle = method()
                    if isinstance(bundle, tuple):
                        bundle = bundle[0]
                    if isinstance(bundle, dict):
                        data.update(bundle)
                except Exception:
                    pass
            for name, mime in repr_methods:
                if mime in data:
                    continue
                method = getattr(value, name, None)
                if not callable(method):
                    continue
                try:
                    shown = method()
                except Exception:
                    continue
                if isinstance(shown, tuple):
                    shown = shown[0]
                if shown is not None:
                    data[mime] = shown
        try:
            data["text/plain"] = repr(value)
        except Exception as error:
            data["text/plain"] = "<repr failed: %s: %s>" % (type(error).__name__, error)
        return data

    def encoded_size(value):
        if isinstance(value, (bytes, bytearray)):
            return (len(value) + 2) // 3 * 4
        if isinstance(value, str):
            return len(value)
        try:
            return len(json.dumps(value, default=str))
        except Exception:
            return 0

    def encode(data):
        limit = state["max_result_bytes"]
        size = sum(encoded_size(value) for value in data.values())
        if size > limit:
            # Too large to send: its text instead, with a note (the context lives on).
            text = str(data.get("text/plain", ""))
            note = (
                "[result of %d bytes (%s) exceeds SANDBOX_MAX_RESULT_BYTES (%d): only its text/plain is sent]"
                % (size, ", ".join(sorted(data)), limit)
            )
            room = max(0, limit - len(note) - 1)
            return {"text/plain": text[:room] + "\n" + note}
        encoded = {}
        for mime, value in data.items():
            if isinstance(value, (bytes, bytearray)):
                value = base64.b64encode(value).decode("ascii")
            elif mime.startswith("image/") and mime != "image/svg+xml" and not isinstance(value, str):
                value = str(value)
            encoded[mime] = value
        return encoded

    def show(value, main):
        send_event({"type": "result", "is_main_result": main, "data": encode(mime_bundle(value))})

    def display(*values, **_options):
        for value in values:
            show(value, False)

    builtins.display = display

    def show_open_figures():
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        for number in pyplot.get_fignums():
            figure = pyplot.figure(number)
            show(figure, False)
        pyplot.close("all")

    def patch_show():
        # Once pyplot is loaded, plt.show() shows the open figures where it is called.
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None and not getattr(pyplot.show, "_sandbox", False):

            def shown(*_args, **_kwargs):
                show_open_figures()

            shown._sandbox = True
            pyplot.show = shown

    def error_event(kind, value, trace):
        # Frames of this driver are not the user's: the traceback starts in the cell.
        while trace is not None and trace.tb_frame.f_code.co_filename == driver_file:
            trace = trace.tb_next
        lines = "".join(traceback.format_exception(kind, value, trace)).splitlines()
        return {
            "type": "error",
            "name": kind.__name__,
            "value": str(value),
            "traceback": lines,
        }

    def run(code, filename):
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        try:
            tree = ast.parse(code, filename, "exec")
        except SyntaxError as error:
            lines = "".join(traceback.format_exception_only(type(error), error)).splitlines()
            return {"type": "error", "name": "SyntaxError", "value": str(error), "traceback": lines}
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        namespace = __main__.__dict__
        try:
            state["in_cell"] = True
            exec(compile(tree, filename, "exec"), namespace)
            if last is not None:
                value = eval(compile(last, filename, "eval"), namespace)
                if value is not None:
                    namespace["_"] = value
                    patch_show()
                    if is_figure(value):
                        pyplot = sys.modules.get("matplotlib.pyplot")
                        show(value, True)
                        if pyplot is not None:
                            pyplot.close(value)
                    else:
                        show(value, True)
            state["in_cell"] = False
            patch_show()
            show_open_figures()
            return None
        except BaseException:
            state["in_cell"] = False
            kind, value, trace = sys.exc_info()
            try:
                show_open_figures()
            except BaseException:
                pass
            return error_event(kind, value, trace)
        finally:
            state["in_cell"] = False

    driver_file = _sandbox_context.__code__.co_filename
    __main__.__dict__.pop("_sandbox_context", None)
    while True:
        header = read_exactly(4)
        if header is None:
            os._exit(0)
        request = json.loads(read_exactly(struct.unpack("<I", header)[0]))
        state["max_result_bytes"] = int(request.get("max_result_bytes", 16 << 20))
        error = None
        try:
            error = run(request["code"], "<cell-%d>" % request["cell"])
        except BaseException:
            # An interrupt that landed in this driver's own code, outside the cell's: the
            # cell still ends, with that error.
            error = error_event(*sys.exc_info())
        del request
        try:
            if error is not None:
                send_event(error)
            flush_streams()
        finally:
            write_message(2, b"\x01" if error is not None else b"\x00")


_sandbox_context()
