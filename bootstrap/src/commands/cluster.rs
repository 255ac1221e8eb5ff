//! start, stop, delete, status, profile list, kubectl, logs.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kubestrap_manifest::Target;
use serde_json::json;

use crate::cli::{DeleteArgs, StartArgs};
use crate::driver::StopOutcome;
use crate::exit::{Code, coded};
use crate::fetch;
use crate::home::Home;
use crate::kubeconfig;
use crate::lifecycle::{self, StartOptions, Steps};
use crate::profile::{self, Profile};
use crate::store;
use crate::ui::{Ui, human_duration};

impl Steps for Ui {
    fn step(&self, name: &str, detail: &str, elapsed: Duration) {
        Ui::step(self, name, detail, elapsed)
    }
    fn warn(&self, msg: &str) {
        Ui::warn(self, msg)
    }
    fn fetch_reporter(&self) -> &dyn fetch::Reporter {
        self
    }
    fn ui(&self) -> &Ui {
        self
    }
}

pub fn start(a: StartArgs, home: &Home, ui: &Ui) -> Result<Code> {
    let t = Instant::now();
    let o = StartOptions {
        profile: a.profile.profile,
        driver: a.driver,
        manifest: a.source.manifest,
        allow_expired: a.source.allow_expired,
        fetch: super::fetch_options(&a.net),
        port: a.port,
        wait_timeout: a.wait_timeout,
        keep_context: a.keep_context,
        no_wait: a.no_wait,
        cert_validity: time::Duration::days(a.cert_days.into()),
    };
    let s = lifecycle::start(home, &o, ui)?;
    ui.json(json!({"event": "done", "profile": s.profile, "context": s.context, "server": s.server, "kubeconfig": s.kubeconfig,
        "pid": s.pid, "kubernetes": s.kubernetes, "manifest": s.manifest, "already_running": s.already_running, "created": s.created,
        "elapsed_ms": t.elapsed().as_millis() as u64}));
    let what = if s.already_running {
        "was already running"
    } else if s.created {
        "is up"
    } else {
        "is up again"
    };
    ui.line(&format!(
        "\nCluster {:?} {what} ({} at {}) in {}.",
        s.profile,
        s.kubernetes,
        s.server,
        human_duration(t.elapsed())
    ));
    let ctx = if o.keep_context { format!(" --context {}", s.context) } else { String::new() };
    ui.line(&format!("Try:  kubectl{ctx} get ns      (or: kubestrap kubectl -p {} -- get ns)", s.profile));
    Ok(Code::Ok)
}

pub fn stop(name: String, home: &Home, ui: &Ui) -> Result<Code> {
    let t = Instant::now();
    let outcome = lifecycle::stop(home, &name, true, ui)?;
    let what = match outcome {
        StopOutcome::Stopped => "stopped",
        StopOutcome::Killed => "killed after the stop timeout",
        StopOutcome::WasNotRunning => "was not running",
    };
    ui.json(json!({"profile": name, "result": what}));
    ui.step(&format!("profile {name:?} {what}"), "state kept", t.elapsed());
    Ok(Code::Ok)
}

pub fn delete(a: DeleteArgs, home: &Home, ui: &Ui) -> Result<Code> {
    let t = Instant::now();
    let names = if a.all {
        profile::names(home)?
    } else {
        let p = Profile::new(home, &a.profile.profile)?;
        match (p.dir.exists(), a.purge) {
            (true, _) => vec![p.name],
            // Only the cache to purge.
            (false, true) => Vec::new(),
            (false, false) => {
                return Err(coded(
                    Code::NoProfile,
                    format!("profile {:?} does not exist (see `kubestrap profile list`)", p.name),
                ));
            }
        }
    };
    if a.purge {
        // The cache holds what the other clusters run: purge only with them.
        let others: Vec<String> = profile::names(home)?.into_iter().filter(|n| !names.contains(n)).collect();
        if !others.is_empty() {
            return Err(coded(
                Code::Usage,
                format!(
                    "--purge removes the download cache, which profile(s) {} still use; delete them too (`kubestrap delete --all --purge`), or leave out --purge",
                    others.join(", ")
                ),
            ));
        }
    }
    let deleted = lifecycle::delete(home, &names, a.purge, true, ui)?;
    for name in &deleted {
        ui.json(json!({"deleted": name}));
        ui.step(&format!("deleted profile {name:?}"), "cluster state and kubeconfig entries removed", t.elapsed());
    }
    if a.purge {
        ui.json(json!({"purged": home.root().join("blobs")}));
        ui.step("purged the download cache", &home.root().display().to_string(), t.elapsed());
    }
    Ok(Code::Ok)
}

