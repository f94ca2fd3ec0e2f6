//! TLS for a connection ([`TlsOptions`]): TLS over TCP carrying the frame protocol, or `wss://`.
//! rustls on the ring provider; the server's certificate is checked against the roots given
//! (a custom CA's PEM for tests and private deployments, or any rustls `ClientConfig`) and the
//! name connected to (the host of the address, or [`TlsOptions::server_name`]).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::error::{Error, Result};

/// TLS settings of a connection: whom to trust, and the name the server's certificate must
/// carry.
#[derive(Clone)]
pub struct TlsOptions {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<String>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsOptions {
    /// Trusts the certificates (CA roots, or a self-signed server certificate) in `pem`.
    pub fn with_ca_pem(pem: &[u8]) -> Result<TlsOptions> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| Error::Tls(format!("the CA PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::Tls(format!("the CA PEM: {e}")))?;
        }
        if roots.is_empty() {
            return Err(Error::Tls(
                "the CA PEM holds no certificate (no -----BEGIN CERTIFICATE----- block)".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsOptions::from_config(Arc::new(config)))
    }

    /// Trusts the certificates in the PEM file at `path`.
    pub fn with_ca_file(path: impl AsRef<Path>) -> Result<TlsOptions> {
        let path = path.as_ref();
        let pem = std::fs::read(path)
            .map_err(|e| Error::Tls(format!("cannot read {}: {e}", path.display())))?;
        TlsOptions::with_ca_pem(&pem)
    }

    /// Uses a rustls client config as built by the caller (e.g. with the system's roots).
    pub fn from_config(config: Arc<rustls::ClientConfig>) -> TlsOptions {
        TlsOptions {
            config,
            server_name: None,
        }
    }

    /// The name the server's certificate must carry, instead of the host of the address.
    pub fn server_name(mut self, name: impl Into<String>) -> TlsOptions {
        self.server_name = Some(name.into());
        self
    }

    /// The TLS handshake over `tcp` to `addr` (`host:port`).
    pub(crate) async fn connect(&self, addr: &str, tcp: TcpStream) -> Result<Stream> {
        let host = match &self.server_name {
            Some(name) => name.as_str(),
            None => host_of(addr),
        };
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| Error::Tls(format!("{host:?} is not a server name: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| {
                let why = match e.kind() {
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => format!(
                        "the server closed the connection ({e}: at its connection limit, or not a TLS port?)"
                    ),
                    _ => e.to_string(),
                };
                Error::Tls(format!("TLS handshake with {addr}: {why}"))
            })?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// The host of `host:port` (`[::1]:4001` gives `::1`).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A connection's byte stream: plain TCP or TLS over it.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The server's certificate (DER), over TLS.
    pub(crate) fn peer_certificate(&self) -> Option<Vec<u8>> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(tls) => {
                let certs = tls.get_ref().1.peer_certificates()?;
                certs.first().map(|c| c.as_ref().to_vec())
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, data),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_an_address() {
        assert_eq!(host_of("127.0.0.1:4001"), "127.0.0.1");
        assert_eq!(host_of("localhost:4001"), "localhost");
        assert_eq!(host_of("[::1]:4001"), "::1");
    }

    #[test]
    fn a_ca_pem_without_certificates_is_refused() {
        let err = TlsOptions::with_ca_pem(b"nothing here").unwrap_err();
        assert!(err.to_string().contains("holds no certificate"), "{err}");
    }
}
