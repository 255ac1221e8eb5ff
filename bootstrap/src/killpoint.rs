//! TEST ONLY, and only in debug builds: kill points for the kill -9 matrix.
//! With `KUBESTRAP_TEST_KILL_AT=<point>@<microseconds>`, reaching `<point>`
//! starts a timer that sends this process SIGKILL after that long, while
//! the step goes on — so a kill lands inside each durable step on purpose,
//! not only where a random moment happens to fall. With
//! `KUBESTRAP_TEST_KILL_LOG=<file>` the kill first appends the points
//! reached since the armed one (`launch,ready`: the kill landed in
//! `ready`), so the matrix counts a kill for the step it really landed in.
//! A release build has no kill points: [`reached`] is empty there and the
//! variables are ignored.

/// What the CLI read of the two variables, once.
static ARMED: std::sync::OnceLock<(String, Option<std::ffi::OsString>)> = std::sync::OnceLock::new();

/// Arms the kill point the CLI read (`<point>@<microseconds>`, and the log).
pub fn arm(at: String, log: Option<std::ffi::OsString>) {
    let _ = ARMED.set((at, log));
}

/// Marks the start of step `point` (see the module docs).
#[cfg(debug_assertions)]
pub fn reached(point: &str) {
    use std::sync::Mutex;
    /// The points reached since the armed one (empty: not armed yet).
    static TRAIL: Mutex<Vec<String>> = Mutex::new(Vec::new());

    let Some((want, log)) = ARMED.get() else { return };
    let Some((at, us)) = want.split_once('@') else { return };
    let mut trail = TRAIL.lock().unwrap_or_else(|e| e.into_inner());
    if !trail.is_empty() {
        trail.push(point.to_string());
        return;
    }
    if at != point {
        return;
    }
    trail.push(point.to_string());
    drop(trail);
    let kill = move || {
        if let Some(log) = log {
            let line = TRAIL.lock().unwrap_or_else(|e| e.into_inner()).join(",");
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(log).ok();
            if let Some(f) = f.as_mut() {
                let _ = std::io::Write::write_all(f, format!("{line}\n").as_bytes());
            }
        }
        // SAFETY: kill(2) on this process; SIGKILL cannot be caught.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    };
    let delay = std::time::Duration::from_micros(us.parse().unwrap_or(0));
    if delay.is_zero() {
        kill();
    }
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        kill();
    });
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn reached(_point: &str) {}
