//! Building the rustls server configuration from wskit's [`Config`]: one PEM file holding the certificate chain
//! and the private key in any order (PKCS#8, PKCS#1 RSA or SEC1 EC keys, or an encrypted PKCS#8 key opened with
//! `ssl_passphrase`), ALPN, the minimum TLS version, and more certificates chosen by server name (SNI).
//!
//! Every fault is a [`TlsConfigError`] naming the file and what is wrong with it; nothing panics and nothing
//! falls back to plain text.

use crate::config::{Config, SniCert, TlsVersion};
use base64::Engine;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the TLS configuration could not be built; names the file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// The file cannot be read.
    FileUnreadable(PathBuf, String),
    /// No `CERTIFICATE` section in the file.
    NoCertificate(PathBuf),
    /// No private key section in the file.
    NoKey(PathBuf),
    /// The private key does not belong to the (first) certificate.
    KeyMismatch(PathBuf),
    /// The key is encrypted and no passphrase was given.
    PassphraseNeeded(PathBuf),
    /// The passphrase does not open the key.
    WrongPassphrase(PathBuf),
    /// A key kind or encryption wskit cannot use.
    UnsupportedKey(PathBuf, String),
    /// A PEM section is malformed.
    BadPem(PathBuf, String),
    /// rustls refused the configuration.
    Rustls(String),
    /// A TLS reload asked of a server that serves plain ws.
    NotTls,
    /// [`ServerHandle::reload_tls`](crate::ServerHandle::reload_tls) on a server whose TLS configuration the
    /// caller built ([`Server::bind_tls`](crate::Server::bind_tls)): there are no files to read again; give the
    /// new configuration with [`ServerHandle::set_tls_config`](crate::ServerHandle::set_tls_config).
    NotReloadable,
}

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsConfigError::FileUnreadable(p, e) => write!(f, "ssl_cert {}: cannot read the file: {e}", p.display()),
            TlsConfigError::NoCertificate(p) => {
                write!(f, "ssl_cert {}: no certificate (BEGIN CERTIFICATE) in the file", p.display())
            }
            TlsConfigError::NoKey(p) => write!(f, "ssl_cert {}: no private key in the file", p.display()),
            TlsConfigError::KeyMismatch(p) => {
                write!(f, "ssl_cert {}: the private key does not match the certificate", p.display())
            }
            TlsConfigError::PassphraseNeeded(p) => {
                write!(f, "ssl_cert {}: the private key is encrypted and no ssl_passphrase was given", p.display())
            }
            TlsConfigError::WrongPassphrase(p) => {
                write!(
                    f,
                    "ssl_cert {}: ssl_passphrase does not decrypt the private key (wrong passphrase)",
                    p.display()
                )
            }
            TlsConfigError::UnsupportedKey(p, why) => {
                write!(f, "ssl_cert {}: unsupported private key: {why}", p.display())
            }
            TlsConfigError::BadPem(p, why) => write!(f, "ssl_cert {}: malformed PEM: {why}", p.display()),
            TlsConfigError::Rustls(e) => write!(f, "TLS configuration refused: {e}"),
            TlsConfigError::NotTls => write!(f, "this server serves plain ws: it has no TLS configuration to replace"),
            TlsConfigError::NotReloadable => write!(
                f,
                "this server's TLS configuration was built by the caller (bind_tls), not from ssl_cert: there are no \
                 files to read again (use set_tls_config)"
            ),
        }
    }
}

impl std::error::Error for TlsConfigError {}

/// One PEM section: its label and decoded body.
struct Section {
    label: String,
    encrypted_legacy: bool,
    der: Vec<u8>,
}

fn parse_pem(path: &Path, text: &str) -> Result<Vec<Section>, TlsConfigError> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(label) = line.trim().strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        let mut encrypted_legacy = false;
        let mut closed = false;
        for l in lines.by_ref() {
            let l = l.trim();
            if l == end {
                closed = true;
                break;
            }
            if l.starts_with("Proc-Type:") && l.contains("ENCRYPTED") {
                encrypted_legacy = true;
            }
            if !l.contains(':') {
                body.push_str(l);
            }
        }
        if !closed {
            return Err(TlsConfigError::BadPem(path.into(), format!("no `{end}` line")));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|e| TlsConfigError::BadPem(path.into(), format!("{label}: {e}")))?;
        out.push(Section { label: label.to_string(), encrypted_legacy, der });
    }
    Ok(out)
}

