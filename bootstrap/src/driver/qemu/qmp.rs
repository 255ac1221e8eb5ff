//! A small QMP client: qemu's JSON control protocol over the profile's unix
//! socket. Every read and write has a deadline; replies are capped; events
//! in between are skipped.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

/// The longest line qemu sends us (a reply, an event).
const LINE_CAP: usize = 1 << 20;

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// Connects to a socket whatever the length of its path: a path over the
/// 108 bytes a socket address holds is reached through its directory's open
/// descriptor (`/proc/self/fd/N/name`).
fn connect_long(socket: &Path) -> std::io::Result<UnixStream> {
    #[cfg(target_os = "linux")]
    if socket.as_os_str().len() > 100
        && let (Some(dir), Some(name)) = (socket.parent(), socket.file_name())
    {
        use std::os::fd::AsRawFd;
        let dir = std::fs::File::open(dir)?;
        let short = Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join(name);
        return UnixStream::connect(short);
    }
    UnixStream::connect(socket)
}

impl Qmp {
    /// Connects, reads the greeting and leaves negotiation mode.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp, String> {
        let stream = connect_long(socket).map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
        stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut q = Qmp { reader: BufReader::new(stream), writer };
        let greeting = q.read_line()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("{} did not greet as QMP: {greeting}", socket.display()));
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn read_line(&mut self) -> Result<Value, String> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(LINE_CAP as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading from qemu: {e}"))?;
        if n == 0 {
            return Err("qemu closed the control socket".into());
        }
        if line.len() > LINE_CAP {
            return Err("qemu sent a line longer than 1 MiB".into());
        }
        serde_json::from_slice(&line).map_err(|e| format!("qemu sent something that is not JSON: {e}"))
    }

    /// Runs a command; returns its `return` value, or its error's text.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, String> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut bytes = serde_json::to_vec(&msg).expect("JSON");
        bytes.push(b'\n');
        self.writer.write_all(&bytes).map_err(|e| format!("writing to qemu: {e}"))?;
        loop {
            let v = self.read_line()?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(format!("{command}: {}", e.get("desc").and_then(Value::as_str).unwrap_or("error")));
            }
        }
    }

    /// An HMP command (savevm, delvm have no QMP form in every qemu);
    /// HMP reports failures as text, returned as an error.
    pub fn hmp(&mut self, command_line: &str) -> Result<String, String> {
        let out = self.execute("human-monitor-command", Some(json!({ "command-line": command_line })))?;
        let text = out.as_str().unwrap_or_default().trim().to_string();
        let failed = ["Error", "error:", "Could not", "No block device", "does not support"];
        if failed.iter().any(|f| text.contains(f)) {
            return Err(format!("{command_line}: {text}"));
        }
        Ok(text)
    }

    /// `running`, `paused`, `shutdown`…
    pub fn status(&mut self) -> Result<String, String> {
        let s = self.execute("query-status", None)?;
        Ok(s.get("status").and_then(Value::as_str).unwrap_or_default().to_string())
    }

    /// Raises the read timeout for a long command (savevm of a large RAM).
    pub fn set_timeout(&mut self, timeout: Duration) {
        let _ = self.writer.set_read_timeout(Some(timeout));
    }
}
