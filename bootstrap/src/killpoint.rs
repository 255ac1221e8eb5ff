//! TEST ONLY, and only in debug builds: kill points for the kill -9 matrix.
//! With `KUBESTRAP_TEST_KILL_AT=<point>@<microseconds>`, reaching `<point>`
//! starts a timer that sends this process SIGKILL after that long, while
//! the step goes on — so a kill lands inside each durable step on purpose,
//! not only where a random moment happens to fall. A release build has no
//! kill points: [`reached`] is empty there and the variable is ignored.

/// Marks the start of step `point` (see the module docs).
#[cfg(debug_assertions)]
pub fn reached(point: &str) {
    let Ok(want) = std::env::var("KUBESTRAP_TEST_KILL_AT") else { return };
    let Some((at, us)) = want.split_once('@') else { return };
    if at != point {
        return;
    }
    let delay = std::time::Duration::from_micros(us.parse().unwrap_or(0));
    if delay.is_zero() {
        // SAFETY: kill(2) on this process; SIGKILL cannot be caught.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        // SAFETY: as above.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    });
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn reached(_point: &str) {}
