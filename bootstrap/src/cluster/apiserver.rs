//! Talking to the apiserver over TLS with the cluster CA and the admin
//! client certificate: readiness and version.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kubestrap_manifest::PkiFile;

use super::pki::Pki;
use crate::profile::Endpoint;
use crate::retry::Backoff;

pub struct Probe {
    client: reqwest::blocking::Client,
    base: String,
}

impl Probe {
    pub fn new(pki: &Pki, at: Endpoint, timeout: Duration) -> Result<Probe> {
        let ca =
            reqwest::Certificate::from_pem(&pki.read(PkiFile::CaCert)?).context("ca.crt is not a PEM certificate")?;
        let mut identity_pem = pki.read(PkiFile::AdminCert)?;
        identity_pem.extend_from_slice(&pki.read(PkiFile::AdminKey)?);
        let identity = reqwest::Identity::from_pem(&identity_pem)
            .context("admin.crt/admin.key are not a usable client identity")?;
        let client = reqwest::blocking::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .identity(identity)
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .context("cannot set up the apiserver client")?;
        Ok(Probe { client, base: at.url() })
    }

    pub fn server(&self) -> &str {
        &self.base
    }

    /// GET `path`: status code and body, or the connection error.
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .map_err(|e| crate::artifacts::source::describe_error(&e))?;
        let status = resp.status().as_u16();
        // An apiserver's answers here are small; a bigger one is cut.
        let mut body = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::Read::take(resp, 1 << 20), &mut body);
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// DELETE `path`: the status code.
    pub fn delete(&self, path: &str) -> Result<u16, String> {
        let resp = self
            .client
            .delete(format!("{}{path}", self.base))
            .send()
            .map_err(|e| crate::artifacts::source::describe_error(&e))?;
        Ok(resp.status().as_u16())
    }

    /// The apiserver's gitVersion.
    pub fn version(&self) -> Option<String> {
        let (code, body) = self.get("/version").ok()?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v.get("gitVersion")?.as_str().map(str::to_string)
    }

    /// Polls `path` until it answers 200, with backoff from 10 ms to 500 ms,
    /// while `alive()` holds and before `deadline`. Returns the last answer
    /// on failure.
    pub fn wait_ready(&self, path: &str, deadline: Instant, mut alive: impl FnMut() -> bool) -> Result<(), WaitError> {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(500)).until(deadline);
        loop {
            let last = match self.get(path) {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("HTTP {code}: {}", body.trim().chars().take(200).collect::<String>()),
                Err(e) => e,
            };
            if !alive() {
                return Err(WaitError::Exited);
            }
            if !backoff.wait() {
                return Err(WaitError::Timeout { last });
            }
        }
    }
}

pub enum WaitError {
    Exited,
    Timeout { last: String },
}
