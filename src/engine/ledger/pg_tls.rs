//! TLS to a shared PostgreSQL ledger, over rustls (the same rustls and aws-lc-rs
//! provider reqwest already uses; no OpenSSL).
//!
//! The URL's `sslmode` follows libpq: `disable` (plaintext), `prefer` (TLS when the
//! server offers it, unverified; plaintext otherwise), `require` (TLS or nothing,
//! unverified unless `sslrootcert` is given, then as `verify-ca`), `verify-ca` (the
//! chain must lead to a root in `sslrootcert`) and `verify-full` (and the certificate
//! must name the host). `sslrootcert=PATH` names a PEM file of roots;
//! `sslrootcert=system` uses the system's roots; without it the verifying modes read
//! libpq's `~/.postgresql/root.crt`.
//!
//! One departure from libpq: without `sslmode` in the URL, a database on this
//! machine (`localhost`, a loopback address, a Unix socket) gets `prefer`, and any
//! other host gets `require`. libpq's `prefer` quietly falls back to plaintext, which
//! for a database across a network sends the password exchange and every prompt in
//! the clear; a remote ledger must say `sslmode=prefer` (or `disable`) to allow that.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plaintext only.
    Disable,
    /// TLS if the server offers it (unverified), else plaintext.
    Prefer,
    /// TLS, certificate not verified (unless a root file is named).
    Require,
    /// TLS, chain verified against the roots.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "disable" => Mode::Disable,
            "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            _ => return None,
        })
    }

    /// Its libpq name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Disable => "disable",
            Mode::Prefer => "prefer",
            Mode::Require => "require",
            Mode::VerifyCa => "verify-ca",
            Mode::VerifyFull => "verify-full",
        }
    }
}

/// Where trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// A PEM file.
    File(PathBuf),
    /// The operating system's store.
    System,
}

/// A file named by a parameter, with where it was named (`sslkey` in the URL, or
/// libpq's `PGSSLKEY` variable), for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileParam {
    /// The file.
    pub path: PathBuf,
    /// `sslcert`, `sslkey`, `sslcrl`, or the variable that gave it.
    pub via: &'static str,
}

impl std::fmt::Display for FileParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.via, self.path.display())
    }
}

/// The TLS parameters a URL names (each `None` when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlTls {
    /// `sslmode`.
    pub mode: Option<Mode>,
    /// `sslrootcert`.
    pub root: Option<Roots>,
    /// `sslcert`: the client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// `sslkey`: its private key (PEM).
    pub key: Option<PathBuf>,
    /// `sslcrl`: revoked certificates (PEM CRLs).
    pub crl: Option<PathBuf>,
}

/// The TLS settings of a ledger URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The mode in force.
    pub mode: Mode,
    /// Whether the URL (or `PGSSLMODE`) said it (otherwise the default for its host).
    pub explicit: bool,
    /// Which said it: `sslmode` or `PGSSLMODE`.
    pub mode_via: &'static str,
    /// `sslrootcert`, as given.
    pub root: Option<Roots>,
    /// The client certificate and its key (`sslcert`, `sslkey`).
    pub client: Option<(FileParam, FileParam)>,
    /// `sslcrl`.
    pub crl: Option<FileParam>,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Take the TLS parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `sslcrl`,
