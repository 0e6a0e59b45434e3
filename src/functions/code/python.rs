//! Python on RustPython (in the sandbox child). The standard library is frozen into the
//! binary; RustPython's host environment is left out, so there is no native `posix`, `_io`
//! file object, `_socket`, `_signal` or process module at all. On top of that, before the
//! program runs:
//! - `open` raises PermissionError; `breakpoint`, `help`, `exit`, `quit` are removed;
//! - `sys.stdout`/`sys.stderr` write to the run's output; `sys.stdin` and `input()` read the
//!   request's `stdin` text (EOFError at its end);
//! - modules of the standard library that import `os` or `io` while loading (random,
//!   dataclasses, statistics, contextlib, uuid, csv, zoneinfo, io.StringIO...) see
//!   capability-free stand-ins: an `os` with an empty `environ`, path helpers, `urandom` and
//!   functions that raise PermissionError, and an `io.FileIO` that cannot be constructed;
//! - the program itself cannot import `os`, `posix`, `socket`, `subprocess`, `ctypes`,
//!   `signal`, `threading`, `importlib`, `pathlib`, `shutil`, `tempfile`... (ModuleNotFoundError).
//!   The guard is a native function keeping the real importer in a Rust closure (nothing of it
//!   is reachable through `__globals__`, `__closure__` or `__code__`), and it asks the frame
//!   running the import whether it is the standard library's, instead of trusting the
//!   `globals` argument or `__name__`;
//! - an internal failure of RustPython (a Rust panic, e.g. from walking
//!   `object.__subclasses__()`) ends the run as `SystemError` (status error, exit code 1).
//!
//! Not available: asyncio (needs sockets), unittest (needs signals), threads.
//! These are conveniences and the first wall, not a boundary: the import machinery itself
//! (`importlib._bootstrap`, reachable from any module's `__spec__.loader`) and the standard
//! library's own modules can load whatever this build contains, which is why it contains no
//! host modules at all. The process's seccomp filter and rlimits are the walls that hold (see
//! `sandbox`).

use std::collections::HashSet;

use rustpython_vm::builtins::{PyBaseExceptionRef, PyList, PyStr, PyStrRef, PyType};
use rustpython_vm::compiler::Mode;
use rustpython_vm::function::FuncArgs;
use rustpython_vm::types::PyTypeFlags;
use rustpython_vm::{AsObject, Interpreter, PyObjectRef, PyResult, Settings, VirtualMachine};

use super::sandbox::{catching_panics, sink, Status, Stream};

/// Modules the program may not import by name (the standard library still may, e.g. to load
/// `random`, which imports `os`; it then gets the capability-free stand-ins).
const BLOCKED: &[&str] = &[
    "os",
    "posix",
    "nt",
    "socket",
    "_socket",
    "subprocess",
    "_posixsubprocess",
    "ctypes",
    "_ctypes",
    "signal",
    "_signal",
    "mmap",
    "select",
    "fcntl",
    "resource",
    "pty",
    "shutil",
    "tempfile",
    "pathlib",
    "glob",
    "multiprocessing",
    "threading",
    "_thread",
    "marshal",
    "importlib",
    "_imp",
    "_frozen_importlib",
    "_frozen_importlib_external",
    "_remote_debugging",
    "gc",
    "sys_monitoring",
];

/// Streams, stdin and the trimmed builtins, run before the user's code (in its own scope).
const PRELUDE: &str = r#"
import sys, builtins

class _Out:
    encoding = 'utf-8'
    errors = 'strict'
    closed = False
    def __init__(self, fd):
        self._fd = fd
    def write(self, s):
        if not isinstance(s, str):
            raise TypeError('write() argument must be str, not ' + type(s).__name__)
        _emit(self._fd, s)
        return len(s)
    def writelines(self, lines):
        for line in lines:
            self.write(line)
    def flush(self):
        pass
    def isatty(self):
        return False
    def fileno(self):
        raise OSError('there are no file descriptors in the sandbox')

class _In:
    encoding = 'utf-8'
    closed = False
    def __init__(self, data):
        self._d = data
        self._p = 0
    def read(self, n=-1):
        d, p = self._d, self._p
        e = len(d) if n is None or n < 0 else min(len(d), p + n)
        self._p = e
        return d[p:e]
    def readline(self, n=-1):
        d, p = self._d, self._p
        e = d.find('\n', p)
        e = len(d) if e < 0 else e + 1
        if n is not None and n >= 0:
            e = min(e, p + n)
        self._p = e
        return d[p:e]
    def readlines(self, hint=-1):
        return list(self)
    def __iter__(self):
        return self
    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line
    def isatty(self):
        return False
    def fileno(self):
        raise OSError('there are no file descriptors in the sandbox')

