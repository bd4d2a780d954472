//! Who holds a refresh lease: `host:pid:start`, the process that took it. A lease outlives a
//! process killed during its refresh (`kill -9`, a crash, a power cut) until it expires; at start
//! a process voids the leases of earlier runs it can tell are gone, so that a restart does not
//! keep that credential's callers waiting for the expiry. On a shared database the id carries
//! [`LIVENESS_MARK`]: the process holds a liveness lock while it lives, and other replicas take
//! over its leases once the lock is gone.

use crate::db::LIVENESS_MARK;

/// This process as the owner of refresh leases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LeaseOwner {
    host: String,
    pid: u32,
    /// Start time, in nanoseconds since the epoch: tells this run from an earlier one that had
    /// the same pid (a container's pid 1, say).
    started: u128,
    /// Holds a liveness lock in the database (see `db::liveness`).
    live: bool,
}

impl LeaseOwner {
    pub(super) fn this_process(live: bool) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Self {
            host: host.trim().to_owned(),
            pid: std::process::id(),
            started,
            live,
        }
    }

    /// The form a lease records.
    pub(super) fn id(&self) -> String {
        let mark = if self.live { LIVENESS_MARK } else { "" };
        format!("{}:{}:{:x}{mark}", self.host, self.pid, self.started)
    }

    /// Whether the lease owner `other` is a process that is gone: an earlier run of this one,
    /// or any other run on this host that no longer exists. With `sole_server` (SQLite, which one
    /// process serves at a time) every other owner is gone. Owners on other hosts are left to
    /// their leases' expiry.
    pub(super) fn is_gone(&self, other: &str, sole_server: bool) -> bool {
        if other == self.id() {
            return false;
        }
        if sole_server {
            return true;
        }
        let mut fields = other.rsplitn(3, ':');
        let (Some(_started), Some(pid), Some(host)) = (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            return false;
        };
        host == self.host && (pid == self.pid || !process_exists(pid))
    }
}

fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks whether the process exists and may be signalled.
    let sent = unsafe { libc::kill(pid, 0) };
    sent == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(host: &str, pid: u32, started: u128) -> LeaseOwner {
        LeaseOwner {
            host: host.into(),
            pid,
            started,
            live: false,
        }
    }

    #[test]
    fn an_earlier_run_or_a_vanished_process_of_this_host_is_gone() {
        let me = owner("node1", std::process::id(), 2);
        assert!(!me.is_gone(&me.id(), false), "not this run");
        assert!(!me.is_gone(&me.id(), true));
        let earlier_run = owner("node1", std::process::id(), 1);
        assert!(me.is_gone(&earlier_run.id(), false));
        // The parent of this test process exists.
        let alive = owner("node1", std::os::unix::process::parent_id(), 1);
        assert!(
            !me.is_gone(&alive.id(), false),
            "a live replica on this host"
        );
        let vanished = owner("node1", u32::MAX / 2, 1);
        assert!(me.is_gone(&vanished.id(), false));
        let elsewhere = owner("node2", u32::MAX / 2, 1);
        assert!(!me.is_gone(&elsewhere.id(), false), "left to its expiry");
        assert!(me.is_gone(&elsewhere.id(), true), "SQLite: one server only");
        assert!(!me.is_gone("not an owner", false));
        let live_vanished = LeaseOwner {
            live: true,
            ..owner("node1", u32::MAX / 2, 1)
        };
        assert!(live_vanished.id().ends_with(LIVENESS_MARK));
        assert!(me.is_gone(&live_vanished.id(), false));
    }
}
