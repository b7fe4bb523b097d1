//! The shared PostgreSQL ledger's connection: TLS (`sslmode`, `sslrootcert`, client
//! certificates with `sslcert`/`sslkey`, `sslcrl`) against a real server with
//! certificates made for the test, libpq's `PG*` variables (set only in the
//! environment of the `quorum` processes the tests start), and a `quorum serve` that
//! starts while the database is down. Each test prints `SKIP:` and returns when PostgreSQL
//! is not installed.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use llm_quorum::engine::ledger::{Ledger, LedgerError, LedgerOptions, Location, RequestMeta};
use serde_json::{json, Value};
use support::ledger::completion;
use support::pg::{client_cert_cluster_or_skip, cluster_or_skip, tls_cluster_or_skip, PgCluster};
use support::serve::http;
use support::{Reply, Server};

const FAKE_KEY: &str = "sk-quorum-test-FAKEKEY-0123456789abcdef";

fn meta(run: &str) -> RequestMeta {
    RequestMeta {
        run_id: run.into(),
        target: "openai/gpt-4o-mini".into(),
        lease_id: None,
        prompt: format!("prompt of {run}"),
        ..Default::default()
    }
}

fn open(url: &str) -> Result<Ledger, LedgerError> {
    Ledger::open_at(&Location::Url(url.to_string()), LedgerOptions::default())
}

/// Whether each connection the server holds for `app` is encrypted, asked over a
/// plaintext connection of the test's own.
fn ssl_of(pg: &PgCluster, app: &str) -> Vec<bool> {
    let url = pg.url_with("127.0.0.1", "sslmode=disable");
    let app = app.to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    })
}

/// The error's text, checked never to show the password.
fn message(pg: &PgCluster, r: Result<Ledger, LedgerError>) -> String {
    let e = r.expect_err("the ledger must not open");
    let msg = e.to_string();
    eprintln!("refused: {msg}");
    assert!(!msg.contains(&pg.password), "the password leaked: {msg}");
    assert!(
        msg.contains("quorum:***@"),
        "the URL is named, masked: {msg}"
    );
    assert!(
        !e.is_unavailable(),
        "a TLS problem is not a database away: {e:?}"
    );
    msg
}

