//! A real PostgreSQL for tests: a throwaway cluster in a temp dir (`initdb`, then
//! `pg_ctl` on a free port on 127.0.0.1), with a password login, removed on drop.
//! Needs Debian's `postgresql` package (`.ci/run` installs it); when its binaries are
//! absent, [`PgCluster::start`] says why and the test prints `SKIP:` and returns.
//! As root (initdb refuses root) the server runs as the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running throwaway cluster.
pub struct PgCluster {
    _dir: tempfile::TempDir,
    root: PathBuf,
    bin: PathBuf,
    run_as: Option<String>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The login's password (tests check it never leaks).
    pub password: String,
    /// With TLS on: the certificates made for it.
    pub tls: Option<TlsFiles>,
    /// TCP logins need a client certificate signed by the test CA (`hostssl ... cert`).
    client_certs: bool,
}

/// The certificates of a cluster started with TLS: a test CA, the server's
/// certificate signed by it (for `localhost` and `127.0.0.1`), a second CA that
/// signed no server certificate (a wrong root), client certificates for the user
/// `quorum`, and CRLs of the test CA.
pub struct TlsFiles {
    /// The CA that signed the server's certificate (PEM).
    pub ca: PathBuf,
    /// A CA that did not (PEM).
    pub other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// A client certificate (CN=quorum, EC P-256) signed by `ca`, and its key in
    /// PKCS#8 (`-----BEGIN PRIVATE KEY-----`), mode 0600.
    pub client_cert: PathBuf,
    /// The same key in SEC1 (`-----BEGIN EC PRIVATE KEY-----`), mode 0600.
    pub client_key: PathBuf,
    /// The same key in PKCS#8, mode 0600.
    pub client_key_pkcs8: PathBuf,
    /// A client certificate (CN=quorum, RSA) signed by `ca`.
    pub client_rsa_cert: PathBuf,
    /// Its key in PKCS#1 (`-----BEGIN RSA PRIVATE KEY-----`), mode 0600.
    pub client_rsa_key: PathBuf,
    /// A client certificate (CN=quorum) signed by `other_ca`, and its key (0600).
    pub rogue_cert: PathBuf,
    /// The rogue certificate's key.
    pub rogue_key: PathBuf,
    /// A CRL of `ca` that revokes nothing.
    pub crl_clean: PathBuf,
    /// A CRL of `ca` that revokes the server's certificate.
    pub crl_revoked: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Make a CA, a server certificate it signs, and an unrelated CA, in `dir`.
fn make_certs(dir: &Path) -> Result<TlsFiles, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, cn) in [("ca", "quorum test CA"), ("other_ca", "quorum other CA")] {
        let mut a = vec!["req", "-x509"];
        a.extend(ec);
        let (key, crt, subj) = (
            format!("{name}.key"),
            format!("{name}.crt"),
            format!("/CN={cn}"),
        );
        a.extend(["-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subj]);
        openssl(dir, &a)?;
    }
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &a)?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| e.to_string())?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    )?;
    // Client certificates for the user `quorum`: EC (its key also in SEC1) and RSA
    // (PKCS#1) signed by the CA, and one signed by the other CA.
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=clientAuth\n",
    )
    .map_err(|e| e.to_string())?;
    openssl(
        dir,
        &["genrsa", "-traditional", "-out", "client_rsa.key", "2048"],
    )?;
    for (name, ca, rsa) in [
        ("client", "ca", false),
        ("client_rsa", "ca", true),
        ("rogue", "other_ca", false),
    ] {
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        let mut a = vec!["req"];
        if rsa {
            a.extend(["-new", "-key", &key]);
        } else {
            a.extend(ec);
            a.extend(["-keyout", &key]);
        }
        a.extend(["-out", &csr, "-subj", "/CN=quorum"]);
        openssl(dir, &a)?;
        let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_crt,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                "client.ext",
            ],
        )?;
    }
    openssl(dir, &["ec", "-in", "client.key", "-out", "client.sec1.key"])?;
    // CRLs of the CA: one revoking nothing, one revoking the server's certificate.
    std::fs::write(dir.join("index.txt"), "").map_err(|e| e.to_string())?;
    std::fs::write(dir.join("crlnumber"), "01\n").map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\ncrlnumber = crlnumber\n\
         default_md = sha256\ndefault_crl_days = 2\n",
    )
    .map_err(|e| e.to_string())?;
    let ca_args = ["-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.crt"];
    let mut a = vec!["ca", "-gencrl", "-out", "clean.crl"];
    a.extend(ca_args);
    openssl(dir, &a)?;
    let mut a = vec!["ca", "-revoke", "server.crt"];
    a.extend(ca_args);
    openssl(dir, &a)?;
    let mut a = vec!["ca", "-gencrl", "-out", "revoked.crl"];
    a.extend(ca_args);
    openssl(dir, &a)?;
    {
        use std::os::unix::fs::PermissionsExt;
        // The server refuses a key others can read, and so does quorum (as libpq).
        for key in [
            "server.key",
            "client.key",
            "client.sec1.key",
            "client_rsa.key",
            "rogue.key",
        ] {
            std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o600))
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(TlsFiles {
        ca: dir.join("ca.crt"),
        other_ca: dir.join("other_ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.sec1.key"),
        client_key_pkcs8: dir.join("client.key"),
        client_rsa_cert: dir.join("client_rsa.crt"),
        client_rsa_key: dir.join("client_rsa.key"),
        rogue_cert: dir.join("rogue.crt"),
        rogue_key: dir.join("rogue.key"),
        crl_clean: dir.join("clean.crl"),
        crl_revoked: dir.join("revoked.crl"),
    })
}

