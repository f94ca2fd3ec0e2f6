//! Test certificates, made with rcgen at test time: a CA ([`TestCa`]) that signs server
//! certificates for `127.0.0.1` and `localhost` ([`ServerCert`]), written as PEM files where a
//! frontend entry's `cert` and `key` point, the [`TlsOptions`] a kennel-client uses to trust
//! the CA, and the SPKI pin Chromium's `--ignore-certificate-errors-spki-list` takes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine;
use kennel_client::TlsOptions;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData,
};
use serde_json::{Value, json};
use sha2::Digest;

/// A certificate authority for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate (PEM), what clients trust.
    pub pem: String,
}

/// A server certificate and its key.
pub struct ServerCert {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
    /// The certificate (DER), as a client sees it.
    pub der: Vec<u8>,
    /// The public key (SubjectPublicKeyInfo, DER).
    pub spki: Vec<u8>,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<TestCa> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A certificate for `127.0.0.1` and `localhost` with subject `cn`, valid from 2020 to
    /// 4000.
    pub fn server_cert(&self, cn: &str) -> Result<ServerCert> {
        self.server_cert_valid(cn, 2020, 4000)
    }

    /// A certificate for `127.0.0.1` and `localhost`, valid from January 1st of `from` to
    /// January 1st of `until`.
    pub fn server_cert_valid(&self, cn: &str, from: i32, until: i32) -> Result<ServerCert> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            spki: key.subject_public_key_info(),
        })
    }

    /// What a kennel-client needs to trust this CA.
    pub fn client_tls(&self) -> Result<TlsOptions> {
        TlsOptions::with_ca_pem(self.pem.as_bytes()).context("the test CA as a client root")
    }
}

impl ServerCert {
    /// Writes `cert.pem` and `key.pem` into `dir` (created if needed), each replacing any file
    /// there at once (written beside it, then renamed, as certbot's deploy does); returns the
    /// entry keys that serve them: `{"ssl": true, "cert": <path>, "key": <path>}`.
    pub fn write(&self, dir: &Path) -> Result<Value> {
        std::fs::create_dir_all(dir)?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        replace(&key, &self.key_pem)?;
        replace(&cert, &self.cert_pem)?;
        Ok(json!({"ssl": true, "cert": cert, "key": key}))
    }

    /// Chromium's pin of this certificate's public key: base64 of the SPKI's SHA-256.
    pub fn spki_pin(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&self.spki))
    }
}

/// Writes `text` to `path` (mode 0600) through a temporary file renamed over it.
pub fn replace(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp: PathBuf = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename onto {}", path.display()))?;
    Ok(())
}