#[test]
fn tls_verify_full_with_the_right_root_records_and_a_wrong_root_is_refused() {
    let Some(pg) = tls_cluster_or_skip() else {
        return;
    };
    let tls = pg.tls.as_ref().unwrap();
    let (ca, other) = (tls.ca.display(), tls.other_ca.display());

    // verify-full, by address and by name (the certificate names both): rows are
    // written, over TLS.
    for (i, (host, app)) in [("127.0.0.1", "full-ip"), ("localhost", "full-name")]
        .into_iter()
        .enumerate()
    {
        let url = pg.url_with(
            host,
            // channel_binding=require: the login is SCRAM-SHA-256-PLUS, bound to
            // this TLS session, or it fails.
            &format!(
                "sslmode=verify-full&sslrootcert={ca}&application_name={app}&channel_binding=require"
            ),
        );
        let l = open(&url).unwrap_or_else(|e| panic!("{host}: {e}"));
        let id = l.record_request(&meta(app), &completion(i as u64)).unwrap();
        assert!(id > 0);
        assert_eq!(l.run_requests(app).unwrap().len(), 1);
        let ssl = ssl_of(&pg, app);
        assert!(!ssl.is_empty() && ssl.iter().all(|s| *s), "{app}: {ssl:?}");
    }

    // verify-ca with the right root, and require (encrypted, unverified): both open.
    for (q, app) in [
        (format!("sslmode=verify-ca&sslrootcert={ca}"), "ca"),
        ("sslmode=require".to_string(), "req"),
        // No sslmode on this machine: prefer, and this server offers TLS.
        (String::new(), "default"),
    ] {
        let url = pg.url_with("127.0.0.1", &format!("{q}&application_name={app}"));
        let l = open(&url).unwrap_or_else(|e| panic!("{q}: {e}"));
        assert_eq!(l.request_count().unwrap(), 2, "{q}");
        let ssl = ssl_of(&pg, app);
        assert!(!ssl.is_empty() && ssl.iter().all(|s| *s), "{app}: {ssl:?}");
    }

    // disable: plaintext, even though the server offers TLS.
    let l = open(&pg.url_with("127.0.0.1", "sslmode=disable&application_name=off")).unwrap();
    assert_eq!(l.request_count().unwrap(), 2);
    let ssl = ssl_of(&pg, "off");
    assert!(!ssl.is_empty() && ssl.iter().all(|s| !*s), "{ssl:?}");

    // verify-full with a root that did not sign the server's certificate: refused,
    // naming TLS and the cause.
    let msg = message(
        &pg,
        open(&pg.url_with(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={other}"),
        )),
    );
    assert!(msg.contains("TLS failed"), "{msg}");
    assert!(msg.contains("not signed by a root in sslrootcert"), "{msg}");
    // verify-ca checks the chain too, and so does require once a root is named (as
    // libpq does).
    for mode in ["verify-ca", "require"] {
        let q = format!("sslmode={mode}&sslrootcert={other}");
        let msg = message(&pg, open(&pg.url_with("127.0.0.1", &q)));
        assert!(msg.contains("not signed by a root"), "{mode}: {msg}");
    }

    // A root file that is not there, and verify-full without any root: said before
    // connecting, with how to fix it.
    let msg = message(
        &pg,
        open(&pg.url_with(
            "127.0.0.1",
            "sslmode=verify-full&sslrootcert=/nonexistent/root.crt",
        )),
    );
    assert!(msg.contains("/nonexistent/root.crt"), "{msg}");
    let msg = message(
        &pg,
        open(&pg.url_with("127.0.0.1", "sslmode=verify-sometimes")),
    );
    assert!(msg.contains("sslmode=verify-sometimes"), "{msg}");
}

#[test]
fn tls_require_against_a_server_without_tls_fails_clearly_and_disable_works() {
    let Some(pg) = cluster_or_skip() else { return };

    // Exec: require and verify-full against a server with ssl=off.
    let msg = message(&pg, open(&pg.url_with("127.0.0.1", "sslmode=require")));

    // Check: refused, saying the server does not offer TLS and what to change.
    assert!(msg.contains("TLS failed"), "{msg}");
    assert!(msg.contains("does not offer TLS"), "{msg}");
    assert!(msg.contains("sslmode=disable"), "{msg}");

    // disable and the default on this machine (prefer) work, in plaintext.
    for (q, app) in [("sslmode=disable", "off"), ("", "default")] {
        let l = open(&pg.url_with("127.0.0.1", &format!("{q}&application_name={app}"))).unwrap();
        l.record_request(&meta(app), &completion(1)).unwrap();
        let ssl = ssl_of(&pg, app);
        assert!(!ssl.is_empty() && ssl.iter().all(|s| !*s), "{app}: {ssl:?}");
    }
}

/// The error's text for a URL without a password (client-certificate logins).
fn refused(r: Result<Ledger, LedgerError>) -> String {
    let e = r.expect_err("the ledger must not open");
    let msg = e.to_string();
    eprintln!("refused: {msg}");
    assert!(
        !e.is_unavailable(),
        "a setting to fix, not a database away: {e:?}"
    );
    msg
}