/// which tokio-postgres does not know, or knows only in part) out of a `postgres://`
/// URL's query. Returns the URL left and what was taken. `sslpassword` (encrypted
/// keys), `sslcrldir` and `sslsni` are refused by name.
pub fn split_url(url: &str) -> Result<(String, UrlTls), String> {
    // The query starts after the authority (a raw `?` in a password is not one).
    let rest = url.find("://").map_or(0, |i| i + 3);
    let path = url[rest..].find('/').map_or(url.len(), |i| rest + i);
    let host = url[rest..path].rfind('@').map_or(rest, |i| rest + i + 1);
    let Some(q) = url[host..].find('?').map(|i| host + i) else {
        return Ok((url.to_string(), UrlTls::default()));
    };
    let (base, query) = (&url[..q], &url[q + 1..]);
    let mut t = UrlTls::default();
    let mut kept: Vec<&str> = Vec::new();
    let file = |k: &str, v: &str| {
        let v = percent_decode(v);
        if v.is_empty() {
            Err(format!("{k} is empty (give the path of a PEM file)"))
        } else {
            Ok(Some(PathBuf::from(v)))
        }
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(k).as_str() {
            "sslmode" => {
                let v = percent_decode(v);
                t.mode = Some(Mode::parse(&v).ok_or_else(|| {
                    format!(
                        "sslmode={v} is not one of disable, prefer, require, verify-ca, verify-full"
                    )
                })?);
            }
            "sslrootcert" => t.root = Some(parse_roots(&percent_decode(v))?),
            "sslcert" => t.cert = file("sslcert", v)?,
            "sslkey" => t.key = file("sslkey", v)?,
            "sslcrl" => t.crl = file("sslcrl", v)?,
            "sslpassword" => {
                return Err(
                    "sslpassword is not supported: give sslkey an unencrypted key \
                     (openssl pkey -in key.pem -out plain.key; chmod 600 plain.key)"
                        .into(),
                )
            }
            k @ ("sslcrldir" | "sslsni") => {
                return Err(format!(
                    "{k} is not supported (sslcrl=FILE names a PEM file of CRLs)"
                ));
            }
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, t))
}

/// `sslrootcert`'s value: `system`, or a file.
pub fn parse_roots(v: &str) -> Result<Roots, String> {
    if v == "system" {
        Ok(Roots::System)
    } else if v.is_empty() {
        Err("sslrootcert is empty (give a PEM file, or `system`)".into())
    } else {
        Ok(Roots::File(PathBuf::from(v)))
    }
}

/// `sslmode`'s value.
pub fn parse_mode(v: &str) -> Option<Mode> {
    Mode::parse(v)
}

