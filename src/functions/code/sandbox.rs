//! The sandbox: every run happens in a child process, the oxibase binary re-executed as
//! `oxibase __sandbox` with an empty environment, `/` as its directory and only stdin, stdout
//! and stderr open.
//!
//! Protocol. The parent writes one JSON [`Job`] on the child's stdin and closes it. The child
//! answers on its stdout with frames `tag (1 byte) | length (u32 LE) | payload`: `o` a chunk
//! of the program's stdout, `e` a chunk of its stderr, `r` the [`Ending`] (JSON) as its last
//! frame. The child's own stderr (fd 2) carries only what the Rust runtime prints when it
//! aborts (a failed allocation, a stack overflow); the parent reads a few KB of it to explain
//! such a crash.
//!
//! The child, before any user code runs ([`child_main`]): closes every descriptor above 2,
//! changes to `/`, spawns its watchdog and the runner thread, then sets its rlimits
//! (RLIMIT_DATA = the data it already has + the memory bound, RLIMIT_CPU = the timeout + 1 s,
//! RLIMIT_FSIZE 0, RLIMIT_NOFILE 8, RLIMIT_CORE 0, RLIMIT_NPROC 0). The runner thread sets
//! `no_new_privs` and, on x86_64, a seccomp allowlist (memory, locks, output on the
//! descriptors it has, clocks, randomness, exit): every other syscall (opening files,
//! changing the file system, sockets, processes or threads, signals to others, identities)
//! is answered EPERM; it then runs the code. The watchdog flushes buffered
//! output every 50 ms and ends the run at the timeout with what was printed so far.
//!
//! The parent ([`run`]) enforces the same bounds from outside: it kills the child at the
//! timeout plus a grace period, reads at most the output bound (the rest is drained and
//! dropped) and explains a child that died without an ending (signal, allocation failure,
//! stack overflow). A dropped request kills its child (`kill_on_drop`).

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::os;

/// The hidden subcommand that makes the binary a sandbox child.
pub const SUBCOMMAND: &str = "__sandbox";

/// Exit codes of runs the sandbox ended: a bound was exceeded (time, memory, output), as a
/// shell reports a process killed by SIGKILL (128 + 9)...
pub const EXIT_KILLED: i32 = 137;
/// ...or the interpreter itself crashed (128 + SIGABRT).
pub const EXIT_CRASHED: i32 = 134;

/// Time the child may take to start (exec, interpreter set-up) beyond the run's timeout
/// before the parent kills it.
const START_GRACE: Duration = Duration::from_millis(3000);
/// Output frames are flushed at least this often, so a crash loses little.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Largest job the child reads.
const MAX_JOB_BYTES: u64 = 64 * 1024 * 1024;
/// How much of the child's own stderr the parent keeps (crash messages).
const MAX_CRASH_TEXT: usize = 8 * 1024;
/// Stack of the thread running the user's code (deep recursion in the interpreters).
const RUNNER_STACK: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Python,
    Javascript,
    Typescript,
}

impl Language {
    pub fn parse(s: &str) -> Option<Language> {
        match s {
            "python" => Some(Language::Python),
            "javascript" => Some(Language::Javascript),
            "typescript" => Some(Language::Typescript),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Javascript => "javascript",
            Language::Typescript => "typescript",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Success,
    Error,
    Timeout,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Success => "success",
            Status::Error => "error",
            Status::Timeout => "timeout",
        }
    }
}

/// One run, as the parent sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub language: Language,
    pub code: String,
    pub stdin: String,
    pub timeout_ms: u64,
    pub memory_bytes: u64,
    pub output_bytes: usize,
}

/// How the run ended, as the child reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ending {
    pub status: Status,
    pub exit_code: i32,
}

/// A finished run, as the parent saw it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    pub duration_ms: u64,
}

// ------------------------------------------------------------------ parent

