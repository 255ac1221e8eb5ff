//! A scripted HTTP/1.1 server on 127.0.0.1 (optionally TLS): per-path
//! replies (delays, drops, bad ranges, endless bodies) and a request log.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::artifacts::Artifact;

/// What the server does for one request to a path. A path's queue is used
/// first; when it is empty the path's bytes are served (404 if it has none).
#[derive(Clone, Debug)]
pub enum Reply {
    /// The path's bytes: 200, or 206 + Content-Range for `Range: bytes=N-`.
    Serve,
    /// The path's bytes with 200, ignoring any Range header.
    IgnoreRange,
    /// A bare status with a short body.
    Status(u16),
    /// Headers with the full Content-Length (honouring Range), then the
    /// connection is closed after this many body bytes.
    DropAfter(usize),
    /// The path's bytes followed by these extra ones, close-delimited (no
    /// Content-Length): an endless-data server.
    Extra(Vec<u8>),
    /// As `Extra`, in chunked transfer encoding.
    ExtraChunked(Vec<u8>),
    /// The path's bytes followed by these, with a Content-Length that
    /// announces them all.
    ExtraAnnounced(Vec<u8>),
    /// These bytes instead of the path's (200, exact Content-Length).
    Body(Vec<u8>),
    /// Sleep this long before answering as `Serve` (for timeouts).
    Delay(Duration),
    /// As `Serve` (honouring Range), but the body trickles: `bytes` at a
    /// time, one batch every `every`, until done or the server stops.
    Trickle { bytes: usize, every: Duration },
}

/// One request the server saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The request target as sent: the path, or an absolute URL via a proxy.
    pub target: String,
    /// The Range header's value, if any (e.g. `bytes=1000-`).
    pub range: Option<String>,
}

#[derive(Default)]
struct State {
    content: HashMap<String, Arc<Vec<u8>>>,
    scripts: HashMap<String, VecDeque<Reply>>,
    log: Vec<Request>,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
    connections: AtomicUsize,
}

/// An HTTP/1.1 server on 127.0.0.1 (an ephemeral port), a thread per
/// connection, every blocking call bounded. Stopped when dropped.
pub struct Server {
    addr: SocketAddr,
    scheme: &'static str,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// No single read or write on a connection may block longer than this.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection thread gives up after this long whatever happens.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

impl Server {
    /// A plain HTTP server.
    pub fn start() -> Server {
        Server::start_with(None)
    }

    /// An HTTPS server with `tls`'s certificate (see [`TestCa`]).
    pub fn start_tls(tls: Arc<rustls::ServerConfig>) -> Server {
        Server::start_with(Some(tls))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
        });
        let workers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (sh, wk) = (shared.clone(), workers.clone());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let acceptor = std::thread::Builder::new()
            .name("test-http-accept".into())
            .spawn(move || {
                while !sh.stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            sh.connections.fetch_add(1, Ordering::SeqCst);
                            let sh2 = sh.clone();
                            let tls = tls.clone();
                            let h = std::thread::Builder::new()
                                .name("test-http-conn".into())
                                .spawn(move || {
                                    let _ = serve_connection(stream, &sh2, tls);
                                })
                                .unwrap();
                            let mut w = wk.lock().unwrap();
                            w.retain(|h| !h.is_finished());
                            w.push(h);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
            .unwrap();
        Server { addr, scheme, shared, acceptor: Some(acceptor), workers }
    }

    /// `http://127.0.0.1:PORT/path` (path with or without a leading `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}/{}", self.scheme, self.addr, path.trim_start_matches('/'))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `bytes` at `path`.
    pub fn add(&self, path: &str, bytes: Vec<u8>) {
        self.shared.state.lock().unwrap().content.insert(norm(path), Arc::new(bytes));
    }

    /// Serves an artifact's file at `path`; returns its URL.
    pub fn add_artifact(&self, path: &str, a: &Artifact) -> String {
        self.add(path, a.bytes());
        self.url(path)
    }

    /// Appends replies to `path`'s queue (used before the default `Serve`).
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.shared.state.lock().unwrap().scripts.entry(norm(path)).or_default().extend(replies);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.state.lock().unwrap().log.clone()
    }

    /// Requests so far for one path.
    pub fn requests_for(&self, path: &str) -> Vec<Request> {
        let p = norm(path);
        self.requests().into_iter().filter(|r| r.path == p).collect()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        // Connection threads notice `stop` within one poll interval.
        for h in self.workers.lock().unwrap().drain(..) {
            let _ = h.join();
        }
    }
}

fn norm(path: &str) -> String {
    format!("/{}", path.trim_start_matches('/'))
}

