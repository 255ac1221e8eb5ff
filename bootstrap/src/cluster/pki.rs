//! The cluster's PKI, made on first start and reused afterwards so the
//! kubeconfig stays valid across stop/start/upgrade: a CA, the apiserver's
//! serving certificate, an admin client certificate (O=system:masters), a
//! service-account signing key pair and a static admin token.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kubestrap_manifest::PkiFile;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use kubestrap_fskit::{self as fskit, caps};

/// Leaf certificates closer than this to expiry are renewed by `start`.
pub const RENEW_BEFORE: Duration = Duration::days(30);

/// The Kubernetes service IP of `kubernetes.default` in the default service CIDR.
pub const SERVICE_IP: &str = "10.96.0.1";

/// The names every apiserver certificate carries.
pub fn default_sans() -> Vec<String> {
    [
        "127.0.0.1",
        "::1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        SERVICE_IP,
    ]
    .map(String::from)
    .to_vec()
}

#[derive(Clone, Debug)]
pub struct Options {
    pub profile: String,
    /// Certificate validity.
    pub validity: Duration,
    /// Extra apiserver names or addresses a driver needs.
    pub extra_sans: Vec<String>,
}

/// Paths of a profile's PKI files.
#[derive(Clone, Debug)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: PathBuf) -> Pki {
        Pki { dir }
    }
    pub fn path(&self, f: PkiFile) -> PathBuf {
        self.dir.join(f.file_name())
    }
    pub fn read(&self, f: PkiFile) -> Result<Vec<u8>> {
        Ok(fskit::read_capped(&self.path(f), caps::STATE)?)
    }
    fn complete(&self) -> bool {
        PkiFile::CORE.iter().all(|f| self.path(*f).is_file())
    }

    /// Makes the PKI if it is missing or incomplete; otherwise reuses it,
    /// re-issuing only the apiserver certificate when it lacks a needed name.
    /// The extra CAs (request-header, etcd) are added when missing, never by
    /// remaking the rest. Returns whether anything was written.
    pub fn ensure(&self, opts: &Options) -> Result<bool> {
        fskit::create_dir_mode(&self.dir, 0o700)?;
        let core = self.ensure_core(opts)?;
        let extra = self.ensure_extra_cas(opts)?;
        let token = self.ensure_join_token()?;
        Ok(core || extra || token)
    }

    /// The join token's file (`join/token`, alone in its directory).
    pub fn join_token_path(&self) -> PathBuf {
        self.dir.join("join/token")
    }

    /// The sha256 of the CA certificate as the server hands it out (k3s's
    /// `/cacerts`): what a joining node checks before it trusts the server.
    pub fn ca_sha256(&self) -> Result<String> {
        use sha2::Digest;
        Ok(hex::encode(sha2::Sha256::digest(self.read(PkiFile::CaCert)?)))
    }

    /// The cluster's join token, in k3s's full form `K10<ca sha256>::server:<secret>`
    /// (pkg/clientaccess/token.go): the prefix pins the CA, so a node given
    /// it trusts no other server. Made once; its prefix follows the CA.
    pub fn join_token(&self) -> Result<String> {
        let text = fskit::read_capped_text(&self.join_token_path(), 4096)?;
        Ok(text.trim().to_string())
    }

    fn ensure_join_token(&self) -> Result<bool> {
        let prefix = format!("K10{}::server:", self.ca_sha256()?);
        let kept = self.join_token().ok();
        let secret = kept
            .as_deref()
            .and_then(|t| t.rsplit_once("::server:").map(|(_, s)| s.to_string()))
            .filter(|s| s.len() >= 32 && s.bytes().all(|b| b.is_ascii_hexdigit()));
        if let (Some(t), Some(_)) = (&kept, &secret)
            && t.starts_with(&prefix)
        {
            return Ok(false);
        }
        let secret = secret.unwrap_or_else(|| hex::encode(rand::random::<[u8; 24]>()));
        fskit::create_dir_mode(&self.dir.join("join"), 0o700)?;
        fskit::write_atomic(&self.join_token_path(), format!("{prefix}{secret}\n").as_bytes(), 0o600)?;
        Ok(true)
    }

    /// Each extra CA whose certificate or key is missing, or which do not
    /// match (a crash between the two writes), is made anew: nothing issued
    /// by it outlives it, as localkube issues its leaves at each start.
    fn ensure_extra_cas(&self, opts: &Options) -> Result<bool> {
        let mut wrote = false;
        for (cert, key, name) in PkiFile::EXTRA_CAS {
            if self.cert_matches_key(cert, key) {
                continue;
            }
            let (ca, ca_key) = make_ca(&format!("kubestrap-{}-{name}", opts.profile), opts)?;
            self.write(key, ca_key.serialize_pem())?;
            self.write(cert, ca.pem())?;
            wrote = true;
        }
        Ok(wrote)
    }

    fn ensure_core(&self, opts: &Options) -> Result<bool> {
        let wanted: Vec<String> = default_sans().into_iter().chain(opts.extra_sans.iter().cloned()).collect();
        if self.complete() {
            let soon = OffsetDateTime::now_utc() + RENEW_BEFORE;
            let expiring = |f: PkiFile| self.expiries().map(|e| e.iter().any(|(g, at)| *g == f && *at < soon));
            let renew_api = !wanted.iter().all(|w| self.apiserver_sans().is_ok_and(|have| have.contains(w)))
                || expiring(PkiFile::ApiserverCert)?
                || !self.cert_matches_key(PkiFile::ApiserverCert, PkiFile::ApiserverKey);
            // A key and its certificate are two files: a crash between the two
            // writes of a renewal leaves them apart, which is repaired here.
            let renew_admin =
                expiring(PkiFile::AdminCert)? || !self.cert_matches_key(PkiFile::AdminCert, PkiFile::AdminKey);
            if !renew_api && !renew_admin {
                return Ok(false);
            }
            // Same CA: the cluster and existing kubeconfigs keep trusting it.
            let (ca, ca_key) = self.load_ca()?;
            if renew_api {
                self.issue_apiserver(&ca, &ca_key, &wanted, opts)?;
            }
            if renew_admin {
                self.issue_admin(&ca, &ca_key, opts)?;
            }
            return Ok(true);
        }
        // Incomplete (first start, or a crash while making it): make it all anew.
        let (ca, ca_key) = make_ca(&format!("kubestrap-{}-ca", opts.profile), opts)?;
        self.write(PkiFile::CaKey, ca_key.serialize_pem())?;
        self.issue_apiserver(&ca, &ca_key, &wanted, opts)?;

        self.issue_admin(&ca, &ca_key, opts)?;

        let sa = KeyPair::generate()?;
        self.write(PkiFile::ServiceAccountKey, sa.serialize_pem())?;
        self.write(PkiFile::ServiceAccountPub, sa.public_key_pem())?;

        let token: [u8; 24] = rand::random();
        self.write(PkiFile::TokenCsv, format!("{},admin,admin,\"system:masters\"\n", hex::encode(token)))?;
        // The CA certificate last: its presence with the rest marks a complete PKI.
        self.write(PkiFile::CaCert, ca.pem())?;
        Ok(true)
    }

    fn issue_apiserver(
        &self,
        ca: &rcgen::Certificate,
        ca_key: &KeyPair,
        sans: &[String],
        opts: &Options,
    ) -> Result<()> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(s.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        p.distinguished_name = dn("kube-apiserver", None);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        validity(&mut p, opts.validity);
        let cert = p.signed_by(&key, ca, ca_key)?;
        self.write(PkiFile::ApiserverKey, key.serialize_pem())?;
        self.write(PkiFile::ApiserverCert, cert.pem())?;
        Ok(())
    }

    fn issue_admin(&self, ca: &rcgen::Certificate, ca_key: &KeyPair, opts: &Options) -> Result<()> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name = dn("kubestrap-admin", Some("system:masters"));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        validity(&mut p, opts.validity);
        let cert = p.signed_by(&key, ca, ca_key)?;
        self.write(PkiFile::AdminKey, key.serialize_pem())?;
        self.write(PkiFile::AdminCert, cert.pem())
    }

    fn load_ca(&self) -> Result<(rcgen::Certificate, KeyPair)> {
        let key = KeyPair::from_pem(&String::from_utf8(self.read(PkiFile::CaKey)?)?)?;
        let params = CertificateParams::from_ca_cert_pem(&String::from_utf8(self.read(PkiFile::CaCert)?)?)?;
        let cert = params.self_signed(&key)?;
        Ok((cert, key))
    }

    /// Whether a certificate carries the public half of a key file.
    fn cert_matches_key(&self, cert: PkiFile, key: PkiFile) -> bool {
        let (Ok(cert_pem), Ok(key_pem)) = (self.read(cert), self.read(key)) else { return false };
        let Ok(key) = String::from_utf8(key_pem).map_err(|_| ()).and_then(|k| KeyPair::from_pem(&k).map_err(|_| ()))
        else {
            return false;
        };
        let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(&cert_pem) else { return false };
        pem.parse_x509().is_ok_and(|c| c.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
    }

    fn apiserver_sans(&self) -> Result<Vec<String>> {
        let pem = self.read(PkiFile::ApiserverCert)?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).context("apiserver.crt is not PEM")?;
        let cert = pem.parse_x509().context("apiserver.crt is not a certificate")?;
        let mut out = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => out.push(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(b) => {
                        let ip = match b.len() {
                            4 => IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes")),
                            16 => IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes")),
                            _ => continue,
                        };
                        out.push(ip.to_string());
                    }
                    _ => {}
                }
            }
        }
        Ok(out)
    }

    /// When each certificate expires, soonest first.
    pub fn expiries(&self) -> Result<Vec<(PkiFile, OffsetDateTime)>> {
        let mut out = Vec::new();
        for f in [PkiFile::CaCert, PkiFile::ApiserverCert, PkiFile::AdminCert] {
            let pem = self.read(f)?;
            let (_, pem) =
                x509_parser::pem::parse_x509_pem(&pem).with_context(|| format!("{} is not PEM", f.file_name()))?;
            let cert = pem.parse_x509().with_context(|| format!("{} is not a certificate", f.file_name()))?;
            out.push((f, cert.validity().not_after.to_datetime()));
        }
        out.sort_by_key(|(_, t)| *t);
        Ok(out)
    }

    fn write(&self, f: PkiFile, content: String) -> Result<()> {
        let mode = if f.is_secret() { 0o600 } else { 0o644 };
        Ok(fskit::write_atomic(&self.path(f), content.as_bytes(), mode)?)
    }

    /// Copies PKI files to where localkube expects them (`run.pki-files`).
    /// Places `f` at `dest` for localkube, once per data directory: a file
    /// already there must hold the same bytes. After its first start k3s's
    /// datastore copy of its CAs is authoritative, and a different, newer
    /// file stops it ("newer than datastore and could cause a cluster
    /// outage", k3s pkg/cluster/bootstrap.go): never overwritten, then.
    pub fn place(&self, dest: &Path, f: PkiFile) -> Result<(), PlaceError> {
        if self.check_placed(dest, f)? {
            return Ok(());
        }
        let want = self.read(f).map_err(|e| PlaceError::Io(format!("{e:#}")))?;
        let mode = if f.is_secret() { 0o600 } else { 0o644 };
        if let Some(dir) = dest.parent() {
            fskit::create_dir_mode(dir, 0o700).map_err(|e| PlaceError::Io(e.to_string()))?;
        }
        fskit::write_atomic(dest, &want, mode).map_err(|e| PlaceError::Io(e.to_string()))
    }
}

