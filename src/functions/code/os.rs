//! The operating-system side of the sandbox child: descriptors, rlimits, `no_new_privs` and
//! the seccomp filter. Linux only; every call here is made by the child process before the
//! user's code runs.

#![allow(unsafe_code)]

/// Close every descriptor above stderr (the parent's are close-on-exec already; this is the
/// second line).
pub fn close_extra_fds() {
    // SAFETY: close_range only closes descriptors; nothing in this process uses fd > 2 yet.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r != 0 {
        // Older kernels: close them one by one.
        for fd in 3..1024 {
            // SAFETY: as above.
            unsafe { libc::close(fd) };
        }
    }
}

fn setrlimit(resource: libc::__rlimit_resource_t, value: u64) -> Result<(), String> {
    let lim = libc::rlimit {
        rlim_cur: value as libc::rlim_t,
        rlim_max: value as libc::rlim_t,
    };
    // SAFETY: a plain system call with a valid pointer to a local struct.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(format!(
            "setrlimit({resource}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
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
    setrlimit(libc::RLIMIT_DATA, data_size() + memory_bytes)?;
    setrlimit(libc::RLIMIT_CPU, timeout_ms.div_ceil(1000) + 1)?;
    setrlimit(libc::RLIMIT_FSIZE, 0)?;
    setrlimit(libc::RLIMIT_NOFILE, 8)?;
    setrlimit(libc::RLIMIT_CORE, 0)?;
    setrlimit(libc::RLIMIT_NPROC, 0)?;
    Ok(())
}

/// For the thread about to run user code: `no_new_privs`, then (x86_64) the seccomp filter.
pub fn restrict_thread() -> Result<(), String> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
    }
    seccomp()
}

#[cfg(not(target_arch = "x86_64"))]
fn seccomp() -> Result<(), String> {
    Ok(())
}

#[cfg(target_arch = "x86_64")]
fn seccomp() -> Result<(), String> {
    // Classic BPF over `struct seccomp_data { int nr; u32 arch; ... }`.
    const LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS
    const JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE_K: u16 = 0x05 | 0x30; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const X32_BIT: u32 = 0x4000_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_KILL_PROCESS: u32 = 0x8000_0000;
    const RET_EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
    const SECCOMP_MODE_FILTER: libc::c_ulong = 2;
    const DENY: &[libc::c_long] = &[
        // files and the file system
        libc::SYS_open,
        libc::SYS_openat,
        libc::SYS_openat2,
        libc::SYS_creat,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_unlink,
        libc::SYS_unlinkat,
        libc::SYS_rename,
        libc::SYS_renameat,
        libc::SYS_renameat2,
        libc::SYS_mkdir,
        libc::SYS_mkdirat,
        libc::SYS_rmdir,
        libc::SYS_link,
        libc::SYS_linkat,
        libc::SYS_symlink,
        libc::SYS_symlinkat,
        libc::SYS_mknod,
        libc::SYS_mknodat,
        libc::SYS_chmod,
        libc::SYS_fchmod,
        libc::SYS_fchmodat,
        libc::SYS_chown,
        libc::SYS_fchown,
        libc::SYS_lchown,
        libc::SYS_fchownat,
        libc::SYS_truncate,
        libc::SYS_ftruncate,
        libc::SYS_chdir,
        libc::SYS_fchdir,
        libc::SYS_chroot,
        libc::SYS_pivot_root,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_memfd_create,
        libc::SYS_inotify_init,
        libc::SYS_inotify_init1,
        libc::SYS_fanotify_init,
        // network
        libc::SYS_socket,
        libc::SYS_socketpair,
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept,
        libc::SYS_accept4,
        // processes, threads, other processes
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_kill,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_open,
        libc::SYS_pidfd_getfd,
        libc::SYS_pidfd_send_signal,
        // identities, namespaces and kernel facilities
        libc::SYS_setuid,
        libc::SYS_setgid,
        libc::SYS_setreuid,
        libc::SYS_setregid,
        libc::SYS_setresuid,
        libc::SYS_setresgid,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_reboot,
        libc::SYS_personality,
        libc::SYS_acct,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
    ];
    fn stmt(code: u16, k: u32) -> libc::sock_filter {
        libc::sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }
    fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
        libc::sock_filter { code, jt, jf, k }
    }
    let mut f = vec![
        stmt(LD_W_ABS, 4),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, RET_KILL_PROCESS),
        stmt(LD_W_ABS, 0),
        // The x32 ABI's numbers: refused wholesale.
        jump(JGE_K, X32_BIT, 0, 1),
        stmt(RET_K, RET_EPERM),
    ];
    for nr in DENY {
        f.push(jump(JEQ_K, *nr as u32, 0, 1));
        f.push(stmt(RET_K, RET_EPERM));
    }
    f.push(stmt(RET_K, RET_ALLOW));
    let prog = libc::sock_fprog {
        len: f.len() as u16,
        filter: f.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `f`, alive for the call; the kernel copies the program.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog as libc::c_ulong,
            0,
            0,
        )
    };
    if r != 0 {
        return Err(format!("seccomp: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::io::ErrorKind;

    /// The filter, installed on one thread of the test process (it applies to that thread
    /// only), refuses files, sockets, processes and threads, and lets ordinary work through.
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
            (
                file.err(),
                create.err(),
                socket.err(),
                process.err(),
                thread.err(),
                fine,
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
        // The rest of the process is untouched.
        assert!(std::fs::File::open("/proc/self/status").is_ok());
    }
}
