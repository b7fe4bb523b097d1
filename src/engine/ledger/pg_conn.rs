//! From a ledger URL (and libpq's `PG*` environment variables) to what a connection
//! needs: tokio-postgres's `Config`, the TLS settings ([`super::pg_tls`]) and the
//! `place` every message names.
//!
//! As libpq, each parameter the URL leaves out is taken from its variable:
//! `PGHOST` (a name, an address, a socket directory; comma-separated for several),
//! `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGAPPNAME`, `PGCONNECT_TIMEOUT`,
//! `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, `PGSSLCRL`. What the URL
//! says always wins. The user defaults to the operating system's user, as libpq;
//! the database to the user (the server's default). Without a password from the
//! URL or `PGPASSWORD`, libpq's password file is read (`PGPASSFILE`, else
//! `~/.pgpass`; skipped when group or others can read it), matched against the
//! first host. Not read: `PGHOSTADDR`, `PGSERVICE` and the other variables.
//!
//! One departure: with no host in the URL nor in `PGHOST`, libpq would try its
//! compiled-in socket directory; quorum refuses and says to name one, so that a
//! bare `QUORUM_LEDGER_URL=postgres://` means "everything from `PG*`" and never a
//! guessed server.
//!
//! A password, from the URL or `PGPASSWORD`, never appears in `place`, an error or
//! `Debug`.

use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::config::Host;

use super::pg_tls::{self, FileParam};
use super::postgres::mask_url;

/// The connect timeout when neither the URL nor `PGCONNECT_TIMEOUT` sets one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a connection needs.
pub struct Resolved {
    /// The connection's parameters (the password in it, if any).
    pub cfg: tokio_postgres::Config,
    /// The TLS settings.
    pub tls: pg_tls::Settings,
    /// The database for messages, without the password: the masked URL, and the
    /// variables that filled what it left out.
    pub place: String,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("place", &self.place)
            .field("tls", &self.tls.describe())
            .finish_non_exhaustive()
    }
}

/// Why a URL cannot be used: the (masked) place it names, and what is wrong.
#[derive(Debug)]
pub struct Refusal {
    /// The masked URL (and the variables read).
    pub place: String,
    /// What is wrong and the fix.
    pub detail: String,
}

/// Resolve `url` with the process's environment.
pub fn resolve(url: &str) -> Result<Resolved, Refusal> {
    resolve_with(url, &|k| std::env::var(k).ok(), os_user)
}