impl Pki {
    /// Whether `f` is at `dest` already (true), or may be placed there
    /// (false: nothing is); another file there is [`PlaceError::Differs`].
    pub fn check_placed(&self, dest: &Path, f: PkiFile) -> Result<bool, PlaceError> {
        let want = self.read(f).map_err(|e| PlaceError::Io(format!("{e:#}")))?;
        match fskit::read_capped(dest, caps::STATE) {
            Ok(have) if have == want => Ok(true),
            Ok(_) => Err(PlaceError::Differs { dest: dest.to_path_buf(), file: f.file_name() }),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(PlaceError::Io(e.to_string())),
        }
    }
}

/// Why a PKI file could not be placed for localkube.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("{} holds another {file} than the profile's PKI", dest.display())]
    Differs { dest: PathBuf, file: &'static str },
    #[error("{0}")]
    Io(String),
}

/// A self-signed CA, valid a year longer than the leaves it signs.
fn make_ca(cn: &str, opts: &Options) -> Result<(rcgen::Certificate, KeyPair)> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = dn(cn, None);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut p, opts.validity + Duration::days(365));
    Ok((p.self_signed(&key)?, key))
}

fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}

fn validity(p: &mut CertificateParams, d: Duration) {
    let now = OffsetDateTime::now_utc();
    // Backdated a little for clocks that disagree by a few minutes.
    p.not_before = now - Duration::minutes(5);
    p.not_after = now + d;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn opts() -> Options {
        Options { profile: "t".into(), validity: Duration::days(365), extra_sans: vec![] }
    }

    #[test]
    fn made_once_then_reused_and_extended() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path().join("pki"));
        assert!(pki.ensure(&opts()).unwrap());
        let ca = pki.read(PkiFile::CaCert).unwrap();
        let admin = pki.read(PkiFile::AdminCert).unwrap();
        assert!(!pki.ensure(&opts()).unwrap(), "second ensure reuses");
        let mode = fs::metadata(pki.path(PkiFile::CaKey)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = fs::metadata(&pki.dir).unwrap().permissions().mode();
        assert_eq!(dmode & 0o777, 0o700);
        let sans = pki.apiserver_sans().unwrap();
        for s in default_sans() {
            assert!(sans.contains(&s), "{s} missing from {sans:?}");
        }
        // A driver that needs another address gets a new serving cert, same CA and admin.
        let mut o = opts();
        o.extra_sans = vec!["10.0.2.15".into()];
        assert!(pki.ensure(&o).unwrap());
        assert!(pki.apiserver_sans().unwrap().contains(&"10.0.2.15".to_string()));
        assert_eq!(pki.read(PkiFile::CaCert).unwrap(), ca);
        assert_eq!(pki.read(PkiFile::AdminCert).unwrap(), admin);
        // A key that does not match its certificate (a crash mid-renewal) is repaired.
        let other = KeyPair::generate().unwrap();
        pki.write(PkiFile::AdminKey, other.serialize_pem()).unwrap();
        assert!(pki.ensure(&o).unwrap(), "mismatched admin key/cert is re-issued");
        assert!(pki.cert_matches_key(PkiFile::AdminCert, PkiFile::AdminKey));
        assert!(!pki.ensure(&o).unwrap());
        // Leaf certificates close to expiry are renewed under the same CA.
        let mut short = opts();
        short.validity = Duration::days(10);
        let dir2 = tempfile::tempdir().unwrap();
        let pki2 = Pki::new(dir2.path().join("pki"));
        pki2.ensure(&short).unwrap();
        let ca2 = pki2.read(PkiFile::CaCert).unwrap();
        assert!(pki2.ensure(&opts()).unwrap(), "expiring leaves are renewed");
        assert_eq!(pki2.read(PkiFile::CaCert).unwrap(), ca2);
        assert!(pki2.expiries().unwrap().iter().all(|(_, at)| *at > OffsetDateTime::now_utc() + Duration::days(300)));
        // A PKI made before the extra CAs existed gets them, core untouched.
        for (cert, key, _) in PkiFile::EXTRA_CAS {
            assert!(pki.cert_matches_key(cert, key));
            assert_eq!(fs::metadata(pki.path(key)).unwrap().permissions().mode() & 0o777, 0o600);
            fs::remove_file(pki.path(cert)).unwrap();
        }
        let core: Vec<_> = PkiFile::CORE.iter().map(|f| pki.read(*f).unwrap()).collect();
        assert!(pki.ensure(&o).unwrap(), "missing extra CAs are made");
        assert_eq!(core, PkiFile::CORE.iter().map(|f| pki.read(*f).unwrap()).collect::<Vec<_>>());
        assert_ne!(pki.read(PkiFile::RequestHeaderCaCert).unwrap(), ca, "the request-header CA is its own");
        assert!(!pki.ensure(&o).unwrap());
        let csv = String::from_utf8(pki.read(PkiFile::TokenCsv).unwrap()).unwrap();
        assert_eq!(csv.split(',').next().unwrap().len(), 48);
        let exp = pki.expiries().unwrap();
        assert_eq!(exp.len(), 3);
        assert!(exp[0].1 > OffsetDateTime::now_utc() + Duration::days(300));
    }
}
