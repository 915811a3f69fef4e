# Runs INSIDE Blender (3.4 to 5.x); the worker never imports it.
#
#     blender -b [-y] [-noaudio] [--factory-startup] --python blender_server.py -- TOKEN
#
# The warm render server: keeps one .blend file loaded and renders tasks for
# the worker, replaying each task's command-line arguments (--scene,
# --python-expr, --render-output, --render-format, --engine, --render-frame,
# --python-exit-code) in order, the way Blender's command line would.
#
# Requests arrive on stdin, one JSON object per line. Events go to stdout as
# lines "@warm-TOKEN@ {json}", in the same stream as Blender's own output:
# all buffered output (Python's and C's) is flushed before an event is
# written, so everything a task printed arrives before its "done".
#
# After every task the runtime state a task can change is put back (cwd,
# environment, sys.path, sys.argv, handlers, driver namespace, modules
# imported from outside Blender) and the file is reloaded. Changes that
# cannot be undone in place (registered classes and properties, preferences,
# add-ons, running threads) are reported as "tainted", and the worker
# replaces the process.
#
# Standard library and bpy only.

import builtins
import ctypes
import hashlib
import io
import json
import os
import sys
import threading
import time
import traceback
import types

import bpy

_RNA_EXTENSIBLE = ("Bone", "EditBone", "PoseBone")


class Server:
    def __init__(self, token):
        self.marker = ("@warm-%s@ " % token).encode()
        # A private copy of stdin: a task that closes or replaces sys.stdin
        # must not cut the worker off.
        self.requests = io.open(os.dup(0), "rb", closefd=True)
        self.loaded_path = None
        self.pristine = False
        self.libc = _load_libc()
        self.baseline = RuntimeState.capture()
        self.fingerprint_after_load = None

    # -- output --------------------------------------------------------

    def flush(self):
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except Exception:
                pass
        if self.libc is not None:
            try:
                self.libc.fflush(None)
            except Exception:
                pass

    def emit(self, event, **fields):
        self.flush()
        fields["event"] = event
        data = self.marker + json.dumps(fields).encode() + b"\n"
        while data:
            data = data[os.write(1, data):]

    # -- main loop -----------------------------------------------------

    def serve(self):
        self.emit("hello", version=bpy.app.version_string, pid=os.getpid(), python=sys.version.split()[0])
        while True:
            line = self.requests.readline()
            if not line:
                return  # the worker is gone
            try:
                request = json.loads(line)
            except ValueError:
                self.emit("protocol_error", message="not JSON: %r" % line[:200])
                continue
            op = request.get("op")
            if op == "quit":
                return
            if op == "load":
                self.handle_load(request)
            elif op == "render":
                self.handle_render(request)
            else:
                self.emit("protocol_error", message="unknown op %r" % op)

    def handle_load(self, request):
        error = self.ensure_loaded(request["blendfile"], need_pristine=True)
        if error is not None:
            self.emit("load_failed", message=error)
        else:
            self.emit("ready", reset="load", reset_s=0.0)

    def handle_render(self, request):
        task = request.get("task")
        started = time.perf_counter()
        error = self.ensure_loaded(request["blendfile"], need_pristine=True)
        if error is not None:
            self.emit("load_failed", task=task, message=error)
            return
        # Relative output paths resolve against the worker's directory, as
        # they would for a Blender started by the worker.
        os.chdir(request["cwd"])
        self.emit("started", task=task, load_s=round(time.perf_counter() - started, 4))
        self.pristine = False
        task_run = TaskRun(request["actions"])
        task_run.run()
        self.flush()
        # Undo what we can, then decide whether the process is still clean.
        self.baseline.restore()
        tainted = None
        if self.fingerprint_after_load is not None:
            try:
                tainted = self.fingerprint_after_load.difference(Fingerprint.capture())
            except Exception as ex:
                tainted = "left Blender in a state the server cannot check (%s: %s)" % (type(ex).__name__, ex)
        self.emit(
            "done", task=task, exit_code=task_run.exit_code, fallback=task_run.fallback,
            tainted=tainted, run_s=round(time.perf_counter() - started, 4),
        )
        if tainted is not None:
            # The worker replaces this process; reloading would be wasted time.
            self.emit("ready", reset="none", reset_s=0.0)
            return
        reset_started = time.perf_counter()
        error = self.load(self.loaded_path)
        if error is not None:
            self.emit("load_failed", message=error)
            return
        self.emit("ready", reset="reload", reset_s=round(time.perf_counter() - reset_started, 4))

    # -- the .blend file -----------------------------------------------

    def ensure_loaded(self, path, need_pristine):
        if path == self.loaded_path and (self.pristine or not need_pristine):
            return None
        return self.load(path)

    def load(self, path):
        """Open `path` from a clean runtime state; return an error message or None."""
        self.baseline.restore()
        self.loaded_path = None
        self.pristine = False
        try:
            bpy.ops.wm.open_mainfile(filepath=path)
        except Exception as ex:  # RuntimeError with Blender's report
            return str(ex).strip() or type(ex).__name__
        self.loaded_path = path
        self.pristine = True
        self.fingerprint_after_load = Fingerprint.capture()
        return None


