//! TLS on :443 as marathon-lb terminates it: the certificates of `--ssl-certs` and of the apps'
//! `HAPROXY_{n}_SSL_CERT` (PEM files holding a certificate chain and its key), the one for the
//! client's SNI chosen among them, else the first (HAProxy's default certificate). Without any,
//! a self-signed certificate is made at start, as marathon-lb's `run` script does.
use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ServerConfig,
    crypto::ring,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("reading certificate file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate file {path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// One PEM file: its chain and key.
#[derive(Clone)]
pub struct Cert {
    pub path: PathBuf,
    key: Arc<CertifiedKey>,
}

impl fmt::Debug for Cert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cert").field("path", &self.path).finish()
    }
}

impl Cert {
    /// Loads a PEM file holding the certificate chain (leaf first) and the private key.
    pub fn load(path: &Path) -> Result<Self, CertError> {
        let pem = std::fs::read(path).map_err(|source| CertError::Read {
            path: path.to_owned(),
            source,
        })?;
        let bad = |what: String| CertError::Pem {
            path: path.to_owned(),
            what,
        };
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("unreadable certificate: {e}")))?;
        if chain.is_empty() {
            return Err(bad("no certificate in it".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| bad(format!("no usable private key: {e}")))?;
        Self::from_parts(path.to_owned(), chain, key)
    }

    fn from_parts(
        path: PathBuf,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, CertError> {
        let signing = ring::sign::any_supported_type(&key).map_err(|e| CertError::Pem {
            path: path.clone(),
            what: format!("unsupported private key: {e}"),
        })?;
        let key = CertifiedKey::new(chain, signing);
        key.keys_match().map_err(|e| CertError::Pem {
            path: path.clone(),
            what: format!("the key does not belong to the certificate: {e}"),
        })?;
        Ok(Self {
            path,
            key: Arc::new(key),
        })
    }

    /// A self-signed certificate for `names` (the default when no certificate is given).
    pub fn self_signed(names: Vec<String>) -> Result<Self, CertError> {
        let ck = rcgen::generate_simple_self_signed(names)
            .map_err(|e| CertError::Generate(e.to_string()))?;
        let key = PrivateKeyDer::try_from(ck.key_pair.serialize_der())
            .map_err(|e| CertError::Generate(e.to_string()))?;
        Self::from_parts(
            PathBuf::from("(self-signed)"),
            vec![ck.cert.der().clone()],
            key,
        )
    }

    fn valid_for(&self, name: &ServerName<'_>) -> bool {
        let Some(leaf) = self.key.end_entity_cert().ok() else {
            return false;
        };
        webpki::EndEntityCert::try_from(leaf)
            .is_ok_and(|c| c.verify_is_valid_for_subject_name(name).is_ok())
    }
}

/// Picks the certificate for the SNI the client sent: the first valid for it, else the first.
#[derive(Debug)]
pub struct BySni {
    certs: Vec<Cert>,
}

impl BySni {
    pub fn new(certs: Vec<Cert>) -> Self {
        Self { certs }
    }

    /// The certificate served for `sni` (None: no SNI).
    pub fn pick(&self, sni: Option<&str>) -> Option<&Cert> {
        let by_name = sni
            .and_then(|s| ServerName::try_from(s.to_owned()).ok())
            .and_then(|name| self.certs.iter().find(|c| c.valid_for(&name)));
        by_name.or_else(|| self.certs.first())
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name()).map(|c| c.key.clone())
    }
}

/// A rustls server configuration serving `certs` by SNI, HTTP/1.1 only.
pub fn server_config(certs: Vec<Cert>) -> Result<Arc<ServerConfig>, CertError> {
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni::new(certs)));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    Ok(Arc::new(cfg))
}

/// The certificates for :443: `files` (`--ssl-certs`, then the apps' `SSL_CERT`s), skipping and
/// reporting those that do not load; a self-signed one when none does.
pub fn load_all(files: &[PathBuf]) -> (Vec<Cert>, Vec<CertError>) {
    let mut certs = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match Cert::load(f) {
            Ok(c) => certs.push(c),
            Err(e) => errors.push(e),
        }
    }
    (certs, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_file(dir: &Path, name: &str, names: &[&str]) -> PathBuf {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let path = dir.join(name);
        std::fs::write(&path, ck.cert.pem() + &ck.key_pair.serialize_pem()).unwrap();
        path
    }

    #[test]
    fn sni_picks_the_matching_certificate_else_the_first() {
        let dir = std::env::temp_dir().join(format!("lb-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = pem_file(&dir, "a.pem", &["a.example.com"]);
        let b = pem_file(&dir, "b.pem", &["*.b.example.com", "b.example.com"]);
        let (certs, errors) = load_all(&[a.clone(), b.clone(), dir.join("missing.pem")]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].to_string().contains("missing.pem"),
            "{}",
            errors[0]
        );
        let sni = BySni::new(certs);
        let path = |s: Option<&str>| sni.pick(s).map(|c| c.path.clone());
        assert_eq!(path(Some("a.example.com")), Some(a.clone()));
        assert_eq!(path(Some("b.example.com")), Some(b.clone()));
        assert_eq!(path(Some("www.b.example.com")), Some(b.clone()));
        assert_eq!(
            path(Some("c.example.com")),
            Some(a.clone()),
            "default: first"
        );
        assert_eq!(path(None), Some(a));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_without_key_is_refused_with_its_path() {
        let dir = std::env::temp_dir().join(format!("lb-tls-nokey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["x.org".to_string()]).unwrap();
        let path = dir.join("cert-only.pem");
        std::fs::write(&path, ck.cert.pem()).unwrap();
        let e = Cert::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("cert-only.pem") && e.contains("private key"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn self_signed_serves() {
        let c = Cert::self_signed(vec!["localhost".into()]).unwrap();
        assert!(server_config(vec![c]).is_ok());
    }
}