/// Whether every host of `cfg` is this machine (a Unix socket, `localhost`, a loopback
/// address).
pub fn all_local(cfg: &tokio_postgres::Config) -> bool {
    let hosts_local = cfg.get_hosts().iter().all(|h| match h {
        Host::Tcp(name) => {
            let n = name.trim_start_matches('[').trim_end_matches(']');
            n.eq_ignore_ascii_case("localhost")
                || n.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        Host::Unix(_) => true,
    });
    let addrs_local = cfg.get_hostaddrs().iter().all(|a| a.is_loopback());
    hosts_local && addrs_local
}

/// The mode in force for `cfg`: the URL's, or `prefer` for a database on this machine
/// and `require` for any other.
pub fn settings(cfg: &tokio_postgres::Config, mode: Option<Mode>, root: Option<Roots>) -> Settings {
    let (mode, explicit) = match mode {
        Some(m) => (m, true),
        None if all_local(cfg) => (Mode::Prefer, false),
        None => (Mode::Require, false),
    };
    Settings {
        mode,
        explicit,
        mode_via: "sslmode",
        root,
        client: None,
        crl: None,
    }
}

impl Settings {
    /// tokio-postgres's mode for the negotiation (verification is ours).
    pub fn ssl_mode(&self) -> SslMode {
        match self.mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        }
    }

    /// How the mode was chosen, for messages: `sslmode=verify-full`, or
    /// `sslmode=require (the default for a remote host)`.
    pub fn describe(&self) -> String {
        if self.explicit {
            format!("{}={}", self.mode_via, self.mode.as_str())
        } else if self.mode == Mode::Prefer {
            "sslmode=prefer (the default for a database on this machine)".into()
        } else {
            "sslmode=require (the default for a remote database)".into()
        }
    }

    /// The connector, or why the roots, the client certificate or the CRLs cannot be
    /// loaded.
    pub fn connector(&self) -> Result<Option<RustlsConnect>, String> {
        if self.mode == Mode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        // `require` with a root file named checks the chain, as libpq does.
        let check = match (self.mode, &self.root) {
            (Mode::VerifyFull, _) => Check::Full,
            (Mode::VerifyCa, _) | (Mode::Require, Some(_)) => Check::Chain,
            _ => Check::Nothing,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match check {
            Check::Nothing => {
                if let Some(crl) = &self.crl {
                    // libpq would ignore it; a revocation list that is never checked
                    // is a setting that does not do what it says.
                    return Err(format!(
                        "{crl} is only checked when the server's certificate is: use \
                         sslmode=verify-full (or verify-ca) with sslrootcert, or drop {}",
                        crl.via
                    ));
                }
                Arc::new(AcceptAny(provider.clone()))
            }
            Check::Chain | Check::Full => {
                let roots = load_roots(self.root.as_ref(), self.mode)?;
                let mut builder =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                if let Some(crl) = &self.crl {
                    // As libpq (OpenSSL's CRL_CHECK_ALL): every certificate of the
                    // chain must be covered, and a CRL past its next update fails.
                    builder = builder
                        .with_crls(load_crls(crl)?)
                        .enforce_revocation_expiration();
                }
                let inner = builder.build().map_err(|e| match &self.crl {
                    Some(crl) => format!("cannot use the root certificates with {crl}: {e}"),
                    None => format!("cannot use the root certificates: {e}"),
                })?;
                Arc::new(Verify {
                    inner,
                    names: check == Check::Full,
                })
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &self.client {
            None => config.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = load_client_cert(cert)?;
                let der = load_client_key(key)?;
                config.with_client_auth_cert(chain, der).map_err(|e| {
                    format!(
                        "{cert} and {key} do not go together ({e}): give the key made with \
                         that certificate"
                    )
                })?
            }
        };
        Ok(Some(RustlsConnect {
            config: Arc::new(config),
            names: check == Check::Full,
        }))
    }
}

/// A PEM parse error in words (rustls prints the markers as byte lists).
fn pem_reason(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { end_marker } => {
            let label = String::from_utf8_lossy(end_marker);
            let label = label.trim();
            format!("a `-----BEGIN {label}-----` section has no `-----END {label}-----` line")
        }
        E::IllegalSectionStart { line } => {
            format!("malformed line `{}`", String::from_utf8_lossy(line).trim())
        }
        E::Base64Decode(e) => format!("bad base64 ({e})"),
        other => other.to_string(),
    }
}

/// The client's certificate chain from a PEM file.
fn load_client_cert(f: &FileParam) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(&f.path).map_err(|e| format!("cannot read {f}: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{f} is not PEM: {}", pem_reason(&e)))?;
    if chain.is_empty() {
        return Err(format!(
            "{f} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(chain)
}

/// libpq's rule for a private key file: none of group/others' bits when it is
/// ours, at most group read when root owns it (0600 / 0640 or stricter).
fn key_permissions_ok(mode: u32, owner: u32, me: u32) -> bool {
    if owner == me && mode & 0o077 != 0 {
        return false;
    }
    !(owner == 0 && mode & 0o037 != 0)
}

/// The client's private key from a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC), after
/// libpq's permission check.
fn load_client_key(f: &FileParam) -> Result<PrivateKeyDer<'static>, String> {
    let meta = std::fs::metadata(&f.path).map_err(|e| format!("cannot read {f}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{f} is not a regular file"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        let me = unsafe { libc::geteuid() };
        if !key_permissions_ok(meta.mode(), meta.uid(), me) {
            return Err(format!(
                "{f} has group or world access (mode {:04o}); as libpq, the key must be \
                 u=rw (0600) or less when owned by you, or u=rw,g=r (0640) or less when \
                 owned by root: chmod 600 {}",
                meta.mode() & 0o7777,
                f.path.display()
            ));
        }
    }
    let pem = std::fs::read(&f.path).map_err(|e| format!("cannot read {f}: {e}"))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        if pem.windows(b"ENCRYPTED".len()).any(|w| w == b"ENCRYPTED") {
            format!(
                "{f} is encrypted, and quorum takes no key password: decrypt it \
                 (openssl pkey -in KEY -out plain.key; chmod 600 plain.key)"
            )
        } else if matches!(e, rustls::pki_types::pem::Error::NoItemsFound) {
            format!(
                "{f} holds no private key (expected PEM: PRIVATE KEY, RSA PRIVATE KEY or \
                 EC PRIVATE KEY)"
            )
        } else {
            format!("{f} is not a PEM private key: {}", pem_reason(&e))
        }
    })
}

/// Certificate revocation lists from a PEM file.
fn load_crls(f: &FileParam) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let pem = std::fs::read(&f.path).map_err(|e| format!("cannot read {f}: {e}"))?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{f} is not PEM: {}", pem_reason(&e)))?;
    if crls.is_empty() {
        return Err(format!(
            "{f} holds no CRL (expected PEM: -----BEGIN X509 CRL-----)"
        ));
    }
    Ok(crls)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    Full,
}