class TaskRun:
    """One task's actions, applied like Blender applies command-line arguments."""

    def __init__(self, actions):
        self.actions = actions
        self.exit_code = 0
        self.fallback = None  # why the worker must rerun this task in a new Blender
        self.python_exit_code = 0

    def run(self):
        for action in self.actions:
            handler = getattr(self, "do_" + action["kind"].replace("-", "_"))
            try:
                go_on = handler(action["value"])
            except Exception:
                # A bug here, not in the task: let a cold Blender do it.
                self.fallback = "the render server failed: " + traceback.format_exc(limit=3).strip()
                return
            if not go_on:
                return

    # Each returns True to go on with the next argument, False to stop.

    def do_python_exit_code(self, value):
        self.python_exit_code = value
        return True

    def do_python(self, code):
        module = types.ModuleType("__main__")
        module.__dict__["__builtins__"] = builtins
        previous_main = sys.modules.get("__main__")
        sys.modules["__main__"] = module
        try:
            exec(compile(code, "<string>", "exec"), module.__dict__)
        except SystemExit as ex:
            self.exit_code = _system_exit_code(ex.code)
            return False
        except BaseException as ex:
            # Blender reports the traceback as one "Error: Python: ..." report,
            # without the frames of the code that ran the expression.
            text = "".join(traceback.format_exception(type(ex), ex, ex.__traceback__.tb_next))
            print("Error: Python: " + text.rstrip("\n"), flush=True)
            if self.python_exit_code:
                print("\nError: script failed, expr: '%s', exiting." % code, flush=True)
                self.exit_code = self.python_exit_code
                return False
        finally:
            sys.modules["__main__"] = previous_main
        return True

    def do_scene(self, name):
        scene = bpy.data.scenes.get(name)
        if scene is None:
            print("Can't find scene: '%s' in file: '%s'" % (name, bpy.data.filepath), flush=True)
            return True
        window = bpy.context.window
        if window is None:
            windows = bpy.context.window_manager.windows
            if not len(windows):
                self.fallback = "this Blender has no window to switch scenes in"
                return False
            window = windows[0]
        window.scene = scene
        return True

    def do_output(self, path):
        bpy.context.scene.render.filepath = path
        return True

    def do_format(self, file_format):
        # The command line sets only the format; the Python API also adapts
        # colour mode and depth to it. Keep those as the scene has them, or
        # leave the task to a cold Blender when they cannot be kept.
        settings = bpy.context.scene.render.image_settings
        before = (settings.color_mode, settings.color_depth)
        try:
            settings.file_format = file_format
        except TypeError:
            self.fallback = "this Blender has no image format %s" % file_format
            return False
        if (settings.color_mode, settings.color_depth) != before:
            try:
                settings.color_mode, settings.color_depth = before
            except TypeError:
                self.fallback = (
                    "--render-format %s does not fit the scene's colour mode %s / depth %s, which only the "
                    "command line keeps as they are" % (file_format, before[0], before[1])
                )
                return False
        return True

    def do_engine(self, engine):
        try:
            bpy.context.scene.render.engine = engine
        except TypeError:
            print("\nError: engine not found '%s'" % engine, flush=True)
            self.exit_code = 1
            return False
        return True

    def do_frames(self, ranges):
        scene = bpy.context.scene
        first, last = scene.frame_start, scene.frame_end
        try:
            for start, end in ranges:
                for frame in range(start, end + 1):
                    # Like `-f`: an animation render of exactly this frame, so
                    # output naming, use_overwrite and placeholders behave the same.
                    scene.frame_start = frame
                    scene.frame_end = frame
                    try:
                        bpy.ops.render.render(animation=True)
                    except RuntimeError:
                        # Blender has printed the report ("Error: ...") already.
                        self.exit_code = 1
                        return False
        finally:
            scene.frame_start = first
            scene.frame_end = last
        return True


