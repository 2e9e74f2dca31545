//! A throwaway PKI for the mTLS tests: a CA, and certificates it signs for the authority (server
//! names) and for agents (client auth), written as PEM files the binaries' `--tls-*` flags read.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::TempDir;

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA that signs test certificates into `dir`.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate (PEM).
    pub cert: PathBuf,
    dir: PathBuf,
}

impl TestCa {
    /// A new CA named `name`, its certificate written to `<dir>/<name>-ca.pem`.
    pub fn new(dir: &TempDir, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let cert = dir.write(&format!("{name}-ca.pem"), &issuer.pem());
        Self { issuer, cert, dir: dir.path().to_owned() }
    }

    /// A server certificate for `names` (DNS names or IP addresses), as `<file>.pem`/`<file>-key.pem`.
    pub fn server(&self, file: &str, names: &[&str]) -> CertFiles {
        self.issue(file, names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate (an agent's) with common name `name`.
    pub fn client(&self, file: &str, name: &str) -> CertFiles {
        self.issue(file, &[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, file: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> CertFiles {
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("parameters");
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("test"));
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signing");
        let cert_path = self.dir.join(format!("{file}.pem"));
        let key_path = self.dir.join(format!("{file}-key.pem"));
        // Written beside and renamed over, as a rotated Secret volume swaps files.
        for (path, pem) in [(&cert_path, cert.pem()), (&key_path, key.serialize_pem())] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, pem).expect("writing PEM");
            std::fs::rename(&tmp, path).expect("renaming PEM");
        }
        CertFiles { cert: cert_path, key: key_path }
    }
}