#[test]
fn client_certificates_log_in_where_the_server_requires_one() {
    let Some(pg) = client_cert_cluster_or_skip() else {
        return;
    };
    let tls = pg.tls.as_ref().unwrap();
    // No password: the server lets in only a certificate for `quorum` signed by its CA.
    let url = |q: &str| {
        format!(
            "postgres://quorum@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}{q}",
            pg.port,
            tls.ca.display()
        )
    };
    let with = |cert: &Path, key: &Path| {
        url(&format!(
            "&sslcert={}&sslkey={}",
            cert.display(),
            key.display()
        ))
    };

    // An EC key in SEC1 and in PKCS#8, and an RSA key in PKCS#1: each logs in.
    for (i, (cert, key)) in [
        (&tls.client_cert, &tls.client_key),
        (&tls.client_cert, &tls.client_key_pkcs8),
        (&tls.client_rsa_cert, &tls.client_rsa_key),
    ]
    .into_iter()
    .enumerate()
    {
        let l = open(&with(cert, key)).unwrap_or_else(|e| panic!("{}: {e}", key.display()));
        l.record_request(&meta(&format!("cert-{i}")), &completion(i as u64))
            .unwrap();
        assert_eq!(l.request_count().unwrap(), i as u64 + 1);
    }

    // Without a certificate: the server refuses the login, and the message says
    // which parameters to set.
    let msg = refused(open(&url("")));
    assert!(msg.contains("client certificate"), "{msg}");
    assert!(msg.contains("sslcert") && msg.contains("sslkey"), "{msg}");

    // A certificate signed by another CA: the server ends the TLS session; a TLS
    // failure naming the client certificate.
    let msg = refused(open(&with(&tls.rogue_cert, &tls.rogue_key)));
    assert!(msg.contains("TLS failed"), "{msg}");
    assert!(msg.contains("client certificate"), "{msg}");

    // A key others can read: refused before connecting, as libpq, with the fix.
    let dir = tempfile::tempdir().unwrap();
    let open_key = dir.path().join("open.key");
    std::fs::copy(&tls.client_key, &open_key).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let msg = refused(open(&with(&tls.client_cert, &open_key)));
    assert!(msg.contains("sslkey") && msg.contains("open.key"), "{msg}");
    assert!(msg.contains("group or world access"), "{msg}");
    assert!(
        msg.contains(&format!("chmod 600 {}", open_key.display())),
        "{msg}"
    );

    // One without the other names both; a key that does not go with the
    // certificate names both files.
    let msg = refused(open(&url(&format!(
        "&sslcert={}",
        tls.client_cert.display()
    ))));
    assert!(
        msg.contains("without its key") && msg.contains("sslkey"),
        "{msg}"
    );
    let msg = refused(open(&with(&tls.client_cert, &tls.rogue_key)));
    assert!(msg.contains("do not go together"), "{msg}");
    assert!(
        msg.contains("client.crt") && msg.contains("rogue.key"),
        "{msg}"
    );
    // A garbled certificate file: named, with why.
    let garbled = dir.path().join("garbled.crt");
    std::fs::write(&garbled, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    let msg = refused(open(&with(&garbled, &tls.client_key)));
    assert!(
        msg.contains("garbled.crt") && msg.contains("sslcert"),
        "{msg}"
    );
    assert!(
        msg.contains("has no `-----END CERTIFICATE-----` line"),
        "{msg}"
    );
    assert!(msg.contains("correct the TLS parameters"), "the fix: {msg}");
}

#[test]
fn a_server_certificate_revoked_in_sslcrl_is_refused() {
    let Some(pg) = tls_cluster_or_skip() else {
        return;
    };
    let tls = pg.tls.as_ref().unwrap();
    let q = |crl: &Path, app: &str| {
        format!(
            "sslmode=verify-full&sslrootcert={}&sslcrl={}&application_name={app}",
            tls.ca.display(),
            crl.display()
        )
    };

    // A CRL of the CA that does not list the server's certificate: connects.
    let l = open(&pg.url_with("127.0.0.1", &q(&tls.crl_clean, "crl-clean"))).unwrap();
    l.record_request(&meta("crl"), &completion(1)).unwrap();
    let ssl = ssl_of(&pg, "crl-clean");
    assert!(!ssl.is_empty() && ssl.iter().all(|s| *s), "{ssl:?}");

    // One that revokes it: refused, saying so.
    let msg = message(
        &pg,
        open(&pg.url_with("127.0.0.1", &q(&tls.crl_revoked, "crl-revoked"))),
    );
    assert!(msg.contains("TLS failed"), "{msg}");
    assert!(msg.contains("revoked by a CRL in sslcrl"), "{msg}");
    // verify-ca checks it too.
    let msg = message(
        &pg,
        open(&pg.url_with(
            "127.0.0.1",
            &q(&tls.crl_revoked, "crl-ca").replace("verify-full", "verify-ca"),
        )),
    );
    assert!(msg.contains("revoked"), "{msg}");

    // A CRL where nothing checks the server's certificate is refused, not ignored;
    // a CRL file that is not one is named.
    let msg = message(
        &pg,
        open(&pg.url_with(
            "127.0.0.1",
            &format!("sslmode=require&sslcrl={}", tls.crl_clean.display()),
        )),
    );
    assert!(
        msg.contains("sslcrl") && msg.contains("verify-full"),
        "{msg}"
    );
    let msg = message(&pg, open(&pg.url_with("127.0.0.1", &q(&tls.ca, "x"))));
    assert!(
        msg.contains("holds no CRL") && msg.contains("ca.crt"),
        "{msg}"
    );
}

/// llm.health once the ledger is open (`ok`), failing after the test's patience.
async fn health_once_open(url: &str) -> Value {
    let deadline = std::time::Instant::now() + support::PATIENCE;
    loop {
        let h = health(url).await;
        if h["ledger"] != "opening" {
            return h;
        }
        assert!(std::time::Instant::now() < deadline, "never opened: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `quorum serve` with a clean environment plus `env` (the ledger URL and libpq's
/// variables), no config file, no budget.
fn serve_with_env(dir: &Path, env: &[(&str, &str)]) -> support::serve::Serve {
    let data = dir.join("data");
    let mut all = vec![
        ("QUORUM_DATA_DIR", data.to_str().unwrap()),
        ("QUORUM_NO_DISCOVERY", "1"),
    ];
    all.extend_from_slice(env);
    support::serve::start(support::serve::command(dir, Some(""), &all), &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn libpq_environment_variables_fill_what_the_url_leaves_out() {
    let Some(pg) = tls_cluster_or_skip() else {
        return;
    };
    let tls = pg.tls.as_ref().unwrap();
    let port = pg.port.to_string();
    let ca = tls.ca.display().to_string();

    // A bare URL: host, port, user, password, database, TLS and the application
    // name all from libpq's variables, set for the child process only.
    let dir = tempfile::tempdir().unwrap();
    let s = serve_with_env(
        dir.path(),
        &[
            ("QUORUM_LEDGER_URL", "postgres://"),
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", &port),
            ("PGUSER", "quorum"),
            ("PGPASSWORD", &pg.password),
            ("PGDATABASE", "postgres"),
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", &ca),
            ("PGAPPNAME", "from-env"),
            ("PGCONNECT_TIMEOUT", "30"),
        ],
    );
    let h = health_once_open(&s.url).await;
    assert_eq!(h["ledger"], "ok", "{h}");
    let ssl = tokio::task::block_in_place(|| ssl_of(&pg, "from-env"));
    assert!(!ssl.is_empty() && ssl.iter().all(|x| *x), "{ssl:?}");
    let text = h.to_string();
    assert!(!text.contains(&pg.password), "the password leaked: {text}");
    let log = s.stop();
    assert!(!log.contains(&pg.password), "the password leaked: {log}");

    // The URL wins over every variable: a wrong host, password, mode and name in the
    // environment change nothing.
    let dir = tempfile::tempdir().unwrap();
    let url = pg.url_with("127.0.0.1", "sslmode=require&application_name=from-url");
    let s = serve_with_env(
        dir.path(),
        &[
            ("QUORUM_LEDGER_URL", &url),
            ("PGHOST", "192.0.2.1"),
            ("PGPORT", "1"),
            ("PGUSER", "nobody"),
            ("PGPASSWORD", "not-the-password"),
            ("PGDATABASE", "nowhere"),
            ("PGSSLMODE", "disable"),
            ("PGAPPNAME", "from-env"),
        ],
    );
    let h = health_once_open(&s.url).await;
    assert_eq!(h["ledger"], "ok", "{h}");
    let ssl = tokio::task::block_in_place(|| ssl_of(&pg, "from-url"));
    assert!(!ssl.is_empty() && ssl.iter().all(|x| *x), "{ssl:?}");
    drop(s);

    // No host anywhere: a one-shot command refuses, naming PGHOST, without the
    // password it was given.
    let dir = tempfile::tempdir().unwrap();
    let out = support::serve::command(
        dir.path(),
        Some(""),
        &[
            ("QUORUM_LEDGER_URL", "postgres://"),
            ("PGPASSWORD", &pg.password),
            ("QUORUM_DATA_DIR", dir.path().to_str().unwrap()),
        ],
    )
    .args(["ledger", "sessions"])
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!("no host: {err}");
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("PGHOST") && err.contains("no host"), "{err}");
    assert!(!err.contains(&pg.password), "the password leaked: {err}");

    // A bad variable is named; PGPASSWORD never shows in the refusal.
    let out = support::serve::command(
        dir.path(),
        Some(""),
        &[
            ("QUORUM_LEDGER_URL", "postgres://"),
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", &port),
            ("PGUSER", "quorum"),
            ("PGPASSWORD", &pg.password),
            ("PGSSLMODE", "sometimes"),
            ("QUORUM_DATA_DIR", dir.path().to_str().unwrap()),
        ],
    )
    .args(["ledger", "sessions"])
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!("bad PGSSLMODE: {err}");
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("PGSSLMODE=sometimes"), "{err}");
    assert!(!err.contains(&pg.password), "the password leaked: {err}");

    // And a one-shot report with everything from the environment works, the
    // password from ~/.pgpass (its HOME is `dir`).
    let pgpass = dir.path().join(".pgpass");
    std::fs::write(
        &pgpass,
        format!("localhost:{port}:postgres:quorum:{}\n", pg.password),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = support::serve::command(
        dir.path(),
        Some(""),
        &[
            ("QUORUM_LEDGER_URL", "postgres://"),
            ("PGHOST", "localhost"),
            ("PGPORT", &port),
            ("PGUSER", "quorum"),
            ("PGDATABASE", "postgres"),
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", &ca),
            ("QUORUM_DATA_DIR", dir.path().to_str().unwrap()),
        ],
    )
    .args(["ledger", "sessions"])
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
}

/// `quorum` with a clean environment, its data and config in `dir`, the ledger at
/// `${QUORUM_TEST_PG_URL}` (the password only in the environment).
fn command(dir: &Path, config: &str, upstream: &str, pg: &PgCluster) -> Command {
    let config = format!("{config}\n[ledger]\nurl = \"${{QUORUM_TEST_PG_URL}}\"\n");
    let data = dir.join("data");
    let base = format!("{upstream}/v1");
    support::serve::command(
        dir,
        Some(&config),
        &[
            ("QUORUM_DATA_DIR", data.to_str().unwrap()),
            ("QUORUM_NO_DISCOVERY", "1"),
            ("QUORUM_TEST_PG_URL", &pg.url()),
            ("OPENAI_API_KEY", FAKE_KEY),
            ("OPENAI_BASE_URL", &base),
        ],
    )
}

/// An OpenAI stream of 5 output tokens (14 prompt tokens).
fn openai_sse() -> String {
    "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"4\"},\"finish_reason\":null}]}\n\n\
     data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
     data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":14,\"completion_tokens\":5,\"total_tokens\":19}}\n\n\
     data: [DONE]\n\n"
        .to_string()
}

async fn health(url: &str) -> Value {
    let v: Value = http()
        .post(format!("{url}/rpc"))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "llm.health", "params": {}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["result"].clone()
}

/// Every prompt recorded in the database, with repeats.
fn prompts_in(pg: &PgCluster) -> Vec<String> {
    let l = open(&pg.url()).unwrap();
    l.recent(100_000)
        .unwrap()
        .into_iter()
        .filter_map(|r| r.prompt)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_starts_with_the_database_down_spools_and_replays_each_row_once() {
    let Some(pg) = cluster_or_skip() else { return };
    // Setup: the database is down before quorum ever reached it (no schema yet);
    // no budget is set.
    tokio::task::block_in_place(|| pg.stop());
    let up = Server::start(vec![Reply::sse(openai_sse())]).await;
    let dir = tempfile::tempdir().unwrap();
    let cmd = command(dir.path(), "", &up.url, &pg);
    let s = support::serve::start(cmd, &[]);

    // Exec: requests while it is down, both faces of serve.
    let n = 12;
    for i in 0..n {
        let r = http()
            .post(format!("{}/v1/chat/completions", s.url))
            .json(&json!({"model": "openai/gpt-4o-mini",
                          "messages": [{"role": "user", "content": format!("down {i}")}]}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(status, 200, "{body}");
    }

    // Check: answered, the rows wait in the spool, health says so, and the start
    // warned on stderr without the password.
    let h = health(&s.url).await;
    assert_eq!(h["ledger"], "spooling", "{h}");
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["ledger_backlog"].as_u64(), Some(2 * n), "{h}");
    let m = s.metrics().await;
    assert!(
        m.lines()
            .any(|l| l == format!("quorum_ledger_backlog {}", 2 * n)),
        "{m}"
    );
    assert!(
        m.lines().any(|l| l == "quorum_ledger_database_away 1"),
        "{m}"
    );
    let log = s.stderr();
    eprintln!("serve's log: {log}");
    assert!(log.contains("rows are kept in"), "{log}");
    assert!(log.contains("quorum:***@127.0.0.1"), "{log}");
    assert!(!log.contains(&pg.password), "the password leaked: {log}");

    // Exec: the database returns.
    tokio::task::block_in_place(|| pg.restart());

    // Check: the spool drains on its own; every request is in the database exactly
    // once, and health is ok again.
    let deadline = std::time::Instant::now() + support::PATIENCE;
    loop {
        let h = health(&s.url).await;
        if h["ledger_backlog"] == 0 && h["ledger"] == "ok" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never drained: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = s.metrics().await;
    assert!(
        m.lines().any(|l| l == "quorum_ledger_database_away 0"),
        "{m}"
    );
    let prompts = tokio::task::block_in_place(|| prompts_in(&pg));
    let mut want: Vec<String> = (0..n).map(|i| format!("down {i}")).collect();
    let mut got = prompts.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "each request recorded once");
    assert_eq!(up.count() as u64, n);

    // And a request now goes straight to the database.
    let r = http()
        .post(format!("{}/v1/chat/completions", s.url))
        .json(&json!({"model": "openai/gpt-4o-mini",
                      "messages": [{"role": "user", "content": "up again"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    assert_eq!(health(&s.url).await["ledger_backlog"], 0);
    let prompts = tokio::task::block_in_place(|| prompts_in(&pg));
    assert_eq!(prompts.iter().filter(|p| *p == "up again").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_budget_serve_starts_with_the_database_down_refuses_then_recovers() {
    let Some(pg) = cluster_or_skip() else { return };
    // Setup: a daily cap, and the database down before quorum ever reached it.
    tokio::task::block_in_place(|| pg.stop());
    let up = Server::start(vec![Reply::sse(openai_sse())]).await;
    let dir = tempfile::tempdir().unwrap();
    let cmd = command(dir.path(), "[budget]\ndaily_usd = 5.0\n", &up.url, &pg);
    let s = support::serve::start(cmd, &[]);
    let complete = |prompt: &str| {
        let url = format!("{}/rpc", s.url);
        let params = json!({"model": "openai/gpt-4o-mini", "prompt": prompt, "max_tokens": 100});
        async move {
            http()
                .post(url)
                .json(
                    &json!({"jsonrpc": "2.0", "id": 1, "method": "llm.complete", "params": params}),
                )
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };

    // Exec + check: refused before sending, naming the database (masked); health
    // says the ledger is unavailable; nothing spooled (fail closed).
    let v = complete("while down").await;
    assert_eq!(v["error"]["code"], -32603, "{v}");
    let msg = v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("quorum:***@127.0.0.1"), "{msg}");
    assert!(!msg.contains(&pg.password), "{msg}");
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    let h = health(&s.url).await;
    assert_eq!(
        (h["status"].as_str(), h["ledger"].as_str()),
        (Some("degraded"), Some("unavailable")),
        "{h}"
    );
    assert!(!dir
        .path()
        .join("data")
        .join(llm_quorum::engine::ledger::LEDGER_SPOOL_FILE)
        .exists());

    // Exec: the database returns; the same process takes requests again.
    tokio::task::block_in_place(|| pg.restart());
    let deadline = std::time::Instant::now() + support::PATIENCE;
    loop {
        let h = health(&s.url).await;
        if h["ledger"] == "ok" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never back: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = complete("after").await;
    assert!(v["error"].is_null(), "{v}");
    assert_eq!(up.count(), 1);
    let prompts = tokio::task::block_in_place(|| prompts_in(&pg));
    assert_eq!(prompts, ["after"]);
    let log = s.stderr();
    assert!(
        log.contains("every request is refused until it returns"),
        "{log}"
    );
    assert!(!log.contains(&pg.password), "the password leaked: {log}");
}

#[test]
fn ask_with_the_database_down_spools_without_a_budget_and_refuses_with_one() {
    let Some(pg) = cluster_or_skip() else { return };
    pg.stop();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(Server::start(vec![Reply::sse(openai_sse())]));
    let dir = tempfile::tempdir().unwrap();
    let spool = dir
        .path()
        .join("data")
        .join(llm_quorum::engine::ledger::LEDGER_SPOOL_FILE);

    // Without a budget: answered, with a warning; the row waits in the spool.
    let out = command(dir.path(), "", &up.url, &pg)
        .args(["ask", "-m", "openai/gpt-4o-mini", "What is 2+2?"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!("ask without a budget: {err}");
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning") && err.contains("rows are kept in"),
        "{err}"
    );
    assert!(!err.contains(&pg.password), "{err}");
    let spooled = std::fs::read_to_string(&spool).unwrap();
    assert_eq!(
        spooled.lines().count(),
        2,
        "the run and its request: {spooled}"
    );

    // With a budget: refused before sending, exit 2, naming the database (masked).
    let out = command(dir.path(), "[budget]\ndaily_usd = 5.0\n", &up.url, &pg)
        .args(["ask", "-m", "openai/gpt-4o-mini", "What is 3+3?"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    eprintln!("ask with a budget: {err}");
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("quorum:***@127.0.0.1"), "{err}");
    assert!(!err.contains(&pg.password), "{err}");
    assert_eq!(up.count(), 1, "nothing was sent with the budget");

    // The database returns: the next process replays the spool.
    pg.restart();
    let out = command(dir.path(), "", &up.url, &pg)
        .args(["ask", "-m", "openai/gpt-4o-mini", "What is 4+4?"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut prompts = prompts_in(&pg);
    prompts.sort();
    assert_eq!(prompts, ["What is 2+2?", "What is 4+4?"]);
}