fn default_root_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".postgresql").join("root.crt"))
}

fn load_roots(root: Option<&Roots>, mode: Mode) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let file = match root {
        Some(Roots::System) => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = store.add(c);
            }
            if store.is_empty() {
                return Err("sslrootcert=system, but no system root certificates were found".into());
            }
            return Ok(store);
        }
        Some(Roots::File(p)) => p.clone(),
        None => match default_root_file().filter(|p| p.exists()) {
            Some(p) => p,
            None => {
                return Err(format!(
                    "sslmode={} needs the server's root certificate: add sslrootcert=/path/to/root.crt \
                     to the URL (or sslrootcert=system for the system's roots, or put it in \
                     ~/.postgresql/root.crt)",
                    mode.as_str()
                ))
            }
        },
    };
    let pem = std::fs::read(&file)
        .map_err(|e| format!("cannot read sslrootcert {}: {e}", file.display()))?;
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| {
            format!(
                "sslrootcert {} is not PEM: {}",
                file.display(),
                pem_reason(&e)
            )
        })?;
        store
            .add(c)
            .map_err(|e| format!("sslrootcert {}: {e}", file.display()))?;
        n += 1;
    }
    if n == 0 {
        return Err(format!(
            "sslrootcert {} holds no certificate",
            file.display()
        ));
    }
    Ok(store)
}

/// `prefer` / `require`: encrypted, the certificate unchecked (as libpq); the
/// handshake's own signatures are still checked.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` (chain only) and `verify-full` (chain and name).
#[derive(Debug)]
struct Verify {
    inner: Arc<WebPkiServerVerifier>,
    names: bool,
}

impl ServerCertVerifier for Verify {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Makes a rustls connector per connection (tokio-postgres's `MakeTlsConnect`).
#[derive(Clone)]
pub struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
    names: bool,
}

/// A connector for one host.
pub struct RustlsConnector {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

/// A TLS error with the host's name, so that the message says what was checked.
#[derive(Debug)]
pub struct TlsFailure(pub String);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsFailure {}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnector;
    type Error = TlsFailure;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnector, TlsFailure> {
        let name = match ServerName::try_from(domain.to_string()) {
            Ok(n) => n,
            // A Unix socket (no name; the server never offers TLS there) or an odd
            // name: only verify-full needs it.
            Err(_) if !self.names => ServerName::try_from("localhost").expect("a valid name"),
            Err(e) => {
                return Err(TlsFailure(format!(
                "sslmode=verify-full needs a host name to check, and {domain:?} is not one ({e})"
            )))
            }
        };
        Ok(RustlsConnector {
            config: self.config.clone(),
            name,
        })
    }
}

impl<S> TlsConnect<S> for RustlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let c = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move {
            c.connect(self.name, stream)
                .await
                .map(|s| RustlsStream(Box::new(s)))
        })
    }
}