sys.stdout = sys.__stdout__ = _Out(1)
sys.stderr = sys.__stderr__ = _Out(2)
sys.stdin = sys.__stdin__ = _In(_stdin_data)

def input(prompt=''):
    if prompt:
        sys.stdout.write(str(prompt))
    line = sys.stdin.readline()
    if not line:
        raise EOFError('EOF when reading a line')
    return line[:-1] if line.endswith('\n') else line

builtins.input = input

# Standard-library modules that import `os` or `io` at load time (random, contextlib,
# dataclasses, statistics, uuid, csv...) get capability-free stand-ins: no files, no
# processes, an empty environment. The program itself cannot import them by name.
import _io, _random

class _NoFiles(_io._RawIOBase):
    def __init__(self, *args, **kwargs):
        raise PermissionError('there is no file system in the sandbox')

_io.FileIO = _NoFiles
_io.open = open

def _denied(*args, **kwargs):
    raise PermissionError('not available in the sandbox')

_os = type(sys)('os')
_os.__dict__.update(
    name='posix', sep='/', altsep=None, curdir='.', pardir='..', extsep='.', pathsep=':',
    linesep='\n', defpath='/bin:/usr/bin', devnull='/dev/null', environ={}, error=OSError,
    supports_bytes_environ=False, F_OK=0, R_OK=4, W_OK=2, X_OK=1, SEEK_SET=0, SEEK_CUR=1,
    SEEK_END=2, _exit=_denied,
)
for _name in ('stat', 'lstat', 'fstat', 'listdir', 'scandir', 'open', 'close', 'read', 'write',
              'chdir', 'mkdir', 'makedirs', 'remove', 'unlink', 'rmdir', 'rename', 'replace',
              'walk', 'system', 'popen', 'kill', 'execv', 'execve', 'spawnv',
              'putenv', 'unsetenv', 'access', 'readlink', 'symlink', 'link', 'chmod', 'chown',
              'utime', 'truncate', 'getpid', 'getppid', 'getuid', 'getlogin', 'umask'):
    setattr(_os, _name, _denied)
_os.getenv = lambda key, default=None: default
_os.register_at_fork = lambda **kwargs: None
_os.getcwd = lambda: '/'
_os.cpu_count = lambda: 1
_os.urandom = lambda n: _random.Random().getrandbits(8 * n).to_bytes(n, 'little') if n else b''
_os.strerror = lambda code: 'error %d' % code
_os.fsencode = lambda f: f.encode() if isinstance(f, str) else f
_os.fsdecode = lambda f: f.decode() if isinstance(f, bytes) else f

class PathLike:
    pass

def fspath(p):
    if isinstance(p, (str, bytes)):
        return p
    f = getattr(type(p), '__fspath__', None)
    if f is None:
        raise TypeError('expected str, bytes or os.PathLike object, not ' + type(p).__name__)
    return f(p)

_os.PathLike = PathLike
_os.fspath = fspath

sys.modules['os'] = _os
sys.modules['posix'] = _os
import posixpath
_os.path = posixpath
sys.modules['os.path'] = posixpath

def open(*args, **kwargs):
    raise PermissionError('there is no file system in the sandbox')

builtins.open = open
for _name in ('breakpoint', 'help', 'exit', 'quit', 'copyright', 'credits', 'license'):
    if hasattr(builtins, _name):
        delattr(builtins, _name)
sys.argv = ['main.py']
sys.path = []
# What the functions above need at run time stays; the rest goes. (Nothing here can import
# past the guard: the guard and the real importer live in Rust, see `install_import_guard`.)
for _name in ('PathLike', '_NoFiles', '_name'):
    del globals()[_name]
"#;

