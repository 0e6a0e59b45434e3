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
//!
//! Not available: asyncio (needs sockets), unittest (needs signals), threads.
//! These are conveniences and the first wall; the process's seccomp filter and rlimits are
//! the ones that hold (see `sandbox`).

use rustpython_vm::builtins::{PyBaseExceptionRef, PyStrRef};
use rustpython_vm::compiler::Mode;
use rustpython_vm::{AsObject, Interpreter, Settings, VirtualMachine};

use super::sandbox::{sink, Status, Stream};

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

def _os_getattr(name):
    if name == 'path':
        import posixpath
        _os.path = posixpath
        return posixpath
    raise AttributeError("module 'os' has no attribute %r" % name)

_os.__getattr__ = _os_getattr
sys.modules['os'] = _os
sys.modules['posix'] = _os

_BLOCKED = frozenset(('os', 'posix', 'nt', 'socket', '_socket', 'subprocess',
                      '_posixsubprocess', 'ctypes', '_ctypes', 'signal', '_signal', 'mmap',
                      'select', 'fcntl', 'resource', 'pty', 'shutil', 'tempfile', 'pathlib',
                      'glob', 'multiprocessing', 'threading', '_thread', 'marshal', 'importlib',
                      '_imp', '_frozen_importlib', '_frozen_importlib_external',
                      '_remote_debugging', 'gc', 'sys_monitoring'))
_real_import = builtins.__import__

def __import__(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name.partition('.')[0] in _BLOCKED and (
            globals is None or globals.get('__name__') == '__main__'):
        raise ModuleNotFoundError('No module named %r (not available in the sandbox)' % name,
                                  name=name)
    if level == 0 and name.startswith('os.path') and 'os.path' not in sys.modules:
        sys.modules['os.path'] = _os_getattr('path')
    return _real_import(name, globals, locals, fromlist, level)

builtins.__import__ = __import__
def open(*args, **kwargs):
    raise PermissionError('there is no file system in the sandbox')

builtins.open = open
for _name in ('breakpoint', 'help', 'exit', 'quit', 'copyright', 'credits', 'license'):
    if hasattr(builtins, _name):
        delattr(builtins, _name)
sys.argv = ['main.py']
sys.path = []
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
    })
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
    Ok(())
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
