//! Rendering: progress bars on a TTY, plain lines otherwise, one JSON object
//! per event with `-o json`. Logic reports typed events through
//! [`Progress`]; only this module (and the commands) print.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::progress::{Download, Event, Progress, Step};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

pub struct Ui {
    pub output: Output,
    bars: Option<MultiProgress>,
    /// Colour on stdout (result lines) and on stderr (warnings), each
    /// decided by its own stream: `start > file` from a terminal writes
    /// plain text into the file.
    color_out: bool,
    color_err: bool,
    active: Mutex<HashMap<String, ProgressBar>>,
    /// The "total" bar and each artifact's bytes so far.
    total: Mutex<Option<(ProgressBar, HashMap<String, u64>)>>,
}

/// Whether what kubestrap writes to stderr may carry colour: only on a
/// terminal, and never with `NO_COLOR` set (a log file, a pipe or a CI log
/// gets plain text).
pub fn stderr_color() -> bool {
    color_on(&std::io::stderr())
}

/// The same for stdout.
pub fn stdout_color() -> bool {
    color_on(&std::io::stdout())
}

fn color_on(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

impl Ui {
    pub fn new(output: Output) -> Ui {
        let tty = std::io::stderr().is_terminal();
        Ui {
            output,
            bars: (tty && output == Output::Text)
                .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            color_out: stdout_color(),
            color_err: stderr_color(),
            active: Mutex::new(HashMap::new()),
            total: Mutex::new(None),
        }
    }

    pub fn is_json(&self) -> bool {
        self.output == Output::Json
    }

    /// One line of human output on stdout (text mode only).
    pub fn line(&self, s: &str) {
        if self.output == Output::Text {
            self.println(s);
        }
    }

    fn println(&self, s: &str) {
        match &self.bars {
            Some(mp) => mp.suspend(|| println!("{s}")),
            None => println!("{s}"),
        }
    }

    /// One JSON object per line on stdout (json mode only).
    pub fn json(&self, v: serde_json::Value) {
        if self.output == Output::Json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{v}");
        }
    }

    /// A warning: on stderr in both modes (scripts read stdout), and a JSON
    /// `warning` event on stdout with `-o json`.
    pub fn warn(&self, s: &str) {
        self.json(json!({"event": "warning", "message": s}));
        let prefix = if self.color_err { "\x1b[33mwarning:\x1b[0m" } else { "warning:" };
        match &self.bars {
            Some(mp) => mp.suspend(|| eprintln!("{prefix} {s}")),
            None => eprintln!("{prefix} {s}"),
        }
    }

    /// A finished step: `✓ name: detail (1.2s)`, or a JSON step event with
    /// the step's own fields.
    pub fn step_done(&self, step: &Step, elapsed: Duration) {
        if self.is_json() {
            let mut v = serde_json::to_value(step).expect("steps serialize");
            v["event"] = json!("step");
            v["status"] = json!("ok");
            v["detail"] = json!(step.detail());
            v["elapsed_ms"] = json!(elapsed.as_millis() as u64);
            self.json(v);
        } else {
            self.result(step.name(), &step.detail(), elapsed);
        }
    }

    /// A command's own result line, shaped like a step: `✓ name: detail (1.2s)`.
    pub fn result(&self, name: &str, detail: &str, elapsed: Duration) {
        if self.is_json() {
            self.json(
                json!({"event": "result", "step": name, "status": "ok", "detail": detail, "elapsed_ms": elapsed.as_millis() as u64}),
            );
        } else {
            let tick = if self.color_out { "\x1b[32m✓\x1b[0m" } else { "✓" };
            let detail = if detail.is_empty() { String::new() } else { format!(": {detail}") };
            self.println(&format!("{tick} {name}{detail} ({})", human_duration(elapsed)));
        }
    }
}

pub fn human_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) { format!("{}ms", d.as_millis()) } else { format!("{:.1}s", d.as_secs_f64()) }
}

