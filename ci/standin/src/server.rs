//! HTTPS glue: accept loop, authentication, request logging.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::api::{Api, Reply};
use crate::tls::LateClientVerifier;

/// The apiserver's request body limit.
const MAX_BODY: usize = 3 * 1024 * 1024;

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Kubernetes static token file: `token,user,uid[,"group1,group2"]` per line.
/// Returns token → user name.
pub fn parse_token_file(text: &str) -> Result<HashMap<String, String>> {
    let mut tokens = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = split_csv(line);
        if fields.len() < 3 || fields[0].is_empty() || fields[1].is_empty() {
            bail!("line {}: want token,user,uid[,\"groups\"]", n + 1);
        }
        tokens.insert(fields[0].clone(), fields[1].clone());
    }
    Ok(tokens)
}

/// One CSV line with `"`-quoted fields (`""` is a literal quote).
fn split_csv(line: &str) -> Vec<String> {
    let (mut fields, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur).trim().to_string()),
            c => cur.push(c),
        }
    }
    fields.push(cur.trim().to_string());
    fields
}

pub struct Server {
    pub api: Api,
    pub tokens: HashMap<String, String>,
    pub client_certs: Arc<LateClientVerifier>,
    /// The join token's secret (`--token-file`, `--token`): agents present
    /// it as k3s's do, HTTP basic `node:<secret>`.
    pub join_secret: Option<String>,
    /// The CA bundle handed to joining nodes (k3s's `/cacerts`, no auth).
    pub cacerts: Vec<u8>,
}

/// The secret of a k3s token: `K10<ca sha256>::<user>:<secret>` or the
/// whole token when it is a bare one (pkg/clientaccess/token.go).
pub fn token_secret(token: &str) -> &str {
    let t = token.trim();
    match t.strip_prefix("K10").and_then(|r| r.split_once("::")) {
        Some((_, creds)) => creds.split_once(':').map_or(creds, |(_, pw)| pw),
        None => t,
    }
}

impl Server {
    pub fn load_tokens(path: Option<&Path>) -> Result<HashMap<String, String>> {
        let Some(path) = path else {
            return Ok(HashMap::new());
        };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading token file {}", path.display()))?;
        parse_token_file(&text).with_context(|| format!("parsing token file {}", path.display()))
    }

    /// Who is asking: a verified client cert, or a known bearer token.
    fn authenticate(&self, has_client_cert: bool, auth: Option<&HeaderValue>) -> Option<String> {
        if has_client_cert {
            return Some("client-cert".into());
        }
        let auth = auth?.to_str().ok()?;
        if let Some(basic) = auth.strip_prefix("Basic ") {
            use base64::Engine;
            let creds = base64::engine::general_purpose::STANDARD.decode(basic.trim()).ok()?;
            let creds = String::from_utf8(creds).ok()?;
            let (user, pw) = creds.split_once(':')?;
            let want = self.join_secret.as_deref()?;
            // k3s's passwd: `server` and `node` both take the server token's
            // secret (no separate agent token); both may join a node.
            let known = user == "node" || user == "server";
            return (known && constant_time_eq(pw.as_bytes(), want.as_bytes())).then(|| "node".into());
        }
        let token = auth.strip_prefix("Bearer ")?.trim();
        self.tokens.get(token).map(|u| format!("token:{u}"))
    }

    async fn serve(self: Arc<Self>, req: Request<Incoming>, has_client_cert: bool) -> Response<Full<Bytes>> {
        let method = req.method().as_str().to_string();
        let uri = req.uri().clone();
        let path = uri.path();
        let header =
            |name| req.headers().get(name).and_then(|v: &HeaderValue| v.to_str().ok()).unwrap_or("").to_string();
        let (accept, content_type) = (header(ACCEPT), header(CONTENT_TYPE));
        let user = self.authenticate(has_client_cert, req.headers().get(AUTHORIZATION));
        let reply = if path == "/ping" {
            Reply::text(200, "pong")
        } else if path == "/cacerts" {
            Reply { code: 200, content_type: "text/plain; charset=utf-8", body: self.cacerts.clone() }
        } else if user.is_none() {
            Reply::status(401, "Unauthorized", "Unauthorized", None)
        } else if user.as_deref() == Some("node") && path == "/v1-k3s/readyz" {
            // k3s's supervisor: agents (and kubestrap's join) check the server
            // and their token here (pkg/server/router.go).
            if self.api.ready() { Reply::text(200, "ok") } else { Reply::text(500, "not ready") }
        } else if user.as_deref() == Some("node") && !(path == "/api/v1/nodes" || path.starts_with("/api/v1/nodes/")) {
            Reply::status(403, "Forbidden", &format!("node credentials may not reach {path}"), None)
        } else {
            match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Err(e) => Reply::status(413, "RequestEntityTooLarge", &format!("reading request body: {e}"), None),
                Ok(body) => {
                    let body = body.to_bytes();
                    let r = crate::api::Request {
                        method: &method,
                        path,
                        query: uri.query().unwrap_or(""),
                        accept: &accept,
                        content_type: &content_type,
                        body: &body,
                    };
                    self.api.handle(&r)
                }
            }
        };
        let target = uri.path_and_query().map_or(path, |pq| pq.as_str());
        let who = user.as_deref().unwrap_or("anonymous");
        match content_type.as_str() {
            "" => eprintln!("standin: {method} {target} -> {} ({who})", reply.code),
            ct => eprintln!("standin: {method} {target} -> {} ({who}, body {ct})", reply.code),
        }
        let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
        *resp.status_mut() = StatusCode::from_u16(reply.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
        resp
    }

    /// Accepts connections until `shutdown` completes.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        acceptor: TlsAcceptor,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("standin: accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // As Go's net/http (and so k3s) does: no Nagle delay on small replies.
            let _ = tcp.set_nodelay(true);
            let (server, acceptor) = (self.clone(), acceptor.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("standin: TLS handshake with {peer} failed: {e}");
                        return;
                    }
                };
                let certs = tls.get_ref().1.peer_certificates();
                let has_cert = certs.is_some_and(|c| server.client_certs.trusted(c));
                if certs.is_some() && !has_cert {
                    eprintln!("standin: {peer} presented a client certificate not signed by the client CA");
                }
                let svc = service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.serve(req, has_cert).await) }
                });
                if let Err(e) = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), svc).await
                {
                    eprintln!("standin: connection from {peer}: {e}");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_static_token_csv() {
        let t = parse_token_file("# comment\nabc,admin,uid1,\"system:masters,other\"\n\ndef,bob,2\n").unwrap();
        assert_eq!(t.get("abc").map(String::as_str), Some("admin"));
        assert_eq!(t.get("def").map(String::as_str), Some("bob"));
        assert!(parse_token_file("justatoken\n").is_err());
        assert_eq!(split_csv("a,\"b,c\",\"d\"\"e\""), ["a", "b,c", "d\"e"]);
    }
}