/// The operating system's user name for the effective uid (libpq's default user).
fn os_user() -> Option<String> {
    #[cfg(unix)]
    {
        let mut buf = vec![0 as libc::c_char; 4096];
        // SAFETY: getpwuid_r writes only into `pw` and `buf` (of the length given),
        // and `out` points at `pw` or is null; the name is copied out before they go.
        unsafe {
            let mut pw: libc::passwd = std::mem::zeroed();
            let mut out: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwuid_r(
                libc::geteuid(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            );
            if rc != 0 || out.is_null() || pw.pw_name.is_null() {
                return None;
            }
            let name = std::ffi::CStr::from_ptr(pw.pw_name).to_string_lossy();
            (!name.is_empty()).then(|| name.into_owned())
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// [`resolve`] with the environment and the OS user given (for tests).
pub fn resolve_with(
    url: &str,
    env: &dyn Fn(&str) -> Option<String>,
    os_user: impl FnOnce() -> Option<String>,
) -> Result<Resolved, Refusal> {
    let masked = mask_url(url);
    // A variable set to the empty string is unset, as libpq.
    let env = |k: &str| env(k).filter(|v| !v.is_empty());
    let mut used: Vec<&'static str> = Vec::new();
    let result = (|| {
        let (rest, t) = pg_tls::split_url(url).map_err(|e| format!("[ledger] url: {e}"))?;
        // tokio-postgres gives each host of the URL a port (5432 when it has none),
        // so PGPORT goes into the URL's hosts before it is parsed.
        let (hs, he) = authority_hosts(&rest);
        let chunks: Vec<&str> = rest[hs..he].split(',').filter(|c| !c.is_empty()).collect();
        let url_has_port = chunks.iter().any(|c| has_port(c))
            || rest
                .split(['?', '&'])
                .skip(1)
                .any(|p| p.starts_with("port="));
        let env_ports = match env("PGPORT").filter(|_| !url_has_port) {
            Some(ports) => {
                let mut list = Vec::new();
                for p in ports.split(',') {
                    let port =
                        p.trim()
                            .parse::<u16>()
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or_else(|| {
                                format!("PGPORT={ports} is not a port (1-65535, comma-separated)")
                            })?;
                    list.push(port);
                }
                used.push("PGPORT");
                list
            }
            None => Vec::new(),
        };
        let rest = if !env_ports.is_empty() && !chunks.is_empty() {
            if env_ports.len() != 1 && env_ports.len() != chunks.len() {
                return Err(format!(
                    "PGPORT gives {} ports for the URL's {} hosts: give one, or one per host",
                    env_ports.len(),
                    chunks.len()
                ));
            }
            let hosts: Vec<String> = chunks
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c}:{}", env_ports.get(i).unwrap_or(&env_ports[0])))
                .collect();
            format!("{}{}{}", &rest[..hs], hosts.join(","), &rest[he..])
        } else {
            rest
        };
        let mut cfg: tokio_postgres::Config = rest
            .parse()
            // The parser's message never repeats the password.
            .map_err(|e: tokio_postgres::Error| format!("invalid URL: {e}"))?;
        let url_names_host = !cfg.get_hosts().is_empty() || !cfg.get_hostaddrs().is_empty();

        if !url_names_host {
            let hosts = env("PGHOST").ok_or(
                "the URL names no host and PGHOST is not set: give one \
                 (postgres://USER@HOST:PORT/DB), or set PGHOST (a host name, an address, \
                 or a socket directory such as /var/run/postgresql)",
            )?;
            for h in hosts.split(',') {
                let h = h.trim();
                if h.is_empty() {
                    return Err(format!("PGHOST={hosts} has an empty host"));
                }
                cfg.host(h);
            }
            used.push("PGHOST");
        }
        if cfg.get_ports().is_empty() {
            for p in &env_ports {
                cfg.port(*p);
            }
        }
        if cfg.get_user().is_none() {
            if let Some(u) = env("PGUSER") {
                cfg.user(u);
                used.push("PGUSER");
            } else if let Some(u) = os_user() {
                cfg.user(u);
            } else {
                return Err(
                    "the URL names no user, PGUSER is not set and the system's user \
                            name is unknown: give one (postgres://USER@HOST/DB) or set PGUSER"
                        .into(),
                );
            }
        }
        if cfg.get_password().is_none() {
            if let Some(p) = env("PGPASSWORD") {
                cfg.password(p);
                used.push("PGPASSWORD");
            }
        }
        if cfg.get_dbname().is_none() {
            if let Some(d) = env("PGDATABASE") {
                cfg.dbname(d);
                used.push("PGDATABASE");
            }
        }
        if cfg.get_password().is_none() {
            let file = env("PGPASSFILE")
                .map(|f| (PathBuf::from(f), "PGPASSFILE"))
                .or_else(|| env("HOME").map(|h| (PathBuf::from(h).join(".pgpass"), "~/.pgpass")));
            if let Some((file, via)) = file {
                if let Some(p) = password_from_file(&file, &cfg) {
                    cfg.password(p);
                    used.push(via);
                }
            }
        }
        if cfg.get_application_name().is_none() {
            if let Some(a) = env("PGAPPNAME") {
                cfg.application_name(a);
                used.push("PGAPPNAME");
            } else {
                cfg.application_name("quorum");
            }
        }
        // The URL's `connect_timeout=0` (wait forever) leaves no trace in `cfg`.
        let url_has_timeout = rest
            .split(['?', '&'])
            .skip(1)
            .any(|p| p.starts_with("connect_timeout="));
        if cfg.get_connect_timeout().is_none() && !url_has_timeout {
            // libpq: whole seconds, 0 (or less) waits forever, 1 counts as 2.
            let from_env = match env("PGCONNECT_TIMEOUT") {
                Some(v) => {
                    let secs = v.trim().parse::<i64>().map_err(|_| {
                        format!("PGCONNECT_TIMEOUT={v} is not a whole number of seconds")
                    })?;
                    used.push("PGCONNECT_TIMEOUT");
                    Some((secs > 0).then(|| Duration::from_secs(secs.max(2) as u64)))
                }
                None => None,
            };
            match from_env {
                Some(Some(d)) => {
                    cfg.connect_timeout(d);
                }
                Some(None) => {}
                None => {
                    cfg.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
                }
            }
        }

        let mut via_env =
            |url: Option<PathBuf>, url_name: &'static str, var: &'static str| match url {
                Some(p) => Some(FileParam {
                    path: p,
                    via: url_name,
                }),
                None => env(var).map(|v| {
                    used.push(var);
                    FileParam {
                        path: PathBuf::from(v),
                        via: var,
                    }
                }),
            };
        let cert = via_env(t.cert, "sslcert", "PGSSLCERT");
        let key = via_env(t.key, "sslkey", "PGSSLKEY");
        let crl = via_env(t.crl, "sslcrl", "PGSSLCRL");
        let (mode, mode_via) = match t.mode {
            Some(m) => (Some(m), "sslmode"),
            None => match env("PGSSLMODE") {
                Some(v) => {
                    let m = pg_tls::parse_mode(&v).ok_or_else(|| {
                        format!(
                            "PGSSLMODE={v} is not one of disable, prefer, require, verify-ca, \
                             verify-full"
                        )
                    })?;
                    used.push("PGSSLMODE");
                    (Some(m), "PGSSLMODE")
                }
                None => (None, "sslmode"),
            },
        };
        let root = match t.root {
            Some(r) => Some(r),
            None => match env("PGSSLROOTCERT") {
                Some(v) => {
                    used.push("PGSSLROOTCERT");
                    Some(
                        pg_tls::parse_roots(&v)
                            .map_err(|e| e.replace("sslrootcert", "PGSSLROOTCERT"))?,
                    )
                }
                None => None,
            },
        };
        let client = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(c), None) => {
                return Err(format!(
                    "{c} is given without its key: set sslkey (or PGSSLKEY) to the \
                     certificate's private key too, or drop {}",
                    c.via
                ))
            }
            (None, Some(k)) => {
                return Err(format!(
                    "{k} is given without a certificate: set sslcert (or PGSSLCERT) to the \
                     key's certificate too, or drop {}",
                    k.via
                ))
            }
        };
        let mut tls = pg_tls::settings(&cfg, mode, root);
        tls.mode_via = mode_via;
        tls.client = client;
        tls.crl = crl;
        cfg.ssl_mode(tls.ssl_mode());
        Ok((cfg, tls, url_names_host))
    })();
    let place = |cfg: Option<&tokio_postgres::Config>, url_names_host: bool| {
        let base = match cfg {
            Some(cfg) if !url_names_host => target(cfg),
            _ => masked.clone(),
        };
        if used.is_empty() {
            base
        } else {
            format!("{base} (with {} from the environment)", used.join(", "))
        }
    };
    match result {
        Ok((cfg, tls, names_host)) => Ok(Resolved {
            place: place(Some(&cfg), names_host),
            cfg,
            tls,
        }),
        Err(detail) => Err(Refusal {
            place: place(None, true),
            detail,
        }),
    }
}

/// libpq's password file (`PGPASSFILE`, else `~/.pgpass`): the password of the
/// first line `host:port:database:user:password` that matches the first host of
/// `cfg` (`*` matches anything; `\:` and `\\` escape; a socket directory matches
/// `localhost`), or `None`. As libpq, a file readable by group or others is skipped
/// with a warning.
fn password_from_file(file: &std::path::Path, cfg: &tokio_postgres::Config) -> Option<String> {
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "password file {} has group or world access and is not read (chmod 600 {})",
                file.display(),
                file.display()
            );
            return None;
        }
    }
    let text = std::fs::read_to_string(file).ok()?;
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(_)) => "localhost".to_string(),
        None => "localhost".to_string(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432).to_string();
    let user = cfg.get_user().unwrap_or_default();
    let db = cfg.get_dbname().unwrap_or(user);
    let want = [host.as_str(), port.as_str(), db, user];
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| pgpass_line(line.trim_end_matches('\r'), &want))
}

