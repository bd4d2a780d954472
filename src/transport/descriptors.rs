//! File descriptors: every connection holds one, so the open-file limit bounds the connections a
//! process can hold. Distributions start services with a soft limit of 1024 (the `select()`
//! ceiling) and a much higher hard limit; nothing in this process uses `select()` (tokio uses
//! epoll, libpq and MariaDB's client poll()), so the soft limit can go up to the hard one, as
//! systemd recommends. Linux only (64-bit `rlim_t`).

use std::io;

/// Where the kernel caps `RLIMIT_NOFILE` (`fs.nr_open`).
const NR_OPEN: &str = "/proc/sys/fs/nr_open";
/// The kernel's default `fs.nr_open`, for an unlimited hard limit when `NR_OPEN` is unreadable.
const DEFAULT_NR_OPEN: u64 = 1 << 20;

/// What [`raise_open_file_limit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit (`u64::MAX` for unlimited).
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; an unlimited hard limit counts as the
/// kernel's `fs.nr_open`, above which the kernel refuses. A soft limit already there or higher
/// is left alone. Call it before any thread that might call `select()` starts.
pub fn raise_open_file_limit() -> io::Result<OpenFileLimit> {
    let mut limit = get()?;
    let (before, hard) = (limit.rlim_cur, limit.rlim_max);
    let target = if limit.rlim_max == libc::RLIM_INFINITY {
        nr_open()
    } else {
        hard
    };
    if before < target {
        limit.rlim_cur = target;
        // SAFETY: `limit` is a valid rlimit for the duration of the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(OpenFileLimit {
        before,
        soft: get()?.rlim_cur,
        hard,
    })
}

/// The soft `RLIMIT_NOFILE`: the process cannot open a descriptor numbered this or higher.
pub fn soft_limit() -> io::Result<u64> {
    Ok(get()?.rlim_cur)
}

fn get() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

fn nr_open() -> u64 {
    std::fs::read_to_string(NR_OPEN)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(DEFAULT_NR_OPEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_leaves_the_soft_limit_at_the_hard_one() {
        let raised = raise_open_file_limit().unwrap();
        let ceiling = if raised.hard == libc::RLIM_INFINITY {
            nr_open()
        } else {
            raised.hard
        };
        assert_eq!(raised.soft, ceiling.max(raised.before), "{raised:?}");
        assert_eq!(soft_limit().unwrap(), raised.soft);
        // Again: nothing left to raise.
        let again = raise_open_file_limit().unwrap();
        assert_eq!((again.before, again.soft), (raised.soft, raised.soft));
    }
}
