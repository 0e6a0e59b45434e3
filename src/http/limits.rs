//! The descriptor budget: raise the soft `RLIMIT_NOFILE` to the hard limit at start, and
//! derive the connection caps from it, so a flood of sockets meets our caps (which shed
//! load) before the process meets `EMFILE` (which stops `accept` for everyone).

use crate::config::Config;

/// Connections kept back for refusals in progress (a short 503 each) beyond the cap.
pub const SHED_SLOTS: usize = 64;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// The descriptor limits: (soft, hard), `None` meaning unlimited.
fn nofile() -> (Option<u64>, Option<u64>) {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    (current, maximum)
}

/// Raise the soft descriptor limit to the hard one (at most `fs.nr_open` when the hard one
/// is unlimited); returns the soft limit now in force. Harmless to call more than once.
pub fn raise_nofile_limit() -> u64 {
    let (soft, hard) = nofile();
    // An unlimited hard limit is not a valid soft value for descriptors.
    let target = hard.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    });
    let soft = soft.unwrap_or(u64::MAX);
    if target > soft
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(target),
                maximum: hard,
            },
        )
        .is_ok()
    {
        return target;
    }
    soft
}

/// The soft descriptor limit in force.
pub fn nofile_limit() -> u64 {
    nofile().0.unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub total: usize,
    pub per_ip: usize,
}

/// Descriptors kept for everything but client sockets: both request pools and the wire
/// pool, the sandboxes' pipes, refusals in progress, and a margin for listeners, logs,
/// the embedded PostgreSQL's pipes, realtime's listener and the odd file.
pub fn reserved(cfg: &Config) -> u64 {
    3 * cfg.db_pool_size as u64
        + 4 * cfg.functions.code_max_concurrent as u64
        + 2 * SHED_SLOTS as u64
        + 64
}

/// The caps in force: configured ones, else derived from `nofile`. Half of what is left
/// after the reserve goes to connections, since a request may hold a file too (an
/// upload's part, a download).
pub fn caps(cfg: &Config, nofile: u64) -> Caps {
    let derived = (nofile.saturating_sub(reserved(cfg)) / 2).max(16);
    let total = match cfg.http.max_connections {
        0 => usize::try_from(derived).unwrap_or(usize::MAX),
        n => n,
    };
    let per_ip = match cfg.http.max_connections_per_ip {
        0 => (total / 2).max(8),
        n => n,
    }
    .min(total);
    Caps { total, per_ip }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_leave_room_for_pools_and_honour_config() {
        let mut cfg = Config::default();
        // 16 per pool, 4 sandboxes: 48 + 16 + 128 + 64 = 256 kept back.
        assert_eq!(reserved(&cfg), 256);
        assert_eq!(
            caps(&cfg, 1024),
            Caps {
                total: 384,
                per_ip: 192
            }
        );
        // A tiny limit still serves a few connections.
        assert_eq!(caps(&cfg, 100).total, 16);
        assert_eq!(caps(&cfg, 100).per_ip, 8);
        cfg.http.max_connections = 50;
        cfg.http.max_connections_per_ip = 80;
        assert_eq!(
            caps(&cfg, 1024),
            Caps {
                total: 50,
                per_ip: 50
            }
        );
    }

    #[test]
    fn soft_limit_is_raised_to_the_hard_one() {
        let now = raise_nofile_limit();
        assert_eq!(now, nofile_limit());
        let (soft, hard) = nofile();
        if hard.is_some() {
            assert_eq!(soft, hard);
        }
    }
}
