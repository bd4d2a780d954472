//! The server seen from /proc (resident memory, open descriptors, descriptor limit), sampled on
//! a thread of its own; this process's descriptor limit; the attackers' source addresses.

use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::outcome::{Resources, Sample};

/// `VmRSS` of a `/proc/<pid>/status` text, in kB.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
}

/// The soft "Max open files" of a `/proc/<pid>/limits` text; `None` if unlimited or absent.
pub fn parse_max_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}

fn proc_path(pid: u32, what: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{what}"))
}

pub fn rss_kb(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(proc_path(pid, "status"))?;
    parse_vm_rss(&status).ok_or_else(|| io::Error::other("no VmRSS line (a zombie?)"))
}

pub fn fd_count(pid: u32) -> io::Result<u64> {
    Ok(std::fs::read_dir(proc_path(pid, "fd"))?.count() as u64)
}

pub fn fd_limit(pid: u32) -> io::Result<Option<u64>> {
    Ok(parse_max_open_files(&std::fs::read_to_string(proc_path(
        pid, "limits",
    ))?))
}

pub fn resources(pid: u32) -> io::Result<Resources> {
    Ok(Resources {
        rss_kb: rss_kb(pid)?,
        fds: fd_count(pid)?,
    })
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    #[cfg_attr(
        target_pointer_width = "64",
        expect(clippy::unnecessary_cast, reason = "rlim_t is not u64 on every target")
    )]
    Ok(limit.rlim_cur as u64)
}

/// Parses `A.B.C.D` or `A.B.C.D-E.F.G.H` (inclusive).
pub fn parse_sources(text: &str) -> Result<Vec<Ipv4Addr>, String> {
    let (first, last) = text.split_once('-').unwrap_or((text, text));
    let parse = |s: &str| {
        s.trim()
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("{s:?} is not an IPv4 address (expected A.B.C.D[-E.F.G.H])"))
    };
    let (first, last) = (u32::from(parse(first)?), u32::from(parse(last)?));
    if first > last {
        return Err(format!("source range {text:?} ends before it starts"));
    }
    if last - first >= 1 << 16 {
        return Err(format!(
            "source range {text:?} is larger than 65536 addresses"
        ));
    }
    Ok((first..=last).map(Ipv4Addr::from).collect())
}

struct State {
    phase: &'static str,
    samples: Vec<Sample>,
    gone: Option<String>,
}

/// Samples the server's RSS and descriptor count every `every`, each sample labelled with the
/// phase current when it was taken.
pub struct Sampler {
    pid: u32,
    started: Instant,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(pid: u32, started: Instant, every: Duration) -> Sampler {
        let state = Arc::new(Mutex::new(State {
            phase: "start",
            samples: Vec::new(),
            gone: None,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("flood-sampler".into())
                .spawn(move || {
                    while !stop.load(Relaxed) {
                        let sample = resources(pid);
                        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                        match sample {
                            Ok(r) => {
                                let phase = s.phase.to_owned();
                                s.samples.push(Sample {
                                    t: started.elapsed().as_secs_f64(),
                                    phase,
                                    rss_kb: r.rss_kb,
                                    fds: r.fds,
                                })
                            }
                            Err(e) => {
                                s.gone.get_or_insert_with(|| {
                                    format!(
                                        "/proc/{pid} unreadable {:.1} s into the run: {e}",
                                        started.elapsed().as_secs_f64()
                                    )
                                });
                            }
                        }
                        drop(s);
                        std::thread::sleep(every);
                    }
                })
                .expect("spawn the sampler thread")
        };
        Sampler {
            pid,
            started,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_phase(&self, phase: &'static str) {
        self.lock().phase = phase;
    }

    /// Maxima over the samples of these phases.
    pub fn max_in(&self, phases: &[&str]) -> Resources {
        self.lock()
            .samples
            .iter()
            .filter(|s| phases.contains(&s.phase.as_str()))
            .fold(Resources::default(), |m, s| Resources {
                rss_kb: m.rss_kb.max(s.rss_kb),
                fds: m.fds.max(s.fds),
            })
    }

    /// Why the server is gone, once it is.
    pub fn gone(&self) -> Option<String> {
        self.lock().gone.clone()
    }

    /// Reads the figures now (not waiting for the next sample); records it as a sample too.
    pub fn now(&self) -> io::Result<Resources> {
        let r = resources(self.pid);
        let mut s = self.lock();
        match &r {
            Ok(r) => {
                let phase = s.phase.to_owned();
                s.samples.push(Sample {
                    t: self.started.elapsed().as_secs_f64(),
                    phase,
                    rss_kb: r.rss_kb,
                    fds: r.fds,
                });
            }
            Err(e) => {
                s.gone
                    .get_or_insert_with(|| format!("/proc/{} unreadable: {e}", self.pid));
            }
        }
        r
    }

    pub fn finish(mut self) -> (Vec<Sample>, Option<String>) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let mut s = self.lock();
        let mut samples = std::mem::take(&mut s.samples);
        samples.sort_by(|a, b| a.t.total_cmp(&b.t));
        (samples, s.gone.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_texts() {
        let status =
            "Name:\ttokenmanager\nVmPeak:\t  900 kB\nVmRSS:\t   45612 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_vm_rss(status), Some(45612));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63704                63704                processes \n\
                      Max open files            20000                524288               files     \n";
        assert_eq!(parse_max_open_files(limits), Some(20000));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_open_files(unlimited), None);
    }

    #[test]
    fn this_process_is_readable() {
        let me = std::process::id();
        assert!(rss_kb(me).unwrap() > 0);
        assert!(fd_count(me).unwrap() >= 3);
        assert!(fd_limit(me).is_ok());
        let raised = raise_nofile_limit().unwrap();
        assert_eq!(fd_limit(me).unwrap(), Some(raised));
    }

    #[test]
    fn source_ranges() {
        let all = parse_sources("127.0.0.2-127.0.0.254").unwrap();
        assert_eq!(all.len(), 253);
        assert_eq!(all[0], Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(all[252], Ipv4Addr::new(127, 0, 0, 254));
        assert_eq!(
            parse_sources("127.0.0.255-127.0.1.1").unwrap(),
            [
                Ipv4Addr::new(127, 0, 0, 255),
                Ipv4Addr::new(127, 0, 1, 0),
                Ipv4Addr::new(127, 0, 1, 1)
            ]
        );
        assert_eq!(parse_sources(" 127.0.0.9 ").unwrap().len(), 1);
        assert!(parse_sources("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_sources("localhost").is_err());
        assert!(parse_sources("10.0.0.0-10.255.255.255").is_err());
    }
}
