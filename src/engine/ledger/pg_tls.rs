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
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
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

/// The TLS settings of a ledger URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The mode in force.
    pub mode: Mode,
    /// Whether the URL said it (otherwise the default for its host).
    pub explicit: bool,
    /// `sslrootcert`, as given.
    pub root: Option<Roots>,
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

/// Take `sslmode`, `sslrootcert` (which tokio-postgres does not know, or knows only in
/// part) out of a `postgres://` URL's query. Returns the URL left and what was taken.
/// Client certificates (`sslcert`, `sslkey`) are refused by name.
pub fn split_url(url: &str) -> Result<(String, Option<Mode>, Option<Roots>), String> {
    // The query starts after the authority (a raw `?` in a password is not one).
    let rest = url.find("://").map_or(0, |i| i + 3);
    let path = url[rest..].find('/').map_or(url.len(), |i| rest + i);
    let host = url[rest..path].rfind('@').map_or(rest, |i| rest + i + 1);
    let Some(q) = url[host..].find('?').map(|i| host + i) else {
        return Ok((url.to_string(), None, None));
    };
    let (base, query) = (&url[..q], &url[q + 1..]);
    let (mut mode, mut root) = (None, None);
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(k).as_str() {
            "sslmode" => {
                let v = percent_decode(v);
                mode = Some(Mode::parse(&v).ok_or_else(|| {
                    format!(
                        "sslmode={v} is not one of disable, prefer, require, verify-ca, verify-full"
                    )
                })?);
            }
            "sslrootcert" => {
                let v = percent_decode(v);
                root = Some(if v == "system" {
                    Roots::System
                } else if v.is_empty() {
                    return Err("sslrootcert is empty (give a PEM file, or `system`)".into());
                } else {
                    Roots::File(PathBuf::from(v))
                });
            }
            k @ ("sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir" | "sslsni") => {
                return Err(format!(
                    "{k} is not supported (quorum's TLS verifies the server; it sends no client certificate)"
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
    Ok((url, mode, root))
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
        root,
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
            format!("sslmode={}", self.mode.as_str())
        } else if self.mode == Mode::Prefer {
            "sslmode=prefer (the default for a database on this machine)".into()
        } else {
            "sslmode=require (the default for a remote database)".into()
        }
    }

    /// The connector, or why the roots cannot be loaded.
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
            Check::Nothing => Arc::new(AcceptAny(provider.clone())),
            Check::Chain | Check::Full => {
                let roots = load_roots(self.root.as_ref(), self.mode)?;
                let inner =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| format!("cannot use the root certificates: {e}"))?;
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
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Some(RustlsConnect {
            config: Arc::new(config),
            names: check == Check::Full,
        }))
    }
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
        let c = c.map_err(|e| format!("sslrootcert {} is not PEM: {e}", file.display()))?;
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

/// Whether `e` is a TLS failure (handshake, certificate, or a server without TLS), as
/// opposed to a database that is away: one is a setting to fix, the other passes.
pub fn is_tls_error(e: &tokio_postgres::Error) -> bool {
    e.to_string().starts_with("error performing TLS handshake")
}

/// A sentence for a TLS failure: what failed, and what to change.
pub fn explain(e: &tokio_postgres::Error) -> String {
    let cause = std::error::Error::source(e)
        .map(|c| c.to_string())
        .unwrap_or_else(|| e.to_string());
    let hint = if cause.contains("does not support TLS") {
        "the server does not offer TLS and the sslmode in force requires it (require is the \
         default for a remote database): enable ssl on the server, or set sslmode=disable in \
         [ledger] url if plaintext is acceptable"
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
    fn sslmode_and_sslrootcert_are_taken_out_of_the_url() {
        let (u, m, r) = split_url(
            "postgres://q:pw@db/l?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(u, "postgres://q:pw@db/l?application_name=x");
        assert_eq!(m, Some(Mode::VerifyFull));
        assert_eq!(r, Some(Roots::File("/etc/ca.pem".into())));
        let (u, m, r) = split_url("postgres://db/l?sslmode=require").unwrap();
        assert_eq!(
            (u.as_str(), m, r),
            ("postgres://db/l", Some(Mode::Require), None)
        );
        assert_eq!(
            split_url("postgres://db/l?sslrootcert=system").unwrap().2,
            Some(Roots::System)
        );
        let e = split_url("postgres://db/l?sslmode=allow-ish").unwrap_err();
        assert!(e.contains("allow-ish") && e.contains("verify-full"), "{e}");
        // A raw `?` in the password is not the query.
        let (u, m, _) = split_url("postgres://q:p?w@db/l?sslmode=disable").unwrap();
        assert_eq!(
            (u.as_str(), m),
            ("postgres://q:p?w@db/l", Some(Mode::Disable))
        );
        assert_eq!(split_url("postgres://q:p?w@db/l").unwrap().1, None);
        let e = split_url("postgres://db/l?sslcert=/c.pem").unwrap_err();
        assert!(e.contains("sslcert"), "{e}");
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
            root: Some(Roots::File("/nonexistent/quorum-root.crt".into())),
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
            root: None,
        };
        assert!(s.connector().unwrap().is_some());
    }
}