/// Run `code`; what it prints goes to the sink. Returns the status and exit code.
pub fn run(code: &str, stdin: &str) -> (Status, i32) {
    let mut settings = Settings::default();
    settings.path_list.clear();
    settings.import_site = false;
    settings.install_signal_handlers = false;
    settings.allow_external_library = false;
    settings.user_site_directory = false;
    let builder = Interpreter::builder(settings);
    let defs = rustpython_stdlib::stdlib_module_defs(&builder.ctx);
    let interp = builder
        .add_native_modules(&defs)
        .add_frozen_modules(rustpython_pylib::FROZEN_STDLIB)
        .build();
    interp.enter(|vm| {
        // An internal error of the interpreter (a Rust panic) ends the run like an exception.
        catching_panics(|| run_in(vm, code, stdin)).unwrap_or_else(|msg| {
            let msg = msg.lines().next().unwrap_or("").to_string();
            sink().emit(
                Stream::Stderr,
                &format!("SystemError: the interpreter failed internally: {msg}\n"),
            );
            (Status::Error, 1)
        })
    })
}

fn run_in(vm: &VirtualMachine, code: &str, stdin: &str) -> (Status, i32) {
    if let Err(e) = prepare(vm, stdin) {
        report(vm, e);
        return (Status::Error, super::sandbox::EXIT_CRASHED);
    }
    let scope = vm.new_scope_with_builtins();
    let _ = scope
        .globals
        .set_item("__name__", vm.ctx.new_str("__main__").into(), vm);
    let compiled = match vm.compile(code, Mode::Exec, "main.py".to_owned()) {
        Ok(c) => c,
        Err(e) => {
            let exc = vm.new_syntax_error(&e, Some(code));
            report(vm, exc);
            return (Status::Error, 1);
        }
    };
    match vm.run_code_obj(compiled, scope) {
        Ok(_) => (Status::Success, 0),
        Err(exc) if exc.fast_isinstance(vm.ctx.exceptions.system_exit) => {
            let code = vm.handle_exit_exception(exc) as i32;
            let status = if code == 0 {
                Status::Success
            } else {
                Status::Error
            };
            (status, code)
        }
        Err(exc) => {
            report(vm, exc);
            (Status::Error, 1)
        }
    }
}