/// Run `job` in a child process started from `exe`. `Err` only when the child could not be
/// started at all (a server problem, not the code's).
pub async fn run(exe: &Path, job: &Job) -> Result<Outcome, String> {
    let start = Instant::now();
    let mut child = tokio::process::Command::new(exe)
        .arg(SUBCOMMAND)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the sandbox {}: {e}", exe.display()))?;
    let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("the sandbox's pipes are missing".into());
    };
    let job_bytes = serde_json::to_vec(job).map_err(|e| e.to_string())?;
    let limit = job.output_bytes;
    let hard = Duration::from_millis(job.timeout_ms) + START_GRACE;

    let work = async {
        let write = async move {
            // A child that died early closes its end: nothing more to say then.
            let _ = stdin.write_all(&job_bytes).await;
            drop(stdin);
        };
        let crash_text = async move {
            let mut kept = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let room = MAX_CRASH_TEXT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            String::from_utf8_lossy(&kept).into_owned()
        };
        let ((), frames, crash) = tokio::join!(write, read_frames(stdout, limit), crash_text);
        let status = child.wait().await;
        (frames, crash, status)
    };
    let finished = tokio::time::timeout(hard, work).await;
    let duration_ms = start.elapsed().as_millis() as u64;
    let Ok((frames, crash, status)) = finished else {
        // The child did not end itself in time (stuck before its watchdog could act).
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Ok(Outcome {
            status: Status::Timeout,
            stdout: String::new(),
            stderr: format!("Execution timed out after {} ms.\n", job.timeout_ms),
            exit_code: EXIT_KILLED,
            duration_ms,
        });
    };
    let mut stdout = String::from_utf8_lossy(&frames.stdout).into_owned();
    let mut stderr = String::from_utf8_lossy(&frames.stderr).into_owned();
    if frames.overflow {
        truncate_note(&mut stdout, &mut stderr, limit);
    }
    let (status, exit_code) = match (frames.ending, frames.overflow) {
        (Some(e), false) => (e.status, e.exit_code),
        (Some(_), true) => (Status::Error, EXIT_KILLED),
        (None, _) => {
            let (status, code, note) = explain_crash(status.ok(), &crash, job);
            if !note.is_empty() {
                push_line(&mut stderr, &note);
            }
            (status, code)
        }
    };
    Ok(Outcome {
        status,
        stdout,
        stderr,
        exit_code,
        duration_ms,
    })
}

#[derive(Default)]
struct Frames {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    ending: Option<Ending>,
    /// More output than the bound arrived (the child should have stopped it itself).
    overflow: bool,
}

/// Read the child's frames until it closes its stdout; output past `limit` is dropped (but
/// still read, so the child never blocks on a full pipe).
async fn read_frames(mut out: tokio::process::ChildStdout, limit: usize) -> Frames {
    let mut f = Frames::default();
    // Notes the child adds past the bound (truncation, timeout) are small.
    let slack = 64 * 1024;
    loop {
        let mut head = [0u8; 5];
        if out.read_exact(&mut head).await.is_err() {
            return f;
        }
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > limit + slack {
            // Not a frame this child would write: stop trusting the stream.
            f.overflow = true;
            let _ = tokio::io::copy(&mut out, &mut tokio::io::sink()).await;
            return f;
        }
        let mut payload = vec![0u8; len];
        if out.read_exact(&mut payload).await.is_err() {
            return f;
        }
        match head[0] {
            b'o' | b'e' => {
                let used = f.stdout.len() + f.stderr.len();
                if used + len > limit + slack {
                    f.overflow = true;
                    continue;
                }
                if head[0] == b'o' {
                    f.stdout.extend_from_slice(&payload);
                } else {
                    f.stderr.extend_from_slice(&payload);
                }
            }
            b'r' => f.ending = serde_json::from_slice(&payload).ok(),
            _ => {}
        }
    }
}

fn push_line(s: &mut String, line: &str) {
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s.push_str(line);
    s.push('\n');
}

fn truncate_note(stdout: &mut String, stderr: &mut String, limit: usize) {
    let cut = |s: &mut String, max: usize| {
        if s.len() > max {
            let mut i = max;
            while !s.is_char_boundary(i) {
                i -= 1;
            }
            s.truncate(i);
        }
    };
    cut(stdout, limit);
    cut(stderr, limit.saturating_sub(stdout.len()));
    push_line(
        stderr,
        &format!("Output truncated: the run printed more than the limit of {limit} bytes."),
    );
}