/// The password of one `.pgpass` line if its four fields match `want`.
fn pgpass_line(line: &str, want: &[&str; 4]) -> Option<String> {
    let mut fields: Vec<String> = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut()?.push(chars.next().unwrap_or('\\')),
            ':' if fields.len() < 5 => fields.push(String::new()),
            // As libpq, the password ends at an unescaped `:`.
            ':' => break,
            c => fields.last_mut()?.push(c),
        }
    }
    if fields.len() != 5 {
        return None;
    }
    let matches = |f: &str, w: &str| f == "*" || f == w;
    (0..4)
        .all(|i| matches(&fields[i], want[i]))
        .then(|| fields[4].clone())
        .filter(|p| !p.is_empty())
}

/// The byte range of the host list in a URL's authority (after any `user:pw@`,
/// before the path or the query).
fn authority_hosts(url: &str) -> (usize, usize) {
    let rest = url.find("://").map_or(0, |i| i + 3);
    let end = url[rest..].find(['/', '?']).map_or(url.len(), |i| rest + i);
    // A password may hold a raw `?` or `/`: the last `@` before the path ends it.
    let path = url[rest..].find('/').map_or(url.len(), |i| rest + i);
    match url[rest..path].rfind('@') {
        Some(at) => {
            let hs = rest + at + 1;
            let he = url[hs..].find(['/', '?']).map_or(url.len(), |i| hs + i);
            (hs, he)
        }
        None => (rest, end),
    }
}