fn prepare(vm: &VirtualMachine, stdin: &str) -> Result<(), PyBaseExceptionRef> {
    let scope = vm.new_scope_with_builtins();
    let emit = vm.new_function("_emit", |fd: i32, s: PyStrRef| {
        let stream = if fd == 2 {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        sink().emit(stream, &s.to_string_lossy());
    });
    scope.globals.set_item("_emit", emit.into(), vm)?;
    scope
        .globals
        .set_item("_stdin_data", vm.ctx.new_str(stdin).into(), vm)?;
    let compiled = vm
        .compile(PRELUDE, Mode::Exec, "<sandbox>".to_owned())
        .map_err(|e| vm.new_syntax_error(&e, Some(PRELUDE)))?;
    vm.run_code_obj(compiled, scope)?;
    install_import_guard(vm)?;
    intern_static_type_names(vm);
    Ok(())
}

/// `builtins.__import__` becomes a native function holding the real one in a Rust closure:
/// it has no `__globals__`, `__closure__`, `__code__` or `__wrapped__` leading to the real
/// importer. Who imports is decided by the frame that runs the import, not by the `globals`
/// argument (which the caller chooses): a blocked name is refused unless that frame runs a
/// module of the standard library (its globals are the `__dict__` of a module registered
/// under its `__name__`, other than `__main__`).
fn install_import_guard(vm: &VirtualMachine) -> PyResult<()> {
    let real = vm.builtins.get_attr("__import__", vm)?;
    let guard = vm.new_function(
        "__import__",
        move |args: FuncArgs, vm: &VirtualMachine| -> PyResult {
            let arg = |i: usize, k: &str| args.args.get(i).or_else(|| args.kwargs.get(k)).cloned();
            let level = match arg(4, "level") {
                None => 0,
                Some(l) => l.try_to_value::<i64>(vm).unwrap_or(1),
            };
            if level == 0 {
                if let Some(name) = arg(0, "name") {
                    if let Some(name) = name.downcast_ref::<PyStr>() {
                        let name = name.to_string_lossy();
                        let top = name.split('.').next().unwrap_or("");
                        if BLOCKED.contains(&top) && !called_from_stdlib(vm) {
                            return Err(not_available(vm, &name));
                        }
                    }
                }
            }
            let before = modules_count(vm);
            let r = real.call_with_args(args, vm);
            if modules_count(vm) != before {
                intern_static_type_names(vm);
            }
            r
        },
    );
    vm.builtins.set_attr("__import__", guard, vm)
}

fn not_available(vm: &VirtualMachine, name: &str) -> PyBaseExceptionRef {
    let exc = vm.new_exception_msg(
        vm.ctx.exceptions.module_not_found_error.to_owned(),
        format!("No module named {name:?} (not available in the sandbox)").into(),
    );
    let _ = exc.as_object().set_attr("name", vm.ctx.new_str(name), vm);
    exc
}

/// Whether the import runs in a module of the standard library (see `install_import_guard`).
fn called_from_stdlib(vm: &VirtualMachine) -> bool {
    let Some(frame) = vm.current_frame() else {
        return false;
    };
    let globals = frame.globals.clone();
    let Ok(Some(name)) = globals.get_item_opt("__name__", vm) else {
        return false;
    };
    let Some(name) = name.downcast_ref::<PyStr>().map(|n| n.to_string_lossy()) else {
        return false;
    };
    if name == "__main__" {
        return false;
    }
    let Ok(module) = vm
        .sys_module
        .get_attr("modules", vm)
        .and_then(|m| m.get_item(&*name, vm))
    else {
        return false;
    };
    module.dict().is_some_and(|d| d.is(&globals))
}

fn modules_count(vm: &VirtualMachine) -> Option<usize> {
    vm.sys_module
        .get_attr("modules", vm)
        .ok()
        .and_then(|m| m.length(vm).ok())
}

/// RustPython answers `__name__` of a built-in type from the interned strings and panics
/// when the name was never interned (types only reachable through `object.__subclasses__()`,
/// e.g. `async_generator_wrapped_value`). Intern the name of every built-in type there is
/// (again after each import that loaded modules, which may add types).
fn intern_static_type_names(vm: &VirtualMachine) {
    let mut seen = HashSet::new();
    let mut stack: Vec<PyObjectRef> = vec![vm.ctx.types.object_type.to_owned().into()];
    while let Some(t) = stack.pop() {
        let Ok(subs) = vm.call_method(&t, "__subclasses__", ()) else {
            continue;
        };
        let Some(list) = subs.downcast_ref::<PyList>() else {
            continue;
        };
        for sub in list.borrow_vec().iter() {
            if !seen.insert(sub.get_id()) {
                continue;
            }
            if let Some(ty) = sub.downcast_ref::<PyType>() {
                if !ty.slots.flags.contains(PyTypeFlags::HEAPTYPE) {
                    let full = ty.slot_name();
                    let short = full.rsplit_once('.').map_or(&*full, |(_, n)| n);
                    vm.ctx.intern_str(short);
                }
            }
            stack.push(sub.clone());
        }
    }
}

/// Print an exception with its traceback on the run's stderr.
fn report(vm: &VirtualMachine, exc: PyBaseExceptionRef) {
    let mut text = String::new();
    if vm.write_exception(&mut text, &exc).is_err() {
        text = format!("{}\n", exc.as_object().class().name());
    }
    sink().emit(Stream::Stderr, &condense(&text));
}

/// Runs of one repeated traceback line (deep recursion) shortened as CPython does.
fn condense(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(64 * 1024));
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let mut run = 1;
        while i + run < lines.len() && lines[i + run] == lines[i] {
            run += 1;
        }
        for _ in 0..run.min(3) {
            out.push_str(lines[i]);
            out.push('\n');
        }
        if run > 3 && lines[i].starts_with("  File ") {
            out.push_str(&format!(
                "  [Previous line repeated {} more times]\n",
                run - 3
            ));
        } else {
            for _ in 3..run {
                out.push_str(lines[i]);
                out.push('\n');
            }
        }
        i += run;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn repeated_frames_are_condensed() {
        let mut t = String::from("Traceback (most recent call last):\n");
        t.push_str("  File \"main.py\", line 5, in <module>\n");
        for _ in 0..998 {
            t.push_str("  File \"main.py\", line 3, in f\n");
        }
        t.push_str("RecursionError: maximum recursion depth exceeded\n");
        let c = super::condense(&t);
        assert_eq!(c.lines().count(), 7, "{c}");
        assert!(c.contains("[Previous line repeated 995 more times]"), "{c}");
        assert!(c.ends_with("RecursionError: maximum recursion depth exceeded\n"));
        assert_eq!(super::condense("a\na\na\na\nb\n"), "a\na\na\na\nb\n");
    }
}
