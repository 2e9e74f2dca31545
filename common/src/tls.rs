//! TLS for the gRPC link between agents and the authority: PEM files read into rustls types with
//! errors that name the flag and the file, and the authority's server config rebuilt when its files
//! change (cert-manager and kubelet rotate mounted Secrets in place), so a rotation needs no restart.
//!
//! The crypto provider is ring's, given explicitly: the process never depends on a process-wide
//! default provider (two providers linked at once panic at first use: crate-stack.md, gotcha 1).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS file that cannot be used, named by the flag that gave it.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {}: {message}", path.display())]
pub struct TlsError {
    pub key: &'static str,
    pub path: PathBuf,
    pub message: String,
}

fn error(key: &'static str, path: &Path, message: impl Into<String>) -> TlsError {
    TlsError { key, path: path.to_owned(), message: message.into() }
}

/// One file and the flag that named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFile {
    pub key: &'static str,
    pub path: PathBuf,
}

impl TlsFile {
    pub fn new(key: &'static str, path: impl Into<PathBuf>) -> Self {
        Self { key, path: path.into() }
    }

    pub fn read(&self) -> Result<Vec<u8>, TlsError> {
        std::fs::read(&self.path).map_err(|e| error(self.key, &self.path, e.to_string()))
    }

    /// Every certificate in the file (a chain: leaf first), at least one.
    pub fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let pem = self.read()?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| error(self.key, &self.path, format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(error(
                self.key,
                &self.path,
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            ));
        }
        Ok(certs)
    }

    /// The file's private key (PKCS#8, PKCS#1 or SEC1 PEM).
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        let pem = self.read()?;
        PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| error(self.key, &self.path, format!("holds no usable PEM private key: {e}")))
    }

    /// The trust anchors a CA bundle holds.
    pub fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in self.certificates()? {
            roots
                .add(cert)
                .map_err(|e| error(self.key, &self.path, format!("not a usable CA certificate: {e}")))?;
        }
        Ok(roots)
    }

    /// What changes when the file is replaced: kubelet swaps a `..data` symlink, cert-manager
    /// rewrites in place; either moves the modification time or the size.
    fn stamp(&self) -> Option<(SystemTime, u64)> {
        let meta = std::fs::metadata(&self.path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    }
}

/// Each file's [`TlsFile::stamp`], in order.
type Stamps = Vec<Option<(SystemTime, u64)>>;

/// The authority's side: its certificate and key, and the CA that signs agents' certificates.
/// Without a client CA any client may connect over TLS (server authentication only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    pub cert: TlsFile,
    pub key: TlsFile,
    pub client_ca: Option<TlsFile>,
}

impl ServerTlsFiles {
    /// A rustls server config from the files: HTTP/2 only (ALPN `h2`, as gRPC needs), and client
    /// certificates required and verified against the client CA when one is given.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| error(self.cert.key, &self.cert.path, e.to_string()))?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(ca.roots()?),
                    provider,
                )
                .build()
                .map_err(|e| error(ca.key, &ca.path, e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder.with_single_cert(self.cert.certificates()?, self.key.private_key()?).map_err(|e| {
                error(self.key.key, &self.key.path, format!("does not match the certificate: {e}"))
            })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    fn stamps(&self) -> Stamps {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(TlsFile::stamp)
            .collect()
    }
}

/// The server config in use, rebuilt from the files when one of them has changed since it was
/// built. [`ReloadingServerConfig::current`] is called once per accepted connection: three
/// `stat`s, and a rebuild only after a change. A rebuild that fails keeps the last good config
/// and logs the file at fault once per change, so a half-written rotation cannot stop new agents
/// from connecting with the old certificate.
pub struct ReloadingServerConfig {
    files: ServerTlsFiles,
    state: Mutex<(Stamps, Arc<rustls::ServerConfig>)>,
}

impl ReloadingServerConfig {
    /// Builds the first config: an error here is a start-up error naming the flag and file.
    pub fn new(files: ServerTlsFiles) -> Result<Self, TlsError> {
        let stamps = files.stamps();
        let config = files.server_config()?;
        Ok(Self { files, state: Mutex::new((stamps, config)) })
    }

    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }

    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        let stamps = self.files.stamps();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.0 != stamps {
            // Recorded even when the rebuild fails: the error is logged once, not per connection.
            state.0 = stamps;
            match self.files.server_config() {
                Ok(config) => {
                    tracing::info!(cert = %self.files.cert.path.display(), "gRPC TLS files changed; new connections use them");
                    metrics::counter!("nodedns_grpc_tls_reloads_total", "result" => "ok").increment(1);
                    state.1 = config;
                }
                Err(e) => {
                    tracing::error!(error = %e, "gRPC TLS files changed but cannot be used; keeping the previous certificate");
                    metrics::counter!("nodedns_grpc_tls_reloads_total", "result" => "error").increment(1);
                }
            }
        }
        Arc::clone(&state.1)
    }
}

/// An agent's side: the CA that signs the authority's certificate, the agent's own certificate and
/// key for mutual TLS, and the name to expect in the authority's certificate (default: the host
/// of the authority URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    pub ca: TlsFile,
    /// Certificate and key.
    pub identity: Option<(TlsFile, TlsFile)>,
    pub server_name: Option<String>,
}

impl ClientTlsFiles {
    /// Reads and parses every file, so a bad one fails at start naming its flag rather than at
    /// each connection attempt.
    pub fn check(&self) -> Result<(), TlsError> {
        self.ca.roots()?;
        if let Some((cert, key)) = &self.identity {
            cert.certificates()?;
            key.private_key()?;
        }
        Ok(())
    }
}