pub use crate::progress::human_bytes;

impl Progress for Ui {
    fn report(&self, e: Event<'_>) {
        match e {
            Event::Step { step, elapsed } => self.step_done(&step, elapsed),
            Event::Warning(msg) => self.warn(&msg),
            Event::Download(d) => self.download(d),
        }
    }
}

impl Ui {
    /// A download event, on a bar or as a line. Long on purpose: one match
    /// over every download event, each arm the renderer's one reaction.
    fn download(&self, e: Download<'_>) {
        if self.is_json() {
            let v = match e {
                Download::Start { label, size, cached } => {
                    json!({"event": "download-start", "artifact": label, "size": size, "cached": cached})
                }
                Download::Progress { .. } => return,
                Download::Plan { count, bytes } => {
                    json!({"event": "download-plan", "artifacts": count, "bytes": bytes})
                }
                Download::Retry { label, source, attempt, delay, error } => {
                    json!({"event": "download-retry", "artifact": label, "url": source, "attempt": attempt, "delay_ms": delay.as_millis() as u64, "error": error})
                }
                Download::Fallback { label, source, error } => {
                    json!({"event": "download-fallback", "artifact": label, "url": source, "error": error})
                }
                Download::Done { label, downloaded, elapsed } => {
                    json!({"event": "download-done", "artifact": label, "downloaded": downloaded, "elapsed_ms": elapsed.as_millis() as u64})
                }
            };
            self.json(v);
            return;
        }
        match (&self.bars, e) {
            (Some(mp), Download::Plan { count, bytes }) => {
                let bar = mp.add(ProgressBar::new(bytes));
                bar.set_style(
                    ProgressStyle::with_template("  {msg:32!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                        .expect("valid template")
                        .progress_chars("=> "),
                );
                bar.set_message(format!("total ({count} downloads)"));
                *self.total.lock().unwrap() = Some((bar, HashMap::new()));
            }
            (None, Download::Plan { .. }) => {}
            (_, Download::Start { label, size, cached: true }) => {
                self.println(&format!("  {label}: cached ({})", human_bytes(size)))
            }
            (Some(mp), Download::Start { label, size, cached: false }) => {
                let bar = mp.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template("  {msg:32!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                        .expect("valid template")
                        .progress_chars("=> "),
                );
                bar.set_message(label.to_string());
                self.active.lock().unwrap().insert(label.to_string(), bar);
            }
            (None, Download::Start { label, size, cached: false }) => {
                self.println(&format!("  {label}: downloading {}", human_bytes(size)))
            }
            (_, Download::Progress { label, done }) => {
                if let Some(bar) = self.active.lock().unwrap().get(label) {
                    bar.set_position(done);
                }
                if let Some((bar, each)) = self.total.lock().unwrap().as_mut() {
                    each.insert(label.to_string(), done);
                    bar.set_position(each.values().sum());
                }
            }
            (_, Download::Retry { label, source: url, attempt, delay, error }) => {
                self.warn(&format!("{label}: {url}: {error}; retry {attempt} in {}", human_duration(delay)))
            }
            (_, Download::Fallback { label, source: url, error }) => {
                self.warn(&format!("{label}: {url}: {error}; trying the next URL"))
            }
            (_, Download::Done { label, downloaded, elapsed }) => {
                if let Some(bar) = self.active.lock().unwrap().remove(label) {
                    bar.finish_and_clear();
                }
                let mut total = self.total.lock().unwrap();
                if self.active.lock().unwrap().is_empty()
                    && let Some((bar, _)) = total.take()
                {
                    bar.finish_and_clear();
                }
                let rate = downloaded as f64 / elapsed.as_secs_f64().max(1e-3);
                self.println(&format!(
                    "  {label}: verified {} in {} ({}/s)",
                    human_bytes(downloaded),
                    human_duration(elapsed),
                    human_bytes(rate as u64)
                ));
            }
        }
    }
}
