//! Processes identified safely: a pid plus its start time (from
//! `/proc/<pid>/stat`), so a reused pid is never mistaken for ours and never
//! signalled.

use std::fs;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::retry::Backoff;

/// A process we started: pid and kernel start time (clock ticks since boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: i32,
    pub start_time: u64,
}

/// What `/proc/<pid>/stat` says.
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub start_time: u64,
}

/// `/proc/<pid>/stat` is parsed by hand: two fields of one line, for which a
/// `/proc` crate would be a large dependency.
pub fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parens: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: field 3 is state (index 0), field 4 ppid (index 1),
    // field 22 is starttime (index 19).
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

impl ProcId {
    /// Identifies a live process.
    pub fn of(pid: i32) -> Option<ProcId> {
        stat(pid).map(|s| ProcId { pid, start_time: s.start_time })
    }

    /// Whether this exact process is still alive (not a zombie, not a
    /// different process that reused the pid).
    pub fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|s| s.start_time == self.start_time && s.state != 'Z' && s.state != 'X')
    }

    /// Sends `signal` only if this exact process is alive.
    pub fn signal(&self, signal: Signal) -> bool {
        self.alive() && nix::sys::signal::kill(Pid::from_raw(self.pid), signal).is_ok()
    }

    /// Waits until the process is gone, up to `timeout`.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        Backoff::new(Duration::from_millis(5), Duration::from_millis(100))
            .for_at_most(timeout)
            .poll(|| (!self.alive()).then_some(()))
            .is_some()
    }

    /// Asks the process to stop with `signal`; after `timeout` kills it.
    /// Returns true if it had to be killed.
    pub fn stop(&self, signal: Signal, timeout: Duration) -> bool {
        if !self.signal(signal) {
            return false;
        }
        if self.wait_gone(timeout) {
            return false;
        }
        self.signal(Signal::SIGKILL);
        self.wait_gone(Duration::from_secs(10));
        true
    }
}

/// This boot's id: pids and start times mean nothing across a reboot.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// What a bounded command did.
pub struct Ran<T> {
    pub status: std::process::ExitStatus,
    /// At most 16 MiB (empty when stdout went to a file).
    pub stdout: String,
    /// At most 1 MiB, trimmed.
    pub stderr: String,
    /// What the stdin feeder returned.
    pub fed: Option<T>,
}

/// Runs `cmd` under a deadline: stdin written by `feed` on a thread of its
/// own (so a reader that stalls cannot hold us past the deadline), stdout
/// to `to` or captured, stderr captured, both capped. Past the deadline the
/// command is killed and `Ok(None)` returned.
pub fn run_bounded<T: Send + 'static>(
    mut cmd: std::process::Command,
    feed: Option<impl FnOnce(std::process::ChildStdin) -> T + Send + 'static>,
    to: Option<std::fs::File>,
    deadline: Duration,
) -> std::io::Result<Option<Ran<T>>> {
    use std::io::Read;
    use std::process::Stdio;
    let to_file = to.is_some();
    let mut child = cmd
        .stdin(if feed.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(to.map_or_else(Stdio::piped, Stdio::from))
        .stderr(Stdio::piped())
        .spawn()?;
    let feeder = feed.map(|f| {
        let stdin = child.stdin.take().expect("piped");
        std::thread::spawn(move || f(stdin))
    });
    // Keeps `cap` bytes and drains the rest, so a chatty command is never
    // blocked on a full pipe.
    fn capture(r: Option<impl Read + Send + 'static>, cap: u64) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = (&mut r).take(cap).read_to_end(&mut v);
                let _ = std::io::copy(&mut r, &mut std::io::sink());
            }
            v
        })
    }
    let out = capture(child.stdout.take(), 16 << 20);
    let err = capture(child.stderr.take(), 1 << 20);
    let Some(status) = wait_for(&mut child, deadline) else {
        let _ = child.kill();
        let _ = child.wait();
        // Not joined: a grandchild may still hold the pipes (the threads end
        // when it does); the deadline is ours to keep.
        drop(feeder);
        return Ok(None);
    };
    let fed = feeder.and_then(|f| f.join().ok());
    let stdout = if to_file { String::new() } else { String::from_utf8_lossy(&out.join().unwrap_or_default()).into() };
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).trim().to_string();
    Ok(Some(Ran { status, stdout, stderr, fed }))
}

/// Waits for `child` to end, for at most `deadline`: woken the moment it
/// exits through its pidfd (Linux 5.3 and later; else polled every 10 ms).
fn wait_for(child: &mut std::process::Child, deadline: Duration) -> Option<std::process::ExitStatus> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let until = std::time::Instant::now() + deadline;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // (or -1); the child is not reaped before this, so the pid is its own.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    if raw < 0 {
        return crate::retry::Backoff::fixed(Duration::from_millis(10))
            .for_at_most(deadline)
            .poll(|| child.try_wait().ok().flatten());
    }
    // SAFETY: a descriptor just returned to us, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd; readable once the process has exited.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_self_and_rejects_reused_pid() {
        let me = ProcId::of(std::process::id() as i32).unwrap();
        assert!(me.alive());
        let impostor = ProcId { start_time: me.start_time + 1, ..me };
        assert!(!impostor.alive());
        assert!(!impostor.signal(Signal::SIGCONT), "a pid with another start time is never signalled");
    }

    #[test]
    fn bounded_runs_cap_output_feed_stdin_and_keep_their_deadline() {
        let sh = |script: &str| {
            let mut c = std::process::Command::new("sh");
            c.args(["-c", script]);
            c
        };
        // More than the cap: kept to 16 MiB, the rest drained, so it ends.
        let ran =
            run_bounded(sh("head -c 20000000 /dev/zero; echo done >&2"), None::<fn(_)>, None, Duration::from_secs(20))
                .unwrap()
                .expect("finished");
        assert!(ran.status.success());
        assert_eq!((ran.stdout.len(), ran.stderr.as_str()), (16 << 20, "done"));
        // stdin from the feeder; its result comes back.
        let feed = |mut stdin: std::process::ChildStdin| std::io::Write::write_all(&mut stdin, b"abc").is_ok();
        let ran = run_bounded(sh("cat"), Some(feed), None, Duration::from_secs(20)).unwrap().expect("finished");
        assert_eq!((ran.stdout.as_str(), ran.fed), ("abc", Some(true)));
        // A command that never reads its stdin nor ends is killed at the deadline.
        let t = std::time::Instant::now();
        let flood = |mut stdin: std::process::ChildStdin| std::io::copy(&mut std::io::repeat(0), &mut stdin).is_ok();
        assert!(run_bounded(sh("sleep 30"), Some(flood), None, Duration::from_millis(300)).unwrap().is_none());
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn stops_a_child_and_sees_it_gone() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let id = ProcId::of(child.id() as i32).unwrap();
        // Reap in the background so the zombie disappears like it would under init.
        let waiter = std::thread::spawn(move || child.wait());
        assert!(!id.stop(Signal::SIGTERM, Duration::from_secs(5)));
        waiter.join().unwrap().unwrap();
        assert!(!id.alive());
    }
}