/// Returns the status bitmask (1 host down, 2 localkube down, 4 apiserver not ready) as the exit code.
pub fn status(name: String, home: &Home, ui: &Ui) -> Result<u8> {
    let st = lifecycle::status(home, &name)?;
    ui.json(serde_json::to_value(&st)?);
    ui.line(&st.name);
    ui.line(&format!("driver: {}", st.driver));
    ui.line(&format!("host: {}", st.host));
    ui.line(&format!("localkube: {}{}", st.localkube, st.pid.map(|p| format!(" (pid {p})")).unwrap_or_default()));
    ui.line(&format!("apiserver: {}", st.apiserver));
    ui.line(&format!("kubeconfig: {}", st.kubeconfig));
    ui.line(&format!("kubernetes: {}", st.kubernetes));
    ui.line(&format!("manifest: {}", st.manifest));
    ui.line(&format!("server: {}", st.server));
    if let Some(c) = &st.crash {
        ui.line(&format!("\nlocalkube crashed: {c}. Last lines of its log:"));
        for l in &st.log_tail {
            ui.line(&format!("  | {l}"));
        }
        ui.line(&format!("Run `kubestrap start -p {name}` to start it again."));
    }
    if !ui.is_json() {
        for w in &st.warnings {
            ui.warn(w);
        }
    }
    Ok(st.exit_code)
}

pub fn profile_list(home: &Home, ui: &Ui) -> Result<Code> {
    let names = profile::names(home)?;
    if names.is_empty() {
        ui.line("no profiles; create one with `kubestrap start`");
    } else {
        ui.line(&format!(
            "{:<20} {:<8} {:<10} {:<10} {:<26} {}",
            "PROFILE", "DRIVER", "LOCALKUBE", "APISERVER", "SERVER", "KUBERNETES"
        ));
    }
    for n in names {
        let st = match lifecycle::status(home, &n) {
            Ok(st) => st,
            // One damaged profile does not hide the others.
            Err(e) => {
                ui.json(json!({"name": n, "error": format!("{e:#}")}));
                ui.line(&format!("{n:<20} damaged: {e:#}"));
                continue;
            }
        };
        ui.json(serde_json::to_value(&st)?);
        ui.line(&format!(
            "{:<20} {:<8} {:<10} {:<10} {:<26} {}",
            st.name,
            st.driver,
            st.localkube,
            st.apiserver.split(' ').next().unwrap_or(""),
            st.server,
            st.kubernetes
        ));
    }
    Ok(Code::Ok)
}

/// Runs the profile's pinned kubectl (verified, from the store) with its context.
pub fn kubectl(name: String, args: Vec<String>, home: &Home) -> Result<Code> {
    let p = Profile::new(home, &name)?;
    let cfg = p.load()?;
    let m = crate::source::load_stored(home, &cfg.manifest, true, true)?.manifest;
    let need = m
        .needs(&Target::host(), cfg.driver)
        .map_err(|e| coded(Code::Usage, e))?
        .into_iter()
        .find(|n| n.component == "kubectl")
        .context("the manifest has no kubectl for this machine")?;
    if !store::has_blob(home, &need.artifact.sha256, need.artifact.size.get()) {
        return Err(coded(
            Code::OfflineMissing,
            format!("kubectl is not in the cache; run `kubestrap start -p {name}` (or `kubestrap fetch`) first"),
        ));
    }
    let dir = {
        let _store = home.store_lock(false, || {})?;
        store::ensure_component(home, &need.artifact)?
    };
    let bin = dir.join(&need.artifact.bin);
    let mut cmd = std::process::Command::new(&bin);
    if !args.iter().any(|a| a == "--context" || a.starts_with("--context=")) {
        cmd.arg(format!("--context={}", kubeconfig::context_name(&name)));
    }
    cmd.args(&args);
    let err = cmd.exec();
    Err(anyhow::Error::new(err).context(format!("cannot run {}", bin.display())))
}