/// Loads the certificate chain and key of one PEM file and checks that they belong together.
pub fn load_certified_key(
    path: &Path,
    passphrase: Option<&str>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsConfigError> {
    let text = std::fs::read(path).map_err(|e| TlsConfigError::FileUnreadable(path.into(), e.to_string()))?;
    let text = String::from_utf8_lossy(&text);
    let sections = parse_pem(path, &text)?;
    let certs: Vec<CertificateDer<'static>> =
        sections.iter().filter(|s| s.label == "CERTIFICATE").map(|s| CertificateDer::from(s.der.clone())).collect();
    let key_section =
        sections.iter().find(|s| s.label.ends_with("PRIVATE KEY")).ok_or_else(|| TlsConfigError::NoKey(path.into()))?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate(path.into()));
    }
    if key_section.encrypted_legacy {
        return Err(TlsConfigError::UnsupportedKey(
            path.into(),
            "legacy PEM encryption (Proc-Type: 4,ENCRYPTED); convert it with `openssl pkcs8 -topk8`".into(),
        ));
    }
    let key: PrivateKeyDer<'static> = match key_section.label.as_str() {
        "PRIVATE KEY" => PrivatePkcs8KeyDer::from(key_section.der.clone()).into(),
        "RSA PRIVATE KEY" => PrivatePkcs1KeyDer::from(key_section.der.clone()).into(),
        "EC PRIVATE KEY" => PrivateSec1KeyDer::from(key_section.der.clone()).into(),
        "ENCRYPTED PRIVATE KEY" => {
            let pass = passphrase.ok_or_else(|| TlsConfigError::PassphraseNeeded(path.into()))?;
            let info = pkcs8::EncryptedPrivateKeyInfo::try_from(key_section.der.as_slice())
                .map_err(|e| TlsConfigError::BadPem(path.into(), format!("encrypted key: {e}")))?;
            let doc = info.decrypt(pass).map_err(|e| match e {
                pkcs8::Error::EncryptedPrivateKey(pkcs8::pkcs5::Error::UnsupportedAlgorithm { .. }) => {
                    TlsConfigError::UnsupportedKey(path.into(), format!("key encryption: {e}"))
                }
                _ => TlsConfigError::WrongPassphrase(path.into()),
            })?;
            PrivatePkcs8KeyDer::from(doc.as_bytes().to_vec()).into()
        }
        other => {
            return Err(TlsConfigError::UnsupportedKey(path.into(), format!("`{other}` sections are not supported")))
        }
    };
    let signing = provider.key_provider.load_private_key(key).map_err(|e| {
        if key_section.label == "ENCRYPTED PRIVATE KEY" {
            // A wrong passphrase can still "decrypt" to garbage that is not a key.
            TlsConfigError::WrongPassphrase(path.into())
        } else {
            TlsConfigError::UnsupportedKey(path.into(), e.to_string())
        }
    })?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|_| TlsConfigError::KeyMismatch(path.into()))?;
    Ok(ck)
}

/// Chooses a certificate by the server name the client asked for; the default one otherwise.
#[derive(Debug)]
struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        hello
            .server_name()
            .and_then(|n| self.by_name.get(&n.to_ascii_lowercase()))
            .cloned()
            .or_else(|| self.default.clone())
    }
}

/// Builds the rustls configuration, or `None` when no certificate is configured (plain ws).
pub fn server_config(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, TlsConfigError> {
    if config.ssl_cert.is_none() && config.ssl_sni.is_empty() {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let default = match &config.ssl_cert {
        Some(p) => Some(Arc::new(load_certified_key(p, config.ssl_passphrase.as_deref(), &provider)?)),
        None => None,
    };
    let mut by_name = HashMap::new();
    for SniCert { name, pem, passphrase } in &config.ssl_sni {
        let ck = load_certified_key(pem, passphrase.as_deref().or(config.ssl_passphrase.as_deref()), &provider)?;
        by_name.insert(name.to_ascii_lowercase(), Arc::new(ck));
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = match config.ssl_min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { by_name, default }));
    tls.send_tls13_tickets = config.ssl_session_tickets;
    let h2 = config.http2.then(|| b"h2".to_vec());
    let others = config.ssl_alpn.iter().map(|p| p.as_bytes().to_vec()).filter(|p| p != b"h2");
    tls.alpn_protocols = h2.into_iter().chain(others).collect();
    Ok(Some(Arc::new(tls)))
}