/// Whether one host of a URL's list carries a port (`host:5432`, `[::1]:5432`).
fn has_port(chunk: &str) -> bool {
    match chunk.strip_prefix('[') {
        Some(v6) => v6.split_once(']').is_some_and(|(_, r)| r.starts_with(':')),
        None => chunk.contains(':'),
    }
}

/// `postgres://USER@HOST:PORT/DB` of a configuration, never its password.
fn target(cfg: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let name = match h {
                Host::Tcp(n) => n.clone(),
                #[cfg(unix)]
                Host::Unix(p) => p.display().to_string(),
            };
            match cfg.get_ports().get(i).or(cfg.get_ports().first()) {
                Some(p) => format!("{name}:{p}"),
                None => name,
            }
        })
        .collect();
    let user = cfg.get_user().unwrap_or_default();
    let pw = if cfg.get_password().is_some() {
        ":***"
    } else {
        ""
    };
    format!(
        "postgres://{user}{pw}@{}/{}",
        hosts.join(","),
        cfg.get_dbname().unwrap_or(user)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(url: &str, vars: &[(&str, &str)]) -> Result<Resolved, Refusal> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        resolve_with(url, &|k| vars.get(k).cloned(), || Some("osuser".into()))
    }

    #[test]
    fn the_url_wins_and_the_environment_fills_the_rest() {
        let all = [
            ("PGHOST", "envhost"),
            ("PGPORT", "6543"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "env-s3cret"),
            ("PGDATABASE", "envdb"),
            ("PGAPPNAME", "envapp"),
            ("PGCONNECT_TIMEOUT", "7"),
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", "/env/root.crt"),
            ("PGSSLCERT", "/env/c.crt"),
            ("PGSSLKEY", "/env/c.key"),
            ("PGSSLCRL", "/env/c.crl"),
        ];
        // A bare URL: everything from the environment.
        let r = with("postgres://", &all).unwrap();
        assert_eq!(r.cfg.get_hosts(), [Host::Tcp("envhost".into())]);
        assert_eq!(r.cfg.get_ports(), [6543]);
        assert_eq!(r.cfg.get_user(), Some("envuser"));
        assert_eq!(r.cfg.get_password(), Some(&b"env-s3cret"[..]));
        assert_eq!(r.cfg.get_dbname(), Some("envdb"));
        assert_eq!(r.cfg.get_application_name(), Some("envapp"));
        assert_eq!(r.cfg.get_connect_timeout(), Some(&Duration::from_secs(7)));
        assert_eq!(r.tls.mode, pg_tls::Mode::VerifyFull);
        assert_eq!(r.tls.describe(), "PGSSLMODE=verify-full");
        assert_eq!(
            r.tls.root,
            Some(pg_tls::Roots::File("/env/root.crt".into()))
        );
        let (c, k) = r.tls.client.clone().unwrap();
        assert_eq!((c.via, k.via), ("PGSSLCERT", "PGSSLKEY"));
        assert_eq!(c.path, PathBuf::from("/env/c.crt"));
        assert_eq!(r.tls.crl.as_ref().unwrap().via, "PGSSLCRL");
        assert!(r
            .place
            .starts_with("postgres://envuser:***@envhost:6543/envdb"));
        assert!(r.place.contains("PGPASSWORD"), "{}", r.place);
        assert!(!r.place.contains("env-s3cret"));
        assert!(!format!("{r:?}").contains("env-s3cret"));

        // Everything in the URL: no variable is read.
        let r = with(
            "postgres://u:url-pw@urlhost:5999/urldb?application_name=urlapp&connect_timeout=3\
             &sslmode=require&sslrootcert=/u/root.crt&sslcert=/u/c.crt&sslkey=/u/c.key\
             &sslcrl=/u/c.crl",
            &all,
        )
        .unwrap();
        assert_eq!(r.cfg.get_hosts(), [Host::Tcp("urlhost".into())]);
        assert_eq!(r.cfg.get_ports(), [5999]);
        assert_eq!(r.cfg.get_user(), Some("u"));
        assert_eq!(r.cfg.get_password(), Some(&b"url-pw"[..]));
        assert_eq!(r.cfg.get_dbname(), Some("urldb"));
        assert_eq!(r.cfg.get_application_name(), Some("urlapp"));
        assert_eq!(r.cfg.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(r.tls.describe(), "sslmode=require");
        let (c, k) = r.tls.client.clone().unwrap();
        assert_eq!((c.via, k.via), ("sslcert", "sslkey"));
        assert_eq!(r.tls.crl.unwrap().path, PathBuf::from("/u/c.crl"));
        assert_eq!(r.place, "postgres://u:***@urlhost:5999/urldb?application_name=urlapp&connect_timeout=3&sslmode=require&sslrootcert=/u/root.crt&sslcert=/u/c.crt&sslkey=/u/c.key&sslcrl=/u/c.crl");

        // A URL with a host but no port, user or password: those come from the
        // environment, the host does not.
        let r = with("postgres://urlhost/db", &all).unwrap();
        assert_eq!(r.cfg.get_hosts(), [Host::Tcp("urlhost".into())]);
        assert_eq!(r.cfg.get_ports(), [6543]);
        assert_eq!(r.cfg.get_user(), Some("envuser"));
        assert!(r
            .place
            .starts_with("postgres://urlhost/db (with PGPORT, PGUSER, PGPASSWORD"));
        assert!(!r.place.contains("PGHOST"), "{}", r.place);
    }

    #[test]
    fn defaults_without_the_environment() {
        let r = with("postgres://db.example.com/l", &[]).unwrap();
        assert_eq!(r.cfg.get_user(), Some("osuser"), "libpq's default user");
        assert_eq!(r.cfg.get_password(), None);
        assert_eq!(r.cfg.get_application_name(), Some("quorum"));
        assert_eq!(r.cfg.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(r.tls.mode, pg_tls::Mode::Require);
        assert_eq!(r.tls.client, None);
        assert_eq!(r.place, "postgres://db.example.com/l");
        // PGHOST as a socket directory, several hosts, empty variables are unset.
        let r = with(
            "postgres://",
            &[("PGHOST", "/run/postgresql"), ("PGUSER", "")],
        )
        .unwrap();
        assert_eq!(r.tls.mode, pg_tls::Mode::Prefer, "a socket is this machine");
        assert_eq!(r.cfg.get_user(), Some("osuser"));
        let r = with("postgres://", &[("PGHOST", "a,b"), ("PGPORT", "1,2")]).unwrap();
        assert_eq!(r.cfg.get_hosts().len(), 2);
        assert_eq!(r.cfg.get_ports(), [1, 2]);
        // PGCONNECT_TIMEOUT as libpq: 0 waits forever, 1 counts as 2.
        let t = |v| {
            with("postgres://h/d", &[("PGCONNECT_TIMEOUT", v)])
                .unwrap()
                .cfg
                .get_connect_timeout()
                .copied()
        };
        assert_eq!(t("0"), None);
        assert_eq!(t("1"), Some(Duration::from_secs(2)));
        let r = with(
            "postgres://h/d?connect_timeout=0",
            &[("PGCONNECT_TIMEOUT", "9")],
        )
        .unwrap();
        assert_eq!(
            r.cfg.get_connect_timeout(),
            None,
            "the URL's 0 waits forever"
        );
    }

    #[test]
    fn refusals_name_the_parameter_and_the_fix_and_never_the_password() {
        let e = with("postgres://", &[("PGPASSWORD", "pw-x")]).unwrap_err();
        assert!(
            e.detail.contains("PGHOST") && e.detail.contains("no host"),
            "{e:?}"
        );
        for (url, vars, want) in [
            ("postgres://h/d", vec![("PGPORT", "54x")], "PGPORT=54x"),
            ("postgres://h/d", vec![("PGSSLMODE", "on")], "PGSSLMODE=on"),
            (
                "postgres://h/d",
                vec![("PGCONNECT_TIMEOUT", "5s")],
                "PGCONNECT_TIMEOUT=5s",
            ),
            (
                "postgres://h/d?sslcert=/c.crt",
                vec![],
                "sslcert /c.crt is given without its key",
            ),
            (
                "postgres://h/d",
                vec![("PGSSLKEY", "/k")],
                "PGSSLKEY /k is given without a certificate",
            ),
            (
                "postgres://h/d?sslkey=/k&sslcert=",
                vec![],
                "sslcert is empty",
            ),
            (
                "postgres://h/d?sslpassword=x",
                vec![],
                "sslpassword is not supported",
            ),
        ] {
            let e = with(url, &vars).unwrap_err();
            assert!(e.detail.contains(want), "{url} {vars:?}: {e:?}");
        }
        let e = with("postgres://u:s3cret@h/d?sslcert=/c", &[]).unwrap_err();
        assert_eq!(e.place, "postgres://u:***@h/d?sslcert=/c");
        assert!(!format!("{e:?}").contains("s3cret"));
        // Neither does the password reach a failed parse.
        let e = with("postgres://u:s3cret@h:notaport/d", &[]).unwrap_err();
        assert!(!format!("{e:?}").contains("s3cret"), "{e:?}");
    }

    #[test]
    fn the_password_file_is_read_as_libpq_reads_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join(".pgpass");
        std::fs::write(
            &pass,
            "# a comment\n\
             other:5432:*:q:wrong-host\n\
             db.example.com:6000:*:q:wrong-port\n\
             db.example.com:*:ledger:q:pa\\:ss\\\\w:ignored\n\
             *:*:*:*:fallback\n",
        )
        .unwrap();
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let home = dir.path().to_str().unwrap();
        let pw = |url: &str, vars: &[(&str, &str)]| {
            let r = with(url, vars).unwrap();
            let pw = r
                .cfg
                .get_password()
                .map(|p| String::from_utf8(p.to_vec()).unwrap());
            assert!(!r.place.contains("pa:ss"), "{}", r.place);
            (pw, r.place)
        };
        let (p, place) = pw("postgres://q@db.example.com/ledger", &[("HOME", home)]);
        assert_eq!(p.as_deref(), Some("pa:ss\\w"));
        assert!(place.contains("~/.pgpass"), "{place}");
        assert_eq!(
            pw("postgres://q@db.example.com/other", &[("HOME", home)])
                .0
                .as_deref(),
            Some("fallback")
        );
        // The URL and PGPASSWORD come first; PGPASSFILE over ~/.pgpass.
        assert_eq!(
            pw("postgres://q:url@db.example.com/ledger", &[("HOME", home)])
                .0
                .as_deref(),
            Some("url")
        );
        assert_eq!(
            pw(
                "postgres://q@db.example.com/ledger",
                &[("HOME", home), ("PGPASSWORD", "env")]
            )
            .0
            .as_deref(),
            Some("env")
        );
        let other = dir.path().join("other.pass");
        std::fs::write(&other, "*:*:*:*:from-pgpassfile\n").unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (p, place) = pw(
            "postgres://q@db.example.com/ledger",
            &[("HOME", home), ("PGPASSFILE", other.to_str().unwrap())],
        );
        assert_eq!(p.as_deref(), Some("from-pgpassfile"));
        assert!(place.contains("PGPASSFILE"), "{place}");
        // A file others can read is skipped, as libpq.
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            pw("postgres://q@db.example.com/ledger", &[("HOME", home)]).0,
            None
        );
    }
}
