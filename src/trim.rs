//! Start-up runs code that a running server never needs again: initdb and migrations, the
//! config and argument parsers, the catalog loads. Its pages stay mapped in the process
//! (and, being mapped executable pages, the kernel keeps them over other cache) until memory
//! runs short. Once the server is up it hands them back: `release_code_pages` drops this
//! process's mappings of its executable's read-only segments. The bytes stay in the page
//! cache; code that runs again faults its pages back in (a minor fault, no disk read while
//! the cache holds them). The same happens after a burst of requests, once the server has
//! been idle for a minute: the first request after it faults its code back in. A uprobe
//! placed on oxibase's code (bpftrace, perf) lives in a private copy of its page, which a
//! release drops: place such probes after the server has been up for a minute.

#![allow(unsafe_code)]

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use crate::state::AppState;

/// How often the request count is looked at, and how many looks in a row must find it
/// unchanged before the code pages that requests used are released (a quiet minute).
const TURN: Duration = Duration::from_secs(15);
const QUIET_TURNS: u32 = 4;

/// Release the start-up code pages once the background tasks have had their first turn,
/// then again whenever requests were served and a quiet minute followed; ends at shutdown.
pub fn spawn(state: &AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let state = state.clone();
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(1);
        let mut when = When::default();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            wait = TURN;
            if when.tick(state.metrics.totals().0) {
                let bytes = tokio::task::spawn_blocking(release_code_pages)
                    .await
                    .unwrap_or(0);
                tracing::debug!(bytes, "code pages released");
            }
        }
    });
}

/// When to release, told the count of requests served at each turn.
#[derive(Default)]
struct When {
    started: bool,
    seen: u64,
    used: bool,
    quiet: u32,
}

impl When {
    fn tick(&mut self, served: u64) -> bool {
        if !self.started {
            // The first turn releases start-up's pages whatever was served meanwhile (a
            // health probe waiting for the start, say).
            (self.started, self.seen) = (true, served);
            return true;
        }
        if served != self.seen {
            (self.seen, self.used, self.quiet) = (served, true, 0);
            return false;
        }
        self.quiet = self.quiet.saturating_add(1);
        self.used && self.quiet >= QUIET_TURNS && std::mem::take(&mut self.used)
    }
}

/// A mapping of the executable that may be released: `[start, end)`.
#[derive(Debug, PartialEq)]
struct Span {
    start: usize,
    end: usize,
}

/// The read-only, never-written mappings of the executable (inode `ino`, path `path`) in a
/// `/proc/self/maps` text: the code (`r-xp`) and the read-only data mapped before it
/// (`r--p` at a lower file offset). Relocated read-only data (RELRO) is mapped after the
/// code and holds pages the loader wrote, so it is never included; nor is anything writable.
fn releasable(maps: &str, ino: u64, path: &str) -> Vec<Span> {
    let path: Vec<&str> = path.split_ascii_whitespace().collect();
    let mut exe = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_ascii_whitespace();
        let (Some(range), Some(perms), Some(offset), Some(_dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if inode.parse::<u64>().ok() != Some(ino) || !f.eq(path.iter().copied()) {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(offset)) = (
            usize::from_str_radix(a, 16),
            usize::from_str_radix(b, 16),
            u64::from_str_radix(offset, 16),
        ) else {
            continue;
        };
        exe.push((perms.to_string(), offset, Span { start, end }));
    }
    let Some(code_offset) = exe
        .iter()
        .filter(|(p, _, _)| p == "r-xp")
        .map(|(_, o, _)| *o)
        .min()
    else {
        return Vec::new();
    };
    exe.into_iter()
        .filter(|(p, o, _)| p == "r-xp" || (p == "r--p" && *o < code_offset))
        .map(|(_, _, s)| s)
        .collect()
}

/// Drop this process's page mappings of its own code and read-only data; returns the bytes
/// of address space advised (0 where nothing could be read or advised).
pub fn release_code_pages() -> usize {
    let (Ok(meta), Ok(path), Ok(maps)) = (
        std::fs::metadata("/proc/self/exe"),
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/maps"),
    ) else {
        return 0;
    };
    let mut advised = 0;
    for s in releasable(&maps, meta.ino(), &path.to_string_lossy()) {
        let len = s.end - s.start;
        // SAFETY: the span is a whole private mapping of the executable file that is
        // read-only and was never written: the linker refuses dynamic relocations in
        // read-only segments (`-z text`), and the relocated RELRO data is excluded above.
        // MADV_DONTNEED on such a mapping only removes page table entries; the next access
        // reads the same bytes from the file again. No Rust reference is invalidated.
        let r = unsafe {
            rustix::mm::madvise(
                s.start as *mut std::ffi::c_void,
                len,
                rustix::mm::Advice::LinuxDontNeed,
            )
        };
        if r.is_ok() {
            advised += len;
        }
    }
    advised
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0a0000000-55d0a1000000 r--p 00000000 fd:01 4242 /usr/bin/oxibase
55d0a1000000-55d0a3000000 r-xp 01000000 fd:01 4242 /usr/bin/oxibase
55d0a3000000-55d0a3100000 r--p 03000000 fd:01 4242 /usr/bin/oxibase
55d0a3100000-55d0a3200000 rw-p 03100000 fd:01 4242 /usr/bin/oxibase
55d0a3200000-55d0a3300000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000100000 r-xp 00001000 fd:01 777 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1000000000-7f1000100000 r-xp 00001000 08:02 4242 /opt/other
";

    #[test]
    fn only_the_code_and_the_read_only_data_before_it() {
        assert_eq!(
            releasable(MAPS, 4242, "/usr/bin/oxibase"),
            vec![
                Span {
                    start: 0x55d0a0000000,
                    end: 0x55d0a1000000
                },
                Span {
                    start: 0x55d0a1000000,
                    end: 0x55d0a3000000
                },
            ]
        );
        assert!(releasable(MAPS, 1, "/usr/bin/oxibase").is_empty());
        // Another file with the same inode number (on another device) is not ours.
        assert_eq!(releasable(MAPS, 4242, "/opt/other").len(), 1);
        assert!(releasable(MAPS, 4242, "/usr/bin/oxibase (deleted)").is_empty());
    }

    #[test]
    fn released_after_start_then_after_a_quiet_minute_that_followed_requests() {
        let mut w = When::default();
        assert!(w.tick(3), "start-up's pages go at the first turn");
        assert!(!w.tick(3), "nothing served since: nothing to release");
        assert!(
            !w.tick(10),
            "requests in this turn: wait for a quiet minute"
        );
        assert!(!w.tick(12), "still busy");
        for _ in 1..QUIET_TURNS {
            assert!(!w.tick(12), "not quiet long enough");
        }
        assert!(w.tick(12), "a quiet minute after requests releases");
        assert!(!w.tick(12), "once");
        assert!(!w.tick(12));
    }

    #[test]
    fn released_code_still_runs() {
        assert!(release_code_pages() > 0);
        // Code and constant data come back on use.
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 500_500);
        assert_eq!(
            format!("{:?}", Span { start: 1, end: 2 }),
            "Span { start: 1, end: 2 }"
        );
    }
}