/// Status, exit code and a stderr note for a child that ended without its ending frame.
fn explain_crash(
    status: Option<std::process::ExitStatus>,
    crash: &str,
    job: &Job,
) -> (Status, i32, String) {
    use std::os::unix::process::ExitStatusExt;
    let signal = status.and_then(|s| s.signal());
    let mb = job.memory_bytes / (1024 * 1024);
    if signal == Some(rustix::process::Signal::XCPU.as_raw()) {
        return (
            Status::Timeout,
            EXIT_KILLED,
            format!("CPU time limit exceeded ({} ms).", job.timeout_ms),
        );
    }
    if crash.contains("memory allocation of") || crash.contains("out of memory") {
        return (
            Status::Error,
            EXIT_KILLED,
            format!("Memory limit exceeded: the run used more than {mb} MB."),
        );
    }
    if crash.contains("overflowed its stack") {
        return (
            Status::Error,
            EXIT_CRASHED,
            "Stack overflow: the code recursed too deeply.".into(),
        );
    }
    let how = match (signal, status.and_then(|s| s.code())) {
        (Some(s), _) => format!("signal {s}"),
        (None, Some(c)) => format!("exit code {c}"),
        (None, None) => "unknown cause".into(),
    };
    tracing::warn!(
        target: "oxibase::functions",
        cause = %how,
        detail = %crash.lines().take(5).collect::<Vec<_>>().join(" | "),
        "code-execution sandbox crashed"
    );
    (
        Status::Error,
        EXIT_CRASHED,
        format!("The interpreter crashed ({how})."),
    )
}

// ------------------------------------------------------------------ child

/// The program's output, framed and buffered, bounded by the job's output limit.
pub struct Sink {
    inner: Mutex<SinkInner>,
}