/// Reads one request head; `None` on EOF, stop or timeout.
fn read_head(stream: &mut Conn, shared: &Shared, deadline: Instant) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        if shared.stop.load(Ordering::SeqCst) || Instant::now() > deadline || buf.len() > 64 * 1024 {
            return Ok(None);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

fn serve_connection(tcp: TcpStream, shared: &Shared, tls: Option<Arc<rustls::ServerConfig>>) -> io::Result<()> {
    tcp.set_nonblocking(false)?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    // Short read timeouts so every wait can notice `stop`.
    tcp.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut stream = match tls {
        None => Conn::Plain(tcp),
        Some(cfg) => {
            let sc = rustls::ServerConnection::new(cfg).map_err(io::Error::other)?;
            Conn::Tls(Box::new(rustls::StreamOwned::new(sc, tcp)))
        }
    };
    let born = Instant::now();
    // Idle keep-alive connections are closed after IO_TIMEOUT.
    let Some(head) = read_head(&mut stream, shared, born + IO_TIMEOUT)? else {
        return Ok(());
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    // A proxy gets the absolute form (`GET http://host:port/path`): serve
    // it by path, and log the full target so tests can tell.
    let path = match target.strip_prefix("http://").and_then(|r| r.find('/').map(|i| r[i..].to_string())) {
        Some(p) => p,
        None => target.clone(),
    };
    let mut range = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':')
            && k.trim().eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    let (reply, content) = {
        let mut st = shared.state.lock().unwrap();
        st.log.push(Request {
            method: method.clone(),
            path: path.clone(),
            target: target.clone(),
            range: range.clone(),
        });
        let reply = st.scripts.get_mut(&path).and_then(|q| q.pop_front()).unwrap_or(Reply::Serve);
        (reply, st.content.get(&path).cloned())
    };
    let head_only = method == "HEAD";
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let w = &mut stream;
    let mut clean_close = true;
    match (reply, content) {
        (Reply::Status(code), _) => simple(w, code)?,
        (_, None) => simple(w, 404)?,
        (Reply::Body(b), _) => full(w, 200, &[], &b, head_only)?,
        (Reply::Serve, Some(c)) => ranged(w, &c, start, None, head_only)?,
        (Reply::IgnoreRange, Some(c)) => full(w, 200, &[], &c, head_only)?,
        (Reply::Delay(d), Some(c)) => {
            sleep_unless_stopped(d, shared);
            ranged(w, &c, start, None, head_only)?
        }
        (Reply::DropAfter(n), Some(c)) => {
            clean_close = false;
            ranged(w, &c, start, Some(n), head_only)?
        }
        (Reply::Trickle { bytes, every }, Some(c)) => {
            clean_close = false;
            let from = start.unwrap_or(0).min(c.len());
            ranged(w, &c, start, Some(0), head_only)?;
            for piece in c[from..].chunks(bytes.max(1)) {
                if born.elapsed() >= CONNECTION_LIFETIME || shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                if w.write_all(piece).and_then(|_| w.flush()).is_err() {
                    break;
                }
                sleep_unless_stopped(every, shared);
            }
        }
        (Reply::Extra(extra), Some(c)) => {
            write!(w, "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")?;
            w.write_all(&c)?;
            w.write_all(&extra)?;
        }
        (Reply::ExtraChunked(extra), Some(c)) => {
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )?;
            for part in [&c[..], &extra[..]] {
                for piece in part.chunks(64 * 1024) {
                    write!(w, "{:x}\r\n", piece.len())?;
                    w.write_all(piece)?;
                    w.write_all(b"\r\n")?;
                }
            }
            w.write_all(b"0\r\n\r\n")?;
        }
        (Reply::ExtraAnnounced(extra), Some(c)) => {
            let mut all = c.to_vec();
            all.extend_from_slice(&extra);
            full(w, 200, &[], &all, head_only)?
        }
    }
    if clean_close && let Conn::Tls(t) = w {
        t.conn.send_close_notify();
    }
    let _ = w.flush();
    let _ = w.tcp().shutdown(Shutdown::Write);
    // Let the client read everything before the socket goes (avoids a RST
    // that could drop data still in flight), bounded.
    let mut sink = [0u8; 1024];
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until && born.elapsed() < CONNECTION_LIFETIME && !shared.stop.load(Ordering::SeqCst) {
        match stream.tcp().read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// A plain or TLS connection.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(t) => &mut t.sock,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(t) => t.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(t) => t.flush(),
        }
    }
}

fn sleep_unless_stopped(d: Duration, shared: &Shared) {
    let until = Instant::now() + d;
    while Instant::now() < until && !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn simple(w: &mut Conn, code: u16) -> io::Result<()> {
    let body = format!("{code} {}\n", reason(code));
    full(w, code, &[], body.as_bytes(), false)
}

fn full(w: &mut Conn, code: u16, headers: &[String], body: &[u8], head_only: bool) -> io::Result<()> {
    let mut h = format!(
        "HTTP/1.1 {code} {}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n",
        reason(code),
        body.len()
    );
    for x in headers {
        h.push_str(x);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    w.write_all(h.as_bytes())?;
    if !head_only {
        w.write_all(body)?;
    }
    Ok(())
}

/// Serves `c` from `start` (206) or whole (200); with `drop_after`, stops
/// after that many body bytes although the headers announced more.
fn ranged(w: &mut Conn, c: &[u8], start: Option<usize>, drop_after: Option<usize>, head_only: bool) -> io::Result<()> {
    let (code, body, headers) = match start {
        Some(s) if s >= c.len() => {
            let h = vec![format!("Content-Range: bytes */{}", c.len())];
            return full(w, 416, &h, b"", head_only);
        }
        Some(s) => (
            206,
            &c[s..],
            vec![format!("Content-Range: bytes {s}-{}/{}", c.len() - 1, c.len()), "Accept-Ranges: bytes".to_string()],
        ),
        None => (200, c, vec!["Accept-Ranges: bytes".to_string()]),
    };
    match drop_after {
        None => full(w, code, &headers, body, head_only),
        Some(n) => {
            let mut h = format!(
                "HTTP/1.1 {code} {}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n",
                reason(code),
                body.len()
            );
            for x in &headers {
                h.push_str(x);
                h.push_str("\r\n");
            }
            h.push_str("\r\n");
            w.write_all(h.as_bytes())?;
            if !head_only {
                w.write_all(&body[..n.min(body.len())])?;
            }
            Ok(())
        }
    }
}