pub fn logs(name: String, follow: bool, lines: usize, home: &Home) -> Result<Code> {
    let p = Profile::new(home, &name)?;
    p.load()?;
    let log = p.log_file();
    let mut out = std::io::stdout().lock();
    for l in crate::driver::native::tail(&log, lines) {
        if writeln!(out, "{l}").is_err() {
            return Ok(Code::Ok); // broken pipe (e.g. `| head`) is a normal end
        }
    }
    if !follow {
        return Ok(Code::Ok);
    }
    let mut pos = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    // The last bytes shown, to find our place in `localkube.log.1` when the
    // monitor cuts the log back between two polls.
    let mut shown = read_range(&log, pos.saturating_sub(FOLLOW_WINDOW), pos).unwrap_or_default();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let len = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut buf = Vec::new();
        if len < pos {
            // Cut back (size cap): what came after our place moved to `.1`.
            let mut rotated = log.as_os_str().to_owned();
            rotated.push(".1");
            let old = std::fs::read(&rotated).unwrap_or_default();
            buf.extend_from_slice(missed_before_cut(&shown, &old));
            pos = 0;
        }
        if len > pos {
            buf.extend(read_range(&log, pos, len)?);
            pos = len;
        }
        if buf.is_empty() {
            continue;
        }
        if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
            return Ok(Code::Ok);
        }
        shown.extend_from_slice(&buf);
        let excess = shown.len().saturating_sub(FOLLOW_WINDOW as usize);
        shown.drain(..excess);
    }
}

const FOLLOW_WINDOW: u64 = 4096;

fn read_range(path: &std::path::Path, from: u64, to: u64) -> Result<Vec<u8>> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(to.saturating_sub(from)).read_to_end(&mut buf)?;
    Ok(buf)
}

/// What of the rotated part `rotated` comes after the bytes already shown
/// (`shown`, the newest of them last); all of it if they are not found.
/// The start of `shown` places it: its end may be missing from `rotated`
/// (written just before the cut, after the copy was taken).
fn missed_before_cut<'a>(shown: &[u8], rotated: &'a [u8]) -> &'a [u8] {
    if shown.is_empty() {
        return rotated;
    }
    let anchor = &shown[..(shown.len() / 2).clamp(1, 512)];
    match memchr::memmem::rfind(rotated, anchor) {
        Some(at) => &rotated[(at + shown.len()).min(rotated.len())..],
        None => rotated,
    }
}

#[cfg(test)]
mod tests {
    use super::missed_before_cut;

    #[test]
    fn follow_finds_its_place_in_the_rotated_log() {
        let rotated = b"line 1\nline 2\nline 3\nline 4\n";
        assert_eq!(missed_before_cut(b"line 1\nline 2\n", rotated), b"line 3\nline 4\n");
        assert_eq!(missed_before_cut(b"line 3\nline 4\n", rotated), b"");
        // Fell behind further than the rotated part reaches: all of it.
        assert_eq!(missed_before_cut(b"older line 0\n", rotated), rotated);
        assert_eq!(missed_before_cut(b"", rotated), rotated);
        // Shown bytes past the copy's end (written just before the cut).
        assert_eq!(missed_before_cut(b"line 3\nline 4\nline 5\n", rotated), b"");
    }
}