struct SinkInner {
    buf: Vec<u8>,
    used: usize,
    limit: usize,
    last_flush: Instant,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// The child's output sink (set up by [`child_main`]).
pub fn sink() -> &'static Sink {
    SINK.get_or_init(|| Sink::new(1024 * 1024))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Sink {
    fn new(limit: usize) -> Sink {
        Sink {
            inner: Mutex::new(SinkInner {
                buf: Vec::with_capacity(16 * 1024),
                used: 0,
                limit,
                last_flush: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Print `text` on the program's stdout or stderr. Past the output bound the text is
    /// cut, a note added, and the run ends.
    pub fn emit(&self, stream: Stream, text: &str) {
        if text.is_empty() {
            return;
        }
        let tag = if stream == Stream::Stdout { b'o' } else { b'e' };
        let mut g = self.lock();
        let room = g.limit - g.used;
        if text.len() <= room {
            g.used += text.len();
            frame(&mut g.buf, tag, text.as_bytes());
            if g.buf.len() >= 16 * 1024 || g.last_flush.elapsed() >= FLUSH_EVERY {
                flush(&mut g);
            }
            return;
        }
        let mut cut = room;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        frame(&mut g.buf, tag, &text.as_bytes()[..cut]);
        g.used = g.limit;
        let note = format!(
            "\nOutput truncated: the run printed more than the limit of {} bytes.\n",
            g.limit
        );
        frame(&mut g.buf, b'e', note.as_bytes());
        end(&mut g, Status::Error, EXIT_KILLED)
    }

    /// Add a note to stderr outside the output bound (timeouts, crashes).
    pub fn note(&self, text: &str) {
        let mut g = self.lock();
        frame(&mut g.buf, b'e', text.as_bytes());
    }

    /// End the run: flush, report, exit the process.
    pub fn finish(&self, status: Status, exit_code: i32) -> ! {
        let mut g = self.lock();
        end(&mut g, status, exit_code)
    }

    fn flush_now(&self) {
        let mut g = self.lock();
        flush(&mut g);
    }
}

fn frame(buf: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    buf.push(tag);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(payload);
}

fn flush(g: &mut SinkInner) {
    if !g.buf.is_empty() {
        let mut out = std::io::stdout().lock();
        // A parent that went away: nothing left to tell anyone.
        let _ = out.write_all(&g.buf);
        let _ = out.flush();
        g.buf.clear();
    }
    g.last_flush = Instant::now();
}

fn end(g: &mut SinkInner, status: Status, exit_code: i32) -> ! {
    let ending = serde_json::to_vec(&Ending { status, exit_code }).unwrap_or_default();
    frame(&mut g.buf, b'r', &ending);
    flush(g);
    std::process::exit(0)
}

thread_local! {
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static CAUGHT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Run `f`; a panic inside it (an interpreter's internal error) comes back as `Err` with its
/// message instead of ending the process, so the run can report it like an exception.
pub fn catching_panics<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    CATCHING.with(|c| c.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(false));
    r.map_err(|_| CAUGHT.with(|c| c.borrow_mut().take()).unwrap_or_default())
}

/// `oxibase __sandbox`: run one job from stdin (see the module docs). Never returns.
pub fn child_main() -> ! {
    let mut raw = Vec::new();
    let read = std::io::stdin()
        .lock()
        .take(MAX_JOB_BYTES)
        .read_to_end(&mut raw);
    let job: Job = match read
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice(&raw).map_err(|e| e.to_string()))
    {
        Ok(j) => j,
        Err(e) => {
            eprintln!("oxibase {SUBCOMMAND}: bad job: {e}");
            std::process::exit(2)
        }
    };
    drop(raw);
    let _ = SINK.set(Sink::new(job.output_bytes));
    std::panic::set_hook(Box::new(|info| {
        // An interpreter that catches its own panics ([`catching_panics`]) reports them.
        if CATCHING.with(|c| c.get()) {
            let msg = match info.payload().downcast_ref::<&str>() {
                Some(s) => (*s).to_string(),
                None => info
                    .payload()
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_default(),
            };
            CAUGHT.with(|c| *c.borrow_mut() = Some(msg));
            return;
        }
        // Never wait for the sink's lock here: the panic may have happened while holding it.
        let msg = info.to_string();
        if let Some(s) = SINK.get() {
            if let Ok(mut g) = s.inner.try_lock() {
                let note = format!("\nThe interpreter crashed: {msg}\n");
                frame(&mut g.buf, b'e', note.as_bytes());
                end(&mut g, Status::Error, EXIT_CRASHED);
            }
        }
        eprintln!("{msg}");
        std::process::exit(EXIT_CRASHED)
    }));
    os::close_extra_fds();
    let _ = std::env::set_current_dir("/");

    let deadline = Instant::now() + Duration::from_millis(job.timeout_ms);
    let timeout_ms = job.timeout_ms;
    let watchdog = std::thread::Builder::new()
        .name("watchdog".into())
        .stack_size(256 * 1024)
        .spawn(move || loop {
            let now = Instant::now();
            if now >= deadline {
                let s = sink();
                s.note(&format!("\nExecution timed out after {timeout_ms} ms.\n"));
                s.finish(Status::Timeout, EXIT_KILLED);
            }
            std::thread::sleep(FLUSH_EVERY.min(deadline - now));
            sink().flush_now();
        });
    if watchdog.is_err() {
        sink().note("The sandbox could not start its watchdog.\n");
        sink().finish(Status::Error, EXIT_CRASHED);
    }
    let memory_bytes = job.memory_bytes;
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let runner = std::thread::Builder::new()
        .name("runner".into())
        .stack_size(RUNNER_STACK)
        .spawn(move || {
            if go_rx.recv().is_err() {
                return;
            }
            if let Err(e) = os::restrict_thread() {
                sink().note(&format!("The sandbox could not be set up: {e}\n"));
                sink().finish(Status::Error, EXIT_CRASHED);
            }
            let (status, code) = match job.language {
                Language::Python => super::python::run(&job.code, &job.stdin),
                Language::Javascript => {
                    super::js::run(&job.code, &job.stdin, job.memory_bytes as usize)
                }
                Language::Typescript => match super::ts::strip(&job.code) {
                    Ok(js) => super::js::run(&js, &job.stdin, job.memory_bytes as usize),
                    Err(e) => {
                        sink().emit(Stream::Stderr, &e);
                        (Status::Error, 1)
                    }
                },
            };
            sink().finish(status, code)
        });
    let Ok(runner) = runner else {
        sink().note("The sandbox could not start its runner.\n");
        sink().finish(Status::Error, EXIT_CRASHED);
    };
    if let Err(e) = os::set_limits(timeout_ms, memory_bytes) {
        sink().note(&format!("The sandbox could not be set up: {e}\n"));
        sink().finish(Status::Error, EXIT_CRASHED);
    }
    let _ = go_tx.send(());
    let _ = runner.join();
    sink().note("The interpreter crashed.\n");
    sink().finish(Status::Error, EXIT_CRASHED)
}
