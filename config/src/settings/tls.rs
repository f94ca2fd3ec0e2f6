//! TLS for game clients: mydog's keys of a frontend entry, `"ssl": true, "cert": "<pem>",
//! "key": "<pem>"` (paths relative to the project dir), and `certReload` (seconds between
//! checks of the two files' modification times). [`TlsSettings`] is what an entry sets;
//! [`read_cert_and_key`] reads and checks the files: PEM, a private key matching the
//! certificate, the certificate valid now. `Project::load` runs it for every entry with `ssl`
//! (so `kennel config` and `kennel start` refuse a bad file before any process starts), and the
//! worker runs it again at start and on every reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde_json::Value;

use super::{in_range, setting};
use crate::error::Problem;

/// Seconds between checks of the certificate and key files by default (`certReload`).
pub const DEFAULT_CERT_RELOAD_SECS: u64 = 10;

/// Largest certificate or key file read (a PEM chain is a few KiB).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// A frontend's TLS settings (`ssl: true` with `cert` and `key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate chain's PEM file (`cert`): the server's certificate first, then the
    /// intermediates. Relative to the project dir as written; `Project::load` makes it
    /// absolute.
    pub cert: PathBuf,
    /// The private key's PEM file (`key`: PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
    /// How often the files' modification times are checked; a change reloads them for new
    /// connections (`certReload`, whole seconds, default 10; 0: only on `kennel send ...
    /// reload-tls`).
    pub reload: Option<Duration>,
}

impl TlsSettings {
    /// The settings with the paths resolved against the project dir `dir`.
    pub fn resolved(&self, dir: &Path) -> TlsSettings {
        TlsSettings {
            cert: dir.join(&self.cert),
            key: dir.join(&self.key),
            reload: self.reload,
        }
    }
}

/// `ssl`, `cert`, `key` and `certReload` of an entry: `None` unless `ssl` is true (mydog
/// reads `cert` and `key` only then, so a game key named `key` elsewhere stays a game key).
pub(crate) fn tls_settings(
    ssl: Option<bool>,
    cert: Option<&Value>,
    key: Option<&Value>,
    reload: Option<u64>,
) -> Result<Option<TlsSettings>, Problem> {
    if ssl != Some(true) {
        return Ok(None);
    }
    let path = |name: &str, v: Option<&Value>, what: &str| -> Result<PathBuf, Problem> {
        match v {
            Some(Value::String(s)) if !s.is_empty() => Ok(PathBuf::from(s)),
            None | Some(Value::Null) => Err(setting(
                name,
                format!(
                    "`ssl` is true, so `{name}` must name the {what}'s PEM file (relative to the project dir)"
                ),
            )),
            Some(other) => Err(setting(
                name,
                format!(
                    "must be the path of the {what}'s PEM file (a non-empty string), found {other}"
                ),
            )),
        }
    };
    let reload = match reload {
        None => DEFAULT_CERT_RELOAD_SECS,
        Some(n) => in_range("certReload", n, 0, super::MAX_SECS)?,
    };
    Ok(Some(TlsSettings {
        cert: path("cert", cert, "certificate")?,
        key: path("key", key, "private key")?,
        reload: (reload > 0).then(|| Duration::from_secs(reload)),
    }))
}

/// A certificate chain and its private key, read and checked by [`read_cert_and_key`].
#[derive(Debug, Clone)]
pub struct CertAndKey {
    /// The chain and the key, ready for a rustls resolver (ring provider).
    pub certified: Arc<CertifiedKey>,
    /// The server certificate's subject (e.g. `CN=game.example.com`).
    pub subject: String,
    /// Its DNS names and IP addresses (subjectAltName).
    pub names: Vec<String>,
    /// The end of its validity (`notAfter`).
    pub not_after: SystemTime,
}

impl CertAndKey {
    /// `CN=..., names [a, b], valid until <date>` for logs and `kennel send` replies.
    pub fn describe(&self) -> String {
        let until = asn1_time(secs(self.not_after));
        format!(
            "{} (names {}) valid until {until}",
            if self.subject.is_empty() {
                "no subject"
            } else {
                &self.subject
            },
            self.names.join(", ")
        )
    }
}

/// Why [`read_cert_and_key`] refused: the key (`cert` or `key`) at fault and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    /// `cert` or `key`.
    pub key: &'static str,
    /// What is wrong, naming the file.
    pub message: String,
}

impl std::fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

impl From<TlsFileError> for Problem {
    fn from(e: TlsFileError) -> Problem {
        setting(e.key, e.message)
    }
}