fn find_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    found.sort();
    found.pop()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgCluster {
    /// Start a cluster, or say why it cannot be started here.
    pub fn start() -> Result<PgCluster, String> {
        Self::start_with(false)
    }

    /// Start a cluster serving TLS (`ssl=on`) with certificates made for it (see
    /// [`TlsFiles`]); plaintext is still accepted, as a default server does.
    pub fn start_tls() -> Result<PgCluster, String> {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Result<PgCluster, String> {
        Self::start_full(tls, false)
    }

    fn start_full(tls: bool, client_certs: bool) -> Result<PgCluster, String> {
        let bin = find_bin().ok_or(
            "PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)",
        )?;
        let root_user = unsafe { libc::geteuid() } == 0;
        let run_as = if root_user {
            let ok = Command::new("id")
                .arg("postgres")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !ok {
                return Err(
                    "running as root and there is no `postgres` user to run the server".into(),
                );
            }
            Some("postgres".to_string())
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("quorum-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let root = dir.path().join("pg");
        std::fs::create_dir(&root).map_err(|e| e.to_string())?;
        let password = format!("pw-{:016x}", rand_u64());
        std::fs::write(root.join("pwfile"), &password).map_err(|e| e.to_string())?;
        let tls = if tls {
            Some(make_certs(&root.join("tls"))?)
        } else {
            None
        };
        if let Some(u) = &run_as {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
            let st = Command::new("chown")
                .args(["-R", &format!("{u}:")])
                .arg(&root)
                .status()
                .map_err(|e| e.to_string())?;
            if !st.success() {
                return Err(format!("cannot chown the cluster dir to {u}"));
            }
        }
        let mut c = PgCluster {
            _dir: dir,
            root,
            bin,
            run_as,
            port: free_port(),
            password,
            tls,
            client_certs,
        };
        let data = c.root.join("data");
        let out = c.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "quorum".as_ref(),
                "--pwfile".as_ref(),
                c.root.join("pwfile").as_os_str(),
                "--auth-host=scram-sha-256".as_ref(),
                "--auth-local=trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-instructions".as_ref(),
            ],
        )?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        if client_certs {
            // Over TCP only TLS with a client certificate for the user (its CN) is
            // let in; no password is asked.
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 cert\n",
            )
            .map_err(|e| e.to_string())?;
        }
        // A free port can be taken between our check and the server's bind: retry.
        for _ in 0..5 {
            if c.start_server().is_ok() {
                return Ok(c);
            }
            c.port = free_port();
        }
        c.start_server().map(|_| c)
    }

    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Result<Output, String> {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.run_as {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args)
            .current_dir(&self.root)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))
    }

    fn start_server(&self) -> Result<(), String> {
        let data = self.root.join("data");
        let log = self.root.join("log");
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.root.display()
        );
        if let Some(t) = &self.tls {
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                t.cert.display(),
                t.key.display()
            ));
            if self.client_certs {
                opts.push_str(&format!(" -c ssl_ca_file={}", t.ca.display()));
            }
        }
        let out = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "120".as_ref(),
                "-o".as_ref(),
                opts.as_ref(),
                "start".as_ref(),
            ],
        )?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            ))
        }
    }

    /// `postgres://quorum:PASSWORD@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!(
            "postgres://quorum:{}@127.0.0.1:{}/postgres",
            self.password, self.port
        )
    }

    /// `postgres://quorum:PASSWORD@HOST:PORT/postgres?QUERY` (`host` as given:
    /// `localhost` or `127.0.0.1`).
    pub fn url_with(&self, host: &str, query: &str) -> String {
        format!(
            "postgres://quorum:{}@{host}:{}/postgres?{query}",
            self.password, self.port
        )
    }

    /// Stop the server (fast shutdown: sessions are cut, committed data stays).
    pub fn stop(&self) {
        let data = self.root.join("data");
        let out = self
            .run(
                "pg_ctl",
                &[
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-m".as_ref(),
                    "fast".as_ref(),
                    "-w".as_ref(),
                    "stop".as_ref(),
                ],
            )
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start it again on the same port.
    pub fn restart(&self) {
        self.start_server().unwrap();
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.root
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.root.join("data");
        let _ = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

/// The cluster, or `None` after printing `SKIP: <why>` when PostgreSQL is not
/// installed here. Any other failure to start it fails the test.
pub fn cluster_or_skip() -> Option<PgCluster> {
    start_or_skip(false)
}

/// A cluster serving TLS (see [`PgCluster::start_tls`]), or `None` after printing
/// `SKIP: <why>` when PostgreSQL (or the `openssl` tool, which Debian's postgresql
/// package pulls in) is not installed here.
pub fn tls_cluster_or_skip() -> Option<PgCluster> {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIP: the openssl tool is not installed (apt-get install openssl)");
        return None;
    }
    start_or_skip(true)
}

/// A TLS cluster whose TCP logins need a client certificate signed by its CA
/// (`hostssl all all 127.0.0.1/32 cert`, `ssl_ca_file`), or `None` after printing
/// `SKIP:` as [`tls_cluster_or_skip`].
pub fn client_cert_cluster_or_skip() -> Option<PgCluster> {
    note_pg_env();
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIP: the openssl tool is not installed (apt-get install openssl)");
        return None;
    }
    if find_bin().is_none() {
        eprintln!(
            "SKIP: PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)"
        );
        return None;
    }
    match PgCluster::start_full(true, true) {
        Ok(c) => Some(c),
        Err(why) if why.contains("no `postgres` user") => {
            eprintln!("SKIP: {why}");
            None
        }
        Err(why) => panic!("cannot start a test PostgreSQL: {why}"),
    }
}

/// libpq's variables the ledger reads where a test's URL leaves a parameter out
/// (tests set them only for the processes they start): say so when the test
/// process itself has some, as they may change what an in-process test connects with.
fn note_pg_env() {
    let set: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("PG"))
        .collect();
    if !set.is_empty() {
        eprintln!(
            "note: {} set in the test's environment; the ledger reads libpq's PG* variables \
             where a URL leaves a parameter out (unset them if a test misbehaves)",
            set.join(", ")
        );
    }
}

fn start_or_skip(tls: bool) -> Option<PgCluster> {
    note_pg_env();
    if find_bin().is_none() {
        eprintln!(
            "SKIP: PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)"
        );
        return None;
    }
    match PgCluster::start_with(tls) {
        Ok(c) => Some(c),
        Err(why) if why.contains("no `postgres` user") => {
            eprintln!("SKIP: {why}");
            None
        }
        Err(why) => panic!("cannot start a test PostgreSQL: {why}"),
    }
}