/// A TLS session to the server.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM-SHA-256-PLUS binds the login to this TLS session (RFC 5929
        // tls-server-end-point), so even an unverified `require` link cannot be relayed
        // by a man in the middle. Without a known hash the login is plain SCRAM.
        let (_, conn) = self.0.get_ref();
        match conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| server_end_point(c.as_ref()))
        {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// One DER element at the start of `b`: (tag, contents, rest).
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, b) = b.split_first()?;
    let (len, b) = if first < 0x80 {
        (first as usize, b)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n].iter().fold(0usize, |a, &x| (a << 8) | x as usize);
        (len, &b[n..])
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// RFC 5929's tls-server-end-point: the certificate hashed with its signature's hash
/// (SHA-256 for MD5 and SHA-1). `None` for a signature without one hash (Ed25519,
/// RSASSA-PSS), as PostgreSQL itself.
fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    let (0x30, body, _) = der(cert)? else {
        return None;
    };
    let (_, _tbs, rest) = der(body)?;
    let (0x30, alg, _) = der(rest)? else {
        return None;
    };
    let (0x06, oid, _) = der(alg)? else {
        return None;
    };
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let bits = match oid {
        // md5, sha1, sha256 WithRSAEncryption
        [p @ .., 0x04 | 0x05 | 0x0b] if p == RSA => 256,
        [p @ .., 0x0c] if p == RSA => 384,
        [p @ .., 0x0d] if p == RSA => 512,
        // ecdsa-with-SHA1, ecdsa-with-SHA256/384/512
        [p @ .., 0x01] if p == ECDSA => 256,
        [p @ .., 0x03, 0x02] if p == ECDSA => 256,
        [p @ .., 0x03, 0x03] if p == ECDSA => 384,
        [p @ .., 0x03, 0x04] if p == ECDSA => 512,
        _ => return None,
    };
    Some(match bits {
        256 => sha2::Sha256::digest(cert).to_vec(),
        384 => sha2::Sha384::digest(cert).to_vec(),
        _ => sha2::Sha512::digest(cert).to_vec(),
    })
}