class RuntimeState:
    """Python-level state a task can change that reloading the file keeps."""

    def __init__(self):
        self.cwd = os.getcwd()
        self.environ = dict(os.environ)
        self.path = list(sys.path)
        self.argv = list(sys.argv)
        self.streams = (sys.stdin, sys.stdout, sys.stderr)
        self.main = sys.modules.get("__main__")
        self.modules = set(sys.modules)
        self.handlers = {name: list(getattr(bpy.app.handlers, name)) for name in _handler_names()}
        self.driver_namespace = dict(bpy.app.driver_namespace)

    @classmethod
    def capture(cls):
        return cls()

    def restore(self):
        os.chdir(self.cwd)
        for key in [k for k in os.environ if k not in self.environ]:
            del os.environ[key]
        for key, value in self.environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        sys.path[:] = self.path
        sys.argv[:] = self.argv
        sys.stdin, sys.stdout, sys.stderr = self.streams
        sys.modules["__main__"] = self.main
        self._forget_task_modules()
        for name, functions in self.handlers.items():
            getattr(bpy.app.handlers, name)[:] = functions
        namespace = bpy.app.driver_namespace
        for key in [k for k in namespace.keys() if k not in self.driver_namespace]:
            del namespace[key]
        namespace.update(self.driver_namespace)

    def _forget_task_modules(self):
        # A module a task imported from its own folder (sys.path.insert) must
        # not answer the next task's import of the same name. Modules from
        # Blender's and Python's own folders stay: extension modules cannot
        # be imported twice, and they hold no task's state.
        roots = tuple(os.path.join(os.path.abspath(p), "") for p in self.path if p)
        for name in [n for n in sys.modules if n not in self.modules]:
            where = getattr(sys.modules.get(name), "__file__", None)
            if not where or not where.endswith((".py", ".pyc")):
                continue
            if not os.path.abspath(where).startswith(roots):
                del sys.modules[name]


class Fingerprint:
    """What a task can change that only a new process undoes."""

    def __init__(self, types_, properties, addons, preferences, threads):
        self.types = types_
        self.properties = properties
        self.addons = addons
        self.preferences = preferences
        self.threads = threads

    _watched = None  # names of the types Python can add properties to

    @classmethod
    def capture(cls):
        names = frozenset(dir(bpy.types))
        if cls._watched is None:
            # Looking at every type takes tens of ms; new types show up in `names`.
            cls._watched = [n for n in names if _is_extensible(n)]
        properties = {n: len(getattr(bpy.types, n).bl_rna.properties) for n in cls._watched}
        prefs = bpy.context.preferences
        addons = tuple(sorted(prefs.addons.keys()))
        digest = hashlib.sha1()
        _digest_rna(prefs, 2, digest, set())
        for addon in prefs.addons:
            if addon.preferences is not None:
                _digest_rna(addon.preferences, 1, digest, set())
        threads = frozenset(t.ident for t in threading.enumerate())
        return cls(names, properties, addons, digest.hexdigest(), threads)

    def difference(self, other):
        """Why `other` differs from this state, or None."""
        added = sorted(other.types - self.types)
        removed = sorted(self.types - other.types)
        if added or removed:
            return "registered or removed Blender types (%s)" % ", ".join((added + removed)[:5])
        changed = sorted(n for n, count in other.properties.items() if self.properties.get(n) != count)
        if changed:
            return "added or removed properties of %s" % ", ".join(changed[:5])
        if other.addons != self.addons:
            return "enabled or disabled add-ons"
        if other.preferences != self.preferences:
            return "changed Blender's preferences"
        if other.threads - self.threads:
            return "started threads that still run"
        return None


def _is_extensible(name):
    cls = getattr(bpy.types, name, None)
    if not isinstance(cls, type) or getattr(cls, "bl_rna", None) is None:
        return False
    return issubclass(cls, bpy.types.ID) or name in _RNA_EXTENSIBLE


def _digest_rna(struct, depth, digest, seen):
    for prop in struct.bl_rna.properties:
        ident = prop.identifier
        if ident == "rna_type" or prop.type == "COLLECTION":
            continue
        try:
            value = getattr(struct, ident)
        except Exception:
            continue
        if prop.type == "POINTER":
            if depth > 0 and value is not None and value.as_pointer() not in seen:
                seen.add(value.as_pointer())
                _digest_rna(value, depth - 1, digest, seen)
            continue
        if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
            try:
                value = tuple(value)
            except TypeError:
                pass
        digest.update(("%s=%r;" % (ident, value)).encode())


def _handler_names():
    return [
        name for name in dir(bpy.app.handlers)
        if not name.startswith("_") and isinstance(getattr(bpy.app.handlers, name), list)
    ]


def _system_exit_code(code):
    # What Python's own exit does with SystemExit's argument.
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr, flush=True)
    return 1


def _load_libc():
    # fflush(NULL) pushes out Blender's C-level stdout before an event line.
    if sys.platform == "win32":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def main():
    argv = sys.argv[sys.argv.index("--") + 1:]
    Server(argv[0]).serve()


main()