/// Reads the PEM certificate chain at `cert` and the PEM private key at `key`, and checks that
/// the key matches the chain's first certificate and that the certificate is valid at `now`.
pub fn read_cert_and_key(
    cert: &Path,
    key: &Path,
    now: SystemTime,
) -> Result<CertAndKey, TlsFileError> {
    let fail = |key: &'static str, message: String| TlsFileError { key, message };
    let cert_pem = read_pem("cert", cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            fail(
                "cert",
                format!("{} is not a valid PEM file: {e}", cert.display()),
            )
        })?;
    if chain.is_empty() {
        return Err(fail(
            "cert",
            format!(
                "{} holds no certificate (no -----BEGIN CERTIFICATE----- block)",
                cert.display()
            ),
        ));
    }
    let key_pem = read_pem("key", key)?;
    private_enough(key)?;
    let key_der = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(k) => k,
        Err(pem::Error::NoItemsFound) => {
            return Err(fail(
                "key",
                format!(
                    "{} holds no private key (no -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY block)",
                    key.display()
                ),
            ));
        }
        Err(e) => {
            return Err(fail(
                "key",
                format!("{} is not a valid PEM file: {e}", key.display()),
            ));
        }
    };
    let (subject, names, not_before, not_after) =
        validity(&chain[0]).map_err(|e| fail("cert", format!("{}: {e}", cert.display())))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| {
            fail(
                "key",
                format!("{}: unusable private key: {e}", key.display()),
            )
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(fail(
                "key",
                format!(
                    "the private key in {} does not match the certificate in {} (the key of another certificate?)",
                    key.display(),
                    cert.display()
                ),
            ));
        }
        Err(e) => {
            return Err(fail(
                "key",
                format!(
                    "cannot check the private key in {} against the certificate in {}: {e}",
                    key.display(),
                    cert.display()
                ),
            ));
        }
    }
    let (now_s, before_s, after_s) = (secs(now), secs(not_before), secs(not_after));
    if now_s < before_s {
        return Err(fail(
            "cert",
            format!(
                "the certificate in {} is not valid yet (not before {})",
                cert.display(),
                asn1_time(before_s)
            ),
        ));
    }
    if now_s > after_s {
        return Err(fail(
            "cert",
            format!(
                "the certificate in {} expired on {}: renew it",
                cert.display(),
                asn1_time(after_s)
            ),
        ));
    }
    Ok(CertAndKey {
        certified: Arc::new(certified),
        subject,
        names,
        not_after,
    })
}

/// The bytes of a PEM file (at most [`MAX_PEM_BYTES`]), or why not, naming `key` and the file.
fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    use std::io::Read;
    let fail = |message: String| TlsFileError { key, message };
    let file = std::fs::File::open(path)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(fail(format!(
            "{} is larger than {MAX_PEM_BYTES} bytes: not a PEM certificate or key",
            path.display()
        )));
    }
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(fail(format!(
            "{} is not a PEM file (no -----BEGIN line; a DER file can be converted with `openssl x509 -inform der` or `openssl pkey -inform der`)",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Refuses a private key file that others (not the owner, not its group) may read or write:
/// a group (e.g. `ssl-cert`, mode 0640) is how a server user is usually given the key.
fn private_enough(path: &Path) -> Result<(), TlsFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| TlsFileError {
            key: "key",
            message: format!("cannot read {}: {e}", path.display()),
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o007 != 0 {
        return Err(TlsFileError {
            key: "key",
            message: format!(
                "the private key {} may be accessed by any user (mode {mode:04o}): chmod 600 {0} (or 640 for a group such as ssl-cert)",
                path.display()
            ),
        });
    }
    Ok(())
}

/// The subject, subjectAltNames and validity of a DER certificate.
fn validity(der: &[u8]) -> Result<(String, Vec<String>, SystemTime, SystemTime), String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let v = cert.validity();
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).ok()?).to_string()),
                    16 => {
                        Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).ok()?).to_string())
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok((
        cert.subject().to_string(),
        names,
        at(v.not_before.timestamp()),
        at(v.not_after.timestamp()),
    ))
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A time as certificates print it (`Jan  1 00:00:00 2030 +00:00`).
fn asn1_time(secs: u64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(secs as i64)
        .map_or_else(|_| format!("{secs} s after 1970"), |t| t.to_string())
}

/// Makes the TLS paths of every server absolute (against the project dir `dir`) and, with
/// `read`, reads and checks their files, once per entry: the first bad file is an error
/// naming the servers file, the environment, the entry and the key (`cert` or `key`).
pub(crate) fn check_files(
    servers_file: &crate::source::SourceFile,
    env: &str,
    dir: &Path,
    placed: &mut [crate::expand::Placed],
    read: bool,
) -> Result<(), crate::ConfigError> {
    let mut checked: Vec<String> = Vec::new();
    let now = SystemTime::now();
    for p in placed.iter_mut() {
        let Some(tls) = p.config.settings.connector.tls.as_mut() else {
            continue;
        };
        *tls = tls.resolved(dir);
        if !read || checked.contains(&p.entry) {
            continue;
        }
        if let Err(e) = read_cert_and_key(&tls.cert, &tls.key, now) {
            return Err(servers_file.invalid(env, Some(p.entry.clone()), e.into()));
        }
        checked.push(p.entry.clone());
    }
    Ok(())
}