/// The text of `e` and its causes.
fn chain_text(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Whether `e` is a TLS failure (handshake, certificate, or a server without TLS), as
/// opposed to a database that is away: one is a setting to fix, the other passes.
/// Under TLS 1.3 the server's verdict on our client certificate arrives after the
/// handshake, as an alert on the first read: that is a TLS failure too.
pub fn is_tls_error(e: &tokio_postgres::Error) -> bool {
    e.to_string().starts_with("error performing TLS handshake")
        || chain_text(e).contains("received fatal alert")
}

/// A sentence for a TLS failure: what failed, and what to change.
pub fn explain(e: &tokio_postgres::Error) -> String {
    let cause = if e.to_string().starts_with("error performing TLS handshake") {
        std::error::Error::source(e)
            .map(|c| c.to_string())
            .unwrap_or_else(|| e.to_string())
    } else {
        chain_text(e)
    };
    let hint = if cause.contains("does not support TLS") {
        "the server does not offer TLS and the sslmode in force requires it (require is the \
         default for a remote database): enable ssl on the server, or set sslmode=disable in \
         [ledger] url if plaintext is acceptable"
    } else if cause.contains("UnknownRevocationStatus") {
        "sslcrl holds no CRL from the CA that issued a certificate of the server's chain \
         (every certificate of the chain must be covered, as libpq): add that CA's CRL to the file"
    } else if cause.contains("Revoked") {
        "the server's certificate is revoked by a CRL in sslcrl: the server needs a new \
         certificate"
    } else if cause.contains("revocation list expired") || cause.contains("ExpiredRevocationList") {
        "the CRL in sslcrl is past its next update: fetch a fresh one from the CA"
    } else if cause.contains("received fatal alert: CertificateRequired") {
        "the server requires a client certificate: set sslcert and sslkey in [ledger] url \
         (or PGSSLCERT and PGSSLKEY)"
    } else if cause.contains("received fatal alert") {
        "the server refused the TLS session, most likely our client certificate (sslcert): \
         it must be signed by a CA in the server's ssl_ca_file, unexpired and unrevoked"
    } else if cause.contains("UnknownIssuer") || cause.contains("unknown issuer") {
        "the server's certificate is not signed by a root in sslrootcert"
    } else if cause.contains("NotValidForName") || cause.contains("not valid for name") {
        "the server's certificate does not name this host (sslmode=verify-ca checks the chain only)"
    } else if cause.contains("Expired") || cause.contains("expired") {
        "the server's certificate has expired"
    } else {
        "check the server's certificate, and sslmode / sslrootcert in [ledger] url"
    };
    format!("TLS failed: {cause}: {hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> tokio_postgres::Config {
        url.parse().unwrap()
    }

    #[test]
    fn the_tls_parameters_are_taken_out_of_the_url() {
        let (u, t) = split_url(
            "postgres://q:pw@db/l?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem\
             &sslcert=/c.crt&sslkey=/c.key&sslcrl=/c.crl",
        )
        .unwrap();
        assert_eq!(u, "postgres://q:pw@db/l?application_name=x");
        assert_eq!(t.mode, Some(Mode::VerifyFull));
        assert_eq!(t.root, Some(Roots::File("/etc/ca.pem".into())));
        assert_eq!(t.cert, Some("/c.crt".into()));
        assert_eq!(t.key, Some("/c.key".into()));
        assert_eq!(t.crl, Some("/c.crl".into()));
        let (u, t) = split_url("postgres://db/l?sslmode=require").unwrap();
        assert_eq!(
            (u.as_str(), t.mode, t.root),
            ("postgres://db/l", Some(Mode::Require), None)
        );
        assert_eq!(
            split_url("postgres://db/l?sslrootcert=system")
                .unwrap()
                .1
                .root,
            Some(Roots::System)
        );
        let e = split_url("postgres://db/l?sslmode=allow-ish").unwrap_err();
        assert!(e.contains("allow-ish") && e.contains("verify-full"), "{e}");
        // A raw `?` in the password is not the query.
        let (u, t) = split_url("postgres://q:p?w@db/l?sslmode=disable").unwrap();
        assert_eq!(
            (u.as_str(), t.mode),
            ("postgres://q:p?w@db/l", Some(Mode::Disable))
        );
        assert_eq!(split_url("postgres://q:p?w@db/l").unwrap().1.mode, None);
        for k in ["sslcrldir", "sslsni", "sslpassword"] {
            let e = split_url(&format!("postgres://db/l?{k}=x")).unwrap_err();
            assert!(e.contains(k), "{e}");
        }
    }

    #[test]
    fn without_sslmode_local_prefers_and_remote_requires() {
        for local in [
            "postgres://q@localhost/l",
            "postgres://q@127.0.0.1:5433/l",
            "postgres://q@[::1]/l",
            "postgres://q@%2Frun%2Fpostgresql/l",
        ] {
            let s = settings(&cfg(local), None, None);
            assert_eq!(s.mode, Mode::Prefer, "{local}");
            assert!(!s.explicit);
        }
        for remote in ["postgres://q@db.example.com/l", "postgres://q@10.0.0.5/l"] {
            assert_eq!(
                settings(&cfg(remote), None, None).mode,
                Mode::Require,
                "{remote}"
            );
        }
        let s = settings(
            &cfg("postgres://q@db.example.com/l"),
            Some(Mode::Prefer),
            None,
        );
        assert_eq!((s.mode, s.explicit), (Mode::Prefer, true));
    }

    #[test]
    fn verifying_without_a_root_says_how_to_give_one() {
        let s = Settings {
            mode: Mode::VerifyFull,
            explicit: true,
            mode_via: "sslmode",
            root: Some(Roots::File("/nonexistent/quorum-root.crt".into())),
            client: None,
            crl: None,
        };
        let e = s.connector().err().unwrap();
        assert!(e.contains("/nonexistent/quorum-root.crt"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("root.crt");
        std::fs::write(&bad, "not a certificate").unwrap();
        let s = Settings {
            root: Some(Roots::File(bad)),
            ..s
        };
        let e = s.connector().err().unwrap();
        assert!(e.contains("no certificate"), "{e}");
        let s = Settings {
            mode: Mode::Require,
            explicit: true,
            mode_via: "sslmode",
            root: None,
            client: None,
            crl: None,
        };
        assert!(s.connector().unwrap().is_some());
    }

    #[test]
    fn a_key_file_follows_libpqs_permission_rule() {
        let (me, root) = (1000, 0);
        assert!(key_permissions_ok(0o100600, me, me));
        assert!(key_permissions_ok(0o100400, me, me));
        assert!(!key_permissions_ok(0o100640, me, me));
        assert!(!key_permissions_ok(0o100604, me, me));
        // Owned by root (and we are not root): group read is allowed.
        assert!(key_permissions_ok(0o100640, root, me));
        assert!(!key_permissions_ok(0o100660, root, me));
        assert!(!key_permissions_ok(0o100644, root, me));
        // We are root: as any owner.
        assert!(!key_permissions_ok(0o100640, root, root));
        // Someone else's file: the server decides.
        assert!(key_permissions_ok(0o100644, 1001, me));
    }

    #[test]
    fn client_certificate_and_crl_files_are_refused_clearly() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str, mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let param = |path: &Path, via| FileParam {
            path: path.to_path_buf(),
            via,
        };
        let garbage = file("garbage.pem", "not PEM at all", 0o600);
        let open_key = file("open.key", "-----BEGIN PRIVATE KEY-----\n", 0o644);
        let enc = file(
            "enc.key",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            0o600,
        );
        let missing = dir.path().join("missing.crt");
        let client = |c: &Path, k: &Path| Settings {
            mode: Mode::Require,
            explicit: true,
            mode_via: "sslmode",
            root: None,
            client: Some((param(c, "sslcert"), param(k, "PGSSLKEY"))),
            crl: None,
        };
        let err = |s: Settings| s.connector().err().expect("refused");

        let e = err(client(&missing, &garbage));
        assert!(
            e.contains("cannot read sslcert") && e.contains("missing.crt"),
            "{e}"
        );
        let e = err(client(&garbage, &garbage));
        assert!(
            e.contains("sslcert") && e.contains("holds no certificate"),
            "{e}"
        );

        // The key's checks, with a certificate that parses.
        let cert = file(
            "c.crt",
            "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
            0o644,
        );
        let e = err(client(&cert, &open_key));
        assert!(
            e.contains("PGSSLKEY") && e.contains("group or world access") && e.contains("0644"),
            "{e}"
        );
        assert!(
            e.contains(&format!("chmod 600 {}", open_key.display())),
            "{e}"
        );
        let e = err(client(&cert, &garbage));
        assert!(
            e.contains("PGSSLKEY") && e.contains("holds no private key"),
            "{e}"
        );
        let e = err(client(&cert, &enc));
        assert!(e.contains("is encrypted"), "{e}");
        let e = err(client(&cert, &dir.path().join("nokey")));
        assert!(
            e.contains("cannot read PGSSLKEY") && e.contains("nokey"),
            "{e}"
        );

        // A CRL is refused where nothing would check it, and a bad one named.
        let crl = |mode, root| Settings {
            mode,
            explicit: true,
            mode_via: "sslmode",
            root,
            client: None,
            crl: Some(param(&garbage, "sslcrl")),
        };
        let e = err(crl(Mode::Require, None));
        assert!(e.contains("sslcrl") && e.contains("verify-full"), "{e}");
        let e = err(crl(Mode::VerifyFull, Some(Roots::File(cert.clone()))));
        // (the root is read first; this one is not a valid certificate)
        assert!(e.contains("sslrootcert") || e.contains("sslcrl"), "{e}");
    }
}
