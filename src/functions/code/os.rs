//! The operating-system side of the sandbox child: descriptors, rlimits, `no_new_privs` and
//! the seccomp filter. Linux only; every call here is made by the child process before the
//! user's code runs.

#![allow(unsafe_code)]

use rustix::process::{Resource, Rlimit};

/// Close every descriptor above stderr (the parent's are close-on-exec already; this is the
/// second line).
pub fn close_extra_fds() {
    // rustix has no close_range, so this one stays a raw system call.
    // SAFETY: close_range only closes descriptors; nothing in this process owns fd > 2 yet.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r != 0 {
        // Older kernels: close them one by one.
        for fd in 3..1024 {
            // SAFETY: as above.
            unsafe { rustix::io::close(fd) };
        }
    }
}

fn setrlimit(resource: Resource, value: u64) -> Result<(), String> {
    let lim = Rlimit {
        current: Some(value),
        maximum: Some(value),
    };
    rustix::process::setrlimit(resource, lim).map_err(|e| format!("setrlimit({resource:?}): {e}"))
}

/// The process's current data size (`VmData`: private writable mappings and the heap), in
/// bytes: RLIMIT_DATA counts exactly that.
fn data_size() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmData:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(64 * 1024 * 1024)
}

/// Process-wide bounds: memory (what the process has now + `memory_bytes`), CPU time, no
/// files written, few descriptors, no core dumps, no new processes.
pub fn set_limits(timeout_ms: u64, memory_bytes: u64) -> Result<(), String> {
    setrlimit(Resource::Data, data_size() + memory_bytes)?;
    setrlimit(Resource::Cpu, timeout_ms.div_ceil(1000) + 1)?;
    setrlimit(Resource::Fsize, 0)?;
    setrlimit(Resource::Nofile, 8)?;
    setrlimit(Resource::Core, 0)?;
    setrlimit(Resource::Nproc, 0)?;
    Ok(())
}

/// For the thread about to run user code: `no_new_privs`, then (x86_64) the seccomp filter.
pub fn restrict_thread() -> Result<(), String> {
    rustix::thread::set_no_new_privs(true).map_err(|e| format!("no_new_privs: {e}"))?;
    seccomp()
}

#[cfg(not(target_arch = "x86_64"))]
fn seccomp() -> Result<(), String> {
    Ok(())
}

/// The only syscalls the runner thread may make once user code runs; every other one is
/// answered EPERM (a wrong architecture kills the process). The set is what RustPython,
/// QuickJS and oxc were seen to use under `strace -f` over the code-execution tests
/// (allocation, locks, output, randomness, stack guards, exit and the abort path), plus
/// the clocks and sleeps. `openat` stays refused: files are out of reach.
#[cfg(target_arch = "x86_64")]
const ALLOW: &[libc::c_long] = &[
    // memory
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    // threads' own bookkeeping: locks, stack guards, signal returns
    libc::SYS_futex,
    libc::SYS_sigaltstack,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
    // the descriptors it already has (stdout carries the frames)
    libc::SYS_read,
    libc::SYS_write,
    // time and randomness
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    // what RustPython asks of the file system without opening anything
    libc::SYS_getcwd,
    libc::SYS_statx,
    libc::SYS_access,
    libc::SYS_readlink,
    // the end: exit, or abort (a signal to itself)
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_tgkill,
];

#[cfg(target_arch = "x86_64")]
fn seccomp() -> Result<(), String> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let rules = ALLOW.iter().map(|&nr| (nr, vec![])).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| format!("seccomp: {e}"))?;
    let program: BpfProgram = filter.try_into().map_err(|e| format!("seccomp: {e}"))?;
    // This thread only: the watchdog (timeouts, flushing) stays as it is.
    seccompiler::apply_filter(&program).map_err(|e| format!("seccomp: {e}"))
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::io::ErrorKind;

    /// The filter, installed on one thread of the test process (it applies to that thread
    /// only), refuses files, sockets, processes and threads and every syscall outside its
    /// allowlist, and lets ordinary work through.
    #[test]
    fn the_filter_refuses_what_it_must() {
        let outcome = std::thread::spawn(|| {
            super::restrict_thread().expect("filter installed");
            let file = std::fs::File::open("/proc/self/status").map_err(|e| e.kind());
            let create = std::fs::write("/tmp/oxibase-seccomp-probe", b"x").map_err(|e| e.kind());
            let socket = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.kind());
            let process = std::process::Command::new("/bin/true")
                .spawn()
                .map(|_| ())
                .map_err(|e| e.kind());
            let thread = std::thread::Builder::new()
                .spawn(|| ())
                .map(|_| ())
                .map_err(|e| e.kind());
            let fine = (0..1000u64).sum::<u64>() + Box::new(1u64).as_ref();
            // Raw syscalls outside the allowlist, including ones no denylist named
            // (uname, getppid): each answers EPERM.
            let errno = |r: libc::c_long| (r == -1).then(std::io::Error::last_os_error);
            // SAFETY: syscalls that, refused or not, touch no memory of this process.
            let raw = unsafe {
                let me = libc::getpid() as libc::c_long;
                let mut uts: libc::utsname = std::mem::zeroed();
                [
                    (
                        "socket",
                        errno(libc::syscall(
                            libc::SYS_socket,
                            libc::AF_INET,
                            libc::SOCK_STREAM,
                            0,
                        )),
                    ),
                    (
                        "openat",
                        errno(libc::syscall(
                            libc::SYS_openat,
                            libc::AT_FDCWD,
                            c"/".as_ptr(),
                            libc::O_RDONLY,
                        )),
                    ),
                    (
                        "ptrace",
                        errno(libc::syscall(
                            libc::SYS_ptrace,
                            libc::PTRACE_PEEKDATA,
                            me,
                            0,
                            0,
                        )),
                    ),
                    ("kill", errno(libc::syscall(libc::SYS_kill, me, 0))),
                    (
                        "uname",
                        errno(libc::syscall(
                            libc::SYS_uname,
                            &mut uts as *mut libc::utsname,
                        )),
                    ),
                    ("getppid", errno(libc::syscall(libc::SYS_getppid))),
                ]
            };
            let raw: Vec<_> = raw
                .into_iter()
                .map(|(name, e)| (name, e.and_then(|e| e.raw_os_error())))
                .collect();
            (
                file.err(),
                create.err(),
                socket.err(),
                process.err(),
                thread.err(),
                fine,
                raw,
            )
        })
        .join()
        .expect("the thread ran");
        let denied = Some(ErrorKind::PermissionDenied);
        assert_eq!(outcome.0, denied, "open");
        assert_eq!(outcome.1, denied, "create");
        assert_eq!(outcome.2, denied, "socket");
        assert!(outcome.3.is_some(), "spawn");
        assert!(outcome.4.is_some(), "thread");
        assert_eq!(outcome.5, 499_501);
        for (name, errno) in outcome.6 {
            assert_eq!(errno, Some(libc::EPERM), "{name}");
        }
        // The rest of the process is untouched.
        assert!(std::fs::File::open("/proc/self/status").is_ok());
    }
}
