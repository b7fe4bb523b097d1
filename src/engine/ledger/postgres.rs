//! The PostgreSQL backend: one database shared by every process and machine that
//! points `[ledger] url` (or `QUORUM_LEDGER_URL`) at it.
//!
//! The same tables as the SQLite file (sessions, runs with their reservation columns,
//! requests, prices, votes), with the same column types (integers and flags as BIGINT,
//! reals as DOUBLE PRECISION, times as ISO 8601 UTC text) so every report reads the
//! same. `requests.uid` makes writes idempotent: a replayed or re-migrated row is
//! written once. Migrations are forward only, versioned in `quorum_schema`, and run
//! under an advisory lock so several processes can start at once.
//!
//! A reservation takes `pg_advisory_xact_lock` on its budget scope (the daily cap,
//! and the session) in the transaction that checks the cap and writes the hold, so
//! replicas on any number of machines serialise on the check and can never together
//! cross a cap by concurrency.
//!
//! TLS follows libpq's `sslmode` (and `sslrootcert`) over rustls; see [`super::pg_tls`]
//! for the modes and the default (`prefer` on this machine, `require` elsewhere).
//!
//! The schema is created or migrated on the first connection: [`PgBackend::connect`]
//! makes it at once (and fails when the database cannot be reached);
//! [`PgBackend::connect_lazy`] lets a process start while the database is away (every
//! call then reports it unavailable, and the first one that reaches it migrates).
//!
//! The engine's calls are synchronous (they run on blocking threads); each one is
//! sent to this backend's own small runtime and waited for, so a call is safe from
//! any thread. The URL's password never appears in an error, a log line or `Debug`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::NoTls;

use super::pg_tls;

use super::{
    content_cap_for, request_select_list, request_written_columns, scope, Backend, BackendKind,
    BookOp, CounterCheck, EvalCaseRow, EvalRunRow, GroupBy, LedgerError, NewRequest, Refused,
    RequestFilter, RequestRow, RowRead, RunEntry, RunFilter, RunRow, SessionRow, Spend, TotalRow,
    Value, VoteRow, WriteOp,
};

/// `url` with its password (and any `password=` parameter) replaced by `***`.
pub fn mask_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        // The authority ends at the path; a password may hold a raw `?` or `#`
        // (it should be percent-encoded, but must never show either way).
        let auth_end = out[rest_start..]
            .find('/')
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..auth_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                let start = rest_start + colon + 1;
                out.replace_range(start..rest_start + at, "***");
            }
        }
    }
    // Every `?password=...` / `&sslpassword=...` / key-value `password=...`.
    let mut from = 0;
    while let Some(i) = out[from..].to_ascii_lowercase().find("password=") {
        let start = from + i + "password=".len();
        let end = out[start..]
            .find(['&', ' '])
            .map_or(out.len(), |j| start + j);
        out.replace_range(start..end, "***");
        from = start + 3;
    }
    out
}

/// A PostgreSQL backend.
pub struct PgBackend {
    rt: Option<tokio::runtime::Runtime>,
    pool: Pool,
    place: String,
    host: String,
    /// The schema is this build's (migrated on the first connection).
    migrated: Arc<AtomicBool>,
    /// One migration at a time in this process.
    migrating: Arc<tokio::sync::Mutex<()>>,
    tls: pg_tls::Settings,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("place", &self.place)
            .field("tls", &self.tls.describe())
            .finish_non_exhaustive()
    }
}

impl Drop for PgBackend {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => i.to_sql(ty, out),
            Value::Real(f) => f.to_sql(ty, out),
            Value::Text(s) => s.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::INT8 | Type::FLOAT8 | Type::TEXT | Type::VARCHAR)
    }

    to_sql_checked!();
}

impl RowRead for tokio_postgres::Row {
    fn text(&self, name: &str) -> Result<String, String> {
        self.try_get(name).map_err(|e| e.to_string())
    }
    fn opt_text(&self, name: &str) -> Result<Option<String>, String> {
        self.try_get(name).map_err(|e| e.to_string())
    }
    fn int(&self, name: &str) -> Result<i64, String> {
        self.try_get::<_, Option<i64>>(name)
            .map(Option::unwrap_or_default)
            .map_err(|e| e.to_string())
    }
    fn opt_real(&self, name: &str) -> Result<Option<f64>, String> {
        self.try_get(name).map_err(|e| e.to_string())
    }
}

/// Sort a PostgreSQL error into a [`LedgerError`] naming the (masked) URL.
pub(crate) fn classify(place: &str, e: &tokio_postgres::Error) -> LedgerError {
    let place = place.to_string();
    if pg_tls::is_tls_error(e) {
        // A setting to fix, not a database that is away: never spooled.
        return LedgerError::Open {
            place,
            detail: pg_tls::explain(e),
        };
    }
    let Some(db) = e.as_db_error() else {
        // tokio-postgres's own message names only the kind; its cause says what happened
        // ("Connection refused"). Neither repeats the password.
        let detail = match std::error::Error::source(e) {
            Some(c) => format!("{e}: {c}"),
            None => e.to_string(),
        };
        let kind = e.to_string();
        if kind.starts_with("authentication error") || kind.starts_with("invalid configuration") {
            // The login cannot work as configured (say, channel_binding=require without
            // TLS): a setting to fix, not a database that is away.
            return LedgerError::Open { place, detail };
        }
        // No answer from the server: the connection failed or closed.
        return LedgerError::Unavailable { place, detail };
    };
    let mut detail = format!("{} ({})", db.message(), db.code().code());
    if db.message().contains("client certificate") {
        // `hostssl ... cert` (or clientcert=verify-full) in the server's pg_hba.conf.
        detail.push_str(
            ": the server wants a client certificate for this user: set sslcert and sslkey \
             in [ledger] url (or PGSSLCERT and PGSSLKEY) to a certificate whose CN is the \
             user, signed by a CA in the server's ssl_ca_file",
        );
    }
    let code = db.code();
    if *code == SqlState::DISK_FULL || *code == SqlState::INSUFFICIENT_RESOURCES {
        LedgerError::Full { place, detail }
    } else if *code == SqlState::PROGRAM_LIMIT_EXCEEDED {
        LedgerError::TooLarge { place, detail }
    } else if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
        LedgerError::ReadOnly { place, detail }
    } else if *code == SqlState::DATA_CORRUPTED || *code == SqlState::INDEX_CORRUPTED {
        LedgerError::Corrupt { place, detail }
    } else if *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE
    {
        LedgerError::Locked { place, detail }
    } else if code.code().starts_with("08")
        || code.code().starts_with("57P")
        || *code == SqlState::TOO_MANY_CONNECTIONS
    {
        LedgerError::Unavailable { place, detail }
    } else if code.code().starts_with("28") || *code == SqlState::INVALID_CATALOG_NAME {
        LedgerError::Open { place, detail }
    } else {
        LedgerError::Backend { place, detail }
    }
}

fn pool_err(place: &str, e: PoolError) -> LedgerError {
    match e {
        PoolError::Backend(e) => classify(place, &e),
        other => LedgerError::Unavailable {
            place: place.to_string(),
            detail: other.to_string(),
        },
    }
}

/// Forward-only migrations; migration `i` takes `quorum_schema.version` from `i` to `i + 1`.
fn migrations() -> Vec<String> {
    let now = NOW_PG;
    vec![
        format!(
            "CREATE TABLE sessions (
            id           TEXT PRIMARY KEY,
            created_at   TEXT NOT NULL DEFAULT ({now}),
            label        TEXT,
            source_agent TEXT
        );
        CREATE TABLE runs (
            id             TEXT PRIMARY KEY,
            session_id     TEXT,
            trace_id       TEXT,
            created_at     TEXT NOT NULL DEFAULT ({now}),
            targets        TEXT,
            projected_usd  DOUBLE PRECISION,
            prompt         TEXT,
            reserved_usd   DOUBLE PRECISION,
            budget_session TEXT,
            pid            BIGINT,
            host           TEXT,
            settled_at     TEXT
        );
        CREATE INDEX runs_open ON runs(settled_at) WHERE reserved_usd > 0;
        CREATE INDEX runs_budget_session ON runs(budget_session);
        CREATE INDEX runs_session ON runs(session_id);
        CREATE TABLE prices (
            id            TEXT PRIMARY KEY,
            row           TEXT NOT NULL,
            first_used_at TEXT NOT NULL DEFAULT ({now})
        );
        CREATE TABLE requests (
            id                  BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            uid                 TEXT NOT NULL UNIQUE,
            run_id              TEXT NOT NULL,
            session_id          TEXT,
            trace_id            TEXT,
            source_agent        TEXT,
            target              TEXT NOT NULL,
            provider            TEXT NOT NULL,
            model               TEXT NOT NULL,
            input_tokens        BIGINT NOT NULL DEFAULT 0,
            output_tokens       BIGINT NOT NULL DEFAULT 0,
            cached_input_tokens BIGINT NOT NULL DEFAULT 0,
            cache_write_tokens  BIGINT NOT NULL DEFAULT 0,
            reasoning_tokens    BIGINT NOT NULL DEFAULT 0,
            usage_reported      BIGINT NOT NULL DEFAULT 0,
            cost_usd            DOUBLE PRECISION,
            cost_source         TEXT NOT NULL,
            price_ref           TEXT,
            ttft_ms             DOUBLE PRECISION,
            latency_ms          DOUBLE PRECISION,
            status              TEXT NOT NULL,
            finish_reason       TEXT,
            raw_finish_reason   TEXT,
            error_kind          TEXT,
            error_message       TEXT,
            retries             BIGINT NOT NULL DEFAULT 0,
            fell_back_from      TEXT,
            cache_hit           BIGINT NOT NULL DEFAULT 0,
            prompt              TEXT,
            response            TEXT,
            thinking            TEXT,
            tool_calls          TEXT,
            created_at          TEXT NOT NULL DEFAULT ({now})
        );
        CREATE INDEX requests_run ON requests(run_id);
        CREATE INDEX requests_session ON requests(session_id);
        CREATE INDEX requests_created ON requests(created_at);
        CREATE TABLE votes (
            id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            uid        TEXT UNIQUE,
            run_id     TEXT,
            targets    TEXT,
            winner     TEXT NOT NULL,
            tag        TEXT,
            created_at TEXT NOT NULL DEFAULT ({now})
        );
        CREATE INDEX votes_run ON votes(run_id);"
        ),
        // `quorum eval`'s tables.
        super::eval::PG_MIGRATION.to_string(),
        // Attachments: a JSON list of {name, kind, media_type, bytes, sha256}.
        super::ATTACHMENTS_MIGRATION.to_string(),
        // Budget counters, so a reservation checks its caps in O(1).
        counters_migration(),
        // Budget leases: the lease a request's cost drew down.
        super::LEASES_MIGRATION.to_string(),
    ]
}

/// Now, as the same ISO 8601 UTC text SQLite writes (`2026-01-02T03:04:05.678Z`).
pub(crate) const NOW_PG: &str =
    "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";

// The advisory-lock keys of the daily cap (any replica's) and of a session's cap are
// `hashtext('quorum:budget:daily')` and `hashtext('quorum:budget:session:' || id)`
// (see `book_in`).
/// The advisory-lock key of migrations.
const MIGRATE_LOCK: i64 = 0x7175_6f72_756d;

/// How long a hold from another machine may stay open before it is taken as dead.
const STALE_HOLD: &str = "6 hours";

/// Runs holding a reservation.
const OPEN: &str = "r.settled_at IS NULL AND r.reserved_usd > 0";
/// What a run still holds: its reservation less what its finished requests cost (a
/// lease's: its runs' requests).
const OUTSTANDING: &str = "GREATEST(r.reserved_usd - COALESCE((SELECT SUM(q.cost_usd) FROM requests q WHERE q.run_id = r.id), 0)
    - COALESCE((SELECT SUM(q.cost_usd) FROM requests q WHERE q.lease_id = r.id), 0), 0)";
/// [`OUTSTANDING`] before leases (schema 5).
const OUTSTANDING_V5: &str = "GREATEST(r.reserved_usd - COALESCE((SELECT SUM(q.cost_usd) FROM requests q WHERE q.run_id = r.id), 0), 0)";

/// The local UTC offset in seconds now (days are local calendar days, as in SQLite).
pub(crate) fn local_offset_secs() -> i64 {
    #[cfg(unix)]
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if !libc::localtime_r(&t, &mut tm).is_null() {
            return tm.tm_gmtoff;
        }
    }
    0
}

fn this_host() -> String {
    let mut buf = [0u8; 256];
    #[cfg(unix)]
    unsafe {
        if libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) == 0 {
            let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            return String::from_utf8_lossy(&buf[..n]).into_owned();
        }
    }
    String::new()
}

/// The local day (`YYYY-MM-DD`) of ISO 8601 UTC time `at` (now when `None`), with
/// today's UTC offset, as the day reports count it.
fn local_day(at: Option<&str>) -> String {
    let t = at
        .and_then(|a| {
            time::OffsetDateTime::parse(a, &time::format_description::well_known::Rfc3339).ok()
        })
        .unwrap_or_else(time::OffsetDateTime::now_utc);
    let local = t + time::Duration::seconds(local_offset_secs());
    local
        .date()
        .format(time::macros::format_description!("[year]-[month]-[day]"))
        .unwrap_or_default()
}

/// The budget counters recomputed from the rows, as `(scope, usd, n)` (see the SQLite
/// backend's `recompute_sql`; days with today's UTC offset).
fn recompute_sql() -> String {
    recompute_sql_with(OUTSTANDING)
}

/// [`recompute_sql`] with `outstanding` for what an open run holds.
fn recompute_sql_with(outstanding: &str) -> String {
    let off = local_offset_secs();
    format!(
        "SELECT 'held' AS scope, COALESCE(SUM({outstanding}), 0)::float8 AS usd, COUNT(*)::int8 AS n
           FROM runs r WHERE {OPEN}
         UNION ALL
         SELECT 'held:' || r.budget_session, SUM({outstanding})::float8, COUNT(*)::int8 FROM runs r
          WHERE {OPEN} AND r.budget_session IS NOT NULL GROUP BY r.budget_session
         UNION ALL
         SELECT 'day:' || to_char((q.created_at::timestamptz AT TIME ZONE 'UTC')
                    + make_interval(secs => {off}), 'YYYY-MM-DD'),
                SUM(q.cost_usd)::float8, 0::int8 FROM requests q
          WHERE q.cost_usd IS NOT NULL GROUP BY 1
         UNION ALL
         SELECT 'session:' || COALESCE(r.budget_session, q.session_id), SUM(q.cost_usd)::float8, 0::int8
          FROM requests q LEFT JOIN runs r ON r.id = q.run_id
          WHERE q.cost_usd IS NOT NULL AND COALESCE(r.budget_session, q.session_id) IS NOT NULL
          GROUP BY 1"
    )
}

/// Budget counters (see the SQLite backend's `COUNTERS_MIGRATION`), backfilled.
fn counters_migration() -> String {
    format!(
        "ALTER TABLE runs ADD COLUMN held_usd DOUBLE PRECISION NOT NULL DEFAULT 0;
         UPDATE runs r SET held_usd = {OUTSTANDING_V5} WHERE {OPEN};
         CREATE TABLE budget_spend (
             scope TEXT PRIMARY KEY,
             usd   DOUBLE PRECISION NOT NULL DEFAULT 0,
             n     BIGINT NOT NULL DEFAULT 0
         );
         INSERT INTO budget_spend (scope, usd, n) {};",
        recompute_sql_with(OUTSTANDING_V5)
    )
}

/// Changes to the budget counters: scope → (usd, open runs).
type Deltas = std::collections::BTreeMap<String, (f64, i64)>;

fn add(d: &mut Deltas, scope: String, usd: f64, n: i64) {
    let e = d.entry(scope).or_default();
    e.0 += usd;
    e.1 += n;
}

/// Apply `d` in one statement, scopes in order (every writer locks counter rows in
/// the same order). A held scope whose last open run ends goes back to exactly zero.
async fn bump(
    tx: &impl deadpool_postgres::GenericClient,
    d: Deltas,
) -> Result<(), tokio_postgres::Error> {
    if d.is_empty() {
        return Ok(());
    }
    let (mut k, mut u, mut n) = (Vec::new(), Vec::new(), Vec::new());
    for (scope, (usd, runs)) in d {
        k.push(scope);
        u.push(usd);
        n.push(runs);
    }
    let st = tx
        .prepare_cached(
            "INSERT INTO budget_spend AS b (scope, usd, n)
             SELECT * FROM unnest($1::text[], $2::float8[], $3::int8[]) ORDER BY 1
             ON CONFLICT (scope) DO UPDATE SET
                 usd = CASE WHEN excluded.n < 0 AND b.n + excluded.n <= 0 THEN 0
                            ELSE b.usd + excluded.usd END,
                 n = b.n + excluded.n",
        )
        .await?;
    tx.execute(&st, &[&k, &u, &n]).await.map(|_| ())
}

/// Spend today and in budget session `session`: a few counter rows, read in one
/// statement (one snapshot).
async fn spend_in(
    tx: &impl deadpool_postgres::GenericClient,
    session: Option<&str>,
) -> Result<Spend, tokio_postgres::Error> {
    let c = read_counters(tx, &counter_scopes(session.into_iter())).await?;
    Ok(spend_of(&c, &Deltas::new(), session))
}

/// The counter scopes a check in `sessions` reads.
fn counter_scopes<'a>(sessions: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut k = vec![scope::HELD.to_string(), scope::day(&local_day(None))];
    for s in sessions {
        k.push(scope::session(s));
        k.push(scope::held_in(s));
    }
    k
}

async fn read_counters(
    tx: &impl deadpool_postgres::GenericClient,
    scopes: &[String],
) -> Result<std::collections::HashMap<String, f64>, tokio_postgres::Error> {
    let st = tx
        .prepare_cached("SELECT scope, usd FROM budget_spend WHERE scope = ANY($1)")
        .await?;
    Ok(tx
        .query(&st, &[&scopes])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Spend from counters `c` read at the start of a batch and the batch's changes `d`.
fn spend_of(
    c: &std::collections::HashMap<String, f64>,
    d: &Deltas,
    session: Option<&str>,
) -> Spend {
    let v = |k: &str| c.get(k).copied().unwrap_or(0.0) + d.get(k).map_or(0.0, |x| x.0);
    Spend {
        today_usd: v(&scope::day(&local_day(None))) + v(scope::HELD).max(0.0),
        session_usd: session.map_or(0.0, |s| {
            v(&scope::session(s)) + v(&scope::held_in(s)).max(0.0)
        }),
    }
}

/// Settle the open runs `cond` selects (rows locked in id order), releasing what they
/// hold into `d`.
async fn settle_where(
    tx: &impl deadpool_postgres::GenericClient,
    cond: &str,
    params: &[&(dyn ToSql + Sync)],
    d: &mut Deltas,
) -> Result<(), tokio_postgres::Error> {
    let st = tx
        .prepare_cached(&format!(
            "WITH x AS (SELECT r.id, r.held_usd, r.reserved_usd, r.budget_session FROM runs r
                            WHERE r.settled_at IS NULL AND ({cond}) ORDER BY r.id FOR UPDATE)
                 UPDATE runs r SET settled_at = {NOW_PG}, held_usd = 0 FROM x WHERE r.id = x.id
                 RETURNING x.held_usd, x.reserved_usd, x.budget_session"
        ))
        .await?;
    let rows = tx.query(&st, params).await?;
    for r in rows {
        let (held, reserved, bs): (f64, Option<f64>, Option<String>) =
            (r.get(0), r.get(1), r.get(2));
        if reserved.unwrap_or(0.0) > 0.0 {
            add(d, scope::HELD.into(), -held, -1);
            if let Some(bs) = bs {
                add(d, scope::held_in(&bs), -held, -1);
            }
        }
    }
    Ok(())
}

/// Settle the holds of processes on this machine that are gone, and holds older than
/// [`STALE_HOLD`] from anywhere (a replica on another machine that died: no request
/// runs that long); what they held goes into `d`.
async fn expire_dead(
    tx: &impl deadpool_postgres::GenericClient,
    host: &str,
    d: &mut Deltas,
) -> Result<(), tokio_postgres::Error> {
    let me = crate::shared::pid() as i64;
    let st = tx
        .prepare_cached(&format!(
            "SELECT DISTINCT pid FROM runs r WHERE {OPEN} AND host = $1 AND pid IS NOT NULL AND pid <> $2"
        ))
        .await?;
    let rows = tx.query(&st, &[&host, &me]).await?;
    settle_where(
        tx,
        &format!(
            "r.reserved_usd > 0 AND r.created_at <
             to_char((clock_timestamp() - interval '{STALE_HOLD}') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
        ),
        &[],
        d,
    )
    .await?;
    let dead: Vec<i64> = rows
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .filter(|pid| !super::process_alive(*pid))
        .collect();
    if !dead.is_empty() {
        settle_where(tx, "r.host = $1 AND r.pid = ANY($2)", &[&host, &dead], d).await?;
    }
    Ok(())
}

/// Count newly written requests `(run, own session, cost, created_at)`: each cost
/// goes to its day and budget session, and releases as much of its run's hold. The
/// counter changes are returned (the caller applies them once per transaction).
async fn count_requests(
    tx: &impl deadpool_postgres::GenericClient,
    rows: &[Counted],
) -> Result<Deltas, tokio_postgres::Error> {
    let rows: Vec<_> = rows.iter().filter(|r| r.2 != 0.0).collect();
    if rows.is_empty() {
        return Ok(Deltas::new());
    }
    // What each holder releases: a run's own hold, or the lease its run drew from.
    let mut per_run: std::collections::BTreeMap<&str, f64> = Default::default();
    for (run, _, cost, _, holder) in &rows {
        if *cost > 0.0 {
            *per_run.entry(holder.as_deref().unwrap_or(run)).or_default() += cost;
        }
    }
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let (ids_r, costs_r): (Vec<&str>, Vec<f64>) = per_run.into_iter().unzip();
    let sessions = tx
        .prepare_cached("SELECT id, budget_session FROM runs WHERE id = ANY($1)")
        .await?;
    let release = tx
        .prepare_cached(
            "WITH d AS (SELECT * FROM unnest($1::text[], $2::float8[]) AS d(id, c)),
                  o AS (SELECT r.id, r.held_usd, r.budget_session FROM runs r JOIN d ON d.id = r.id
                        WHERE r.settled_at IS NULL AND r.reserved_usd > 0 AND r.held_usd > 0
                        ORDER BY r.id FOR UPDATE OF r)
             UPDATE runs r SET held_usd = GREATEST(o.held_usd - d.c, 0) FROM o, d
             WHERE r.id = o.id AND d.id = o.id
             RETURNING o.budget_session, o.held_usd - r.held_usd",
        )
        .await?;
    let (p1, p2): (&[&(dyn ToSql + Sync)], &[&(dyn ToSql + Sync)]) = (&[&ids], &[&ids_r, &costs_r]);
    let (sessions, released) =
        futures_util::try_join!(tx.query(&sessions, p1), tx.query(&release, p2))?;
    let bs: std::collections::HashMap<String, Option<String>> =
        sessions.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut d = Deltas::new();
    for (run, own, cost, at, _) in &rows {
        add(&mut d, scope::day(&local_day(Some(at))), *cost, 0);
        let budget_session = bs
            .get(run.as_str())
            .cloned()
            .flatten()
            .or_else(|| own.clone());
        if let Some(s) = budget_session {
            add(&mut d, scope::session(&s), *cost, 0);
        }
    }
    for r in released {
        let (bs, usd): (Option<String>, f64) = (r.get(0), r.get(1));
        add(&mut d, scope::HELD.into(), -usd, 0);
        if let Some(bs) = bs {
            add(&mut d, scope::held_in(&bs), -usd, 0);
        }
    }
    Ok(d)
}

/// The batch insert of request rows: one array per column.
static INSERT_MANY: std::sync::LazyLock<String> = std::sync::LazyLock::new(insert_many_sql);

fn insert_many_sql() -> String {
    let mut cols = vec!["uid"];
    let mut args = vec!["$1::text[]".to_string()];
    for (i, c) in request_written_columns().enumerate() {
        cols.push(c.name);
        let t = match c.kind {
            super::ColumnKind::Int => "int8",
            super::ColumnKind::Real => "float8",
            super::ColumnKind::Text => "text",
        };
        args.push(format!("${}::{t}[]", i + 2));
    }
    format!(
        "INSERT INTO requests ({}) SELECT * FROM unnest({}) ON CONFLICT (uid) DO NOTHING
         RETURNING uid, id, created_at",
        cols.join(", "),
        args.join(", ")
    )
}

/// The columns of `rows` as arrays, in [`INSERT_MANY`]'s order.
fn request_arrays(rows: &[&NewRequest]) -> Vec<Box<dyn ToSql + Sync + Send>> {
    let mut out: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(
        rows.iter().map(|r| r.uid.clone()).collect::<Vec<String>>(),
    )];
    for c in request_written_columns() {
        let values = rows.iter().map(|r| r.value(c.name));
        out.push(match c.kind {
            super::ColumnKind::Int => Box::new(
                values
                    .map(|v| match v {
                        Value::Int(i) => Some(*i),
                        Value::Real(f) => Some(*f as i64),
                        _ => None,
                    })
                    .collect::<Vec<Option<i64>>>(),
            ),
            super::ColumnKind::Real => Box::new(
                values
                    .map(|v| match v {
                        Value::Real(f) => Some(*f),
                        Value::Int(i) => Some(*i as f64),
                        _ => None,
                    })
                    .collect::<Vec<Option<f64>>>(),
            ),
            super::ColumnKind::Text => Box::new(
                values
                    .map(|v| match v {
                        Value::Text(s) => Some(s.clone()),
                        Value::Int(i) => Some(i.to_string()),
                        Value::Real(f) => Some(f.to_string()),
                        Value::Null => None,
                    })
                    .collect::<Vec<Option<String>>>(),
            ),
        });
    }
    out
}

/// What [`count_requests`] needs of a request row written at `created_at`.
fn counted_row(row: &NewRequest, created_at: String) -> Counted {
    let cost = match row.value("cost_usd") {
        Value::Real(f) => *f,
        Value::Int(i) => *i as f64,
        _ => 0.0,
    };
    let own = match row.value("session_id") {
        Value::Text(s) => Some(s.clone()),
        _ => None,
    };
    let lease = match row.value("lease_id") {
        Value::Text(s) => Some(s.clone()),
        _ => None,
    };
    (row.run.0.clone(), own, cost, created_at, lease)
}

/// A request row to count: its run, own session, cost, creation time and lease.
type Counted = (String, Option<String>, f64, String, Option<String>);

/// A run's bookkeeping state as a batch sees it.
struct RunState {
    held: f64,
    reserved: f64,
    bs: Option<String>,
    settled: bool,
    spent: f64,
}

/// The runs `ids` as they are now, locked (a request row's release waits for us).
const PRIORS_SQL: &str =
    "SELECT r.id, r.held_usd, r.reserved_usd, r.budget_session, r.settled_at IS NOT NULL,
            COALESCE((SELECT SUM(q.cost_usd) FROM requests q WHERE q.run_id = r.id), 0)::float8
     FROM runs r WHERE r.id = ANY($1) ORDER BY r.id FOR UPDATE";

fn priors(rows: &[tokio_postgres::Row]) -> std::collections::HashMap<String, RunState> {
    rows.iter()
        .map(|r| {
            (
                r.get(0),
                RunState {
                    held: r.get(1),
                    reserved: r.get::<_, Option<f64>>(2).unwrap_or(0.0),
                    bs: r.get(3),
                    settled: r.get(4),
                    spent: r.get(5),
                },
            )
        })
        .collect()
}

/// What a batch decides: one result per op, the runs to write with what each holds,
/// the runs to settle, and the counter changes.
type Decided<'a> = (
    Vec<Result<(), Refused>>,
    Vec<(&'a RunEntry, f64)>,
    Vec<&'a str>,
    Deltas,
);

/// Decide `ops` in order against the runs as they are and the counters read at the
/// start of the batch (`d` holds changes made so far).
fn decide<'a>(
    ops: &[&'a BookOp],
    mut runs: std::collections::HashMap<String, RunState>,
    counters: &std::collections::HashMap<String, f64>,
    mut d: Deltas,
) -> Decided<'a> {
    let release = |d: &mut Deltas, r: &RunState| {
        if !r.settled && r.reserved > 0.0 {
            add(d, scope::HELD.into(), -r.held, -1);
            if let Some(bs) = &r.bs {
                add(d, scope::held_in(bs), -r.held, -1);
            }
        }
    };
    let mut out = Vec::with_capacity(ops.len());
    let mut begun: Vec<(&RunEntry, f64)> = Vec::new();
    let mut settled: Vec<&str> = Vec::new();
    for &op in ops {
        match op {
            BookOp::Begin(e) => {
                if let Some((budget, projection)) = &e.gate {
                    let spend = spend_of(counters, &d, e.budget_session.as_deref());
                    if let Err(r) = budget.check(spend, projection) {
                        out.push(Err(Refused::Budget(r)));
                        continue;
                    }
                }
                let prior = runs.remove(&e.run_id);
                if let Some(p) = &prior {
                    release(&mut d, p);
                }
                let reserved = e.bound().unwrap_or(0.0);
                let was_settled = prior.as_ref().is_some_and(|p| p.settled);
                let spent = prior.as_ref().map_or(0.0, |p| p.spent);
                let holds = !was_settled && reserved > 0.0;
                let held = if holds {
                    (reserved - spent).max(0.0)
                } else {
                    0.0
                };
                if holds {
                    add(&mut d, scope::HELD.into(), held, 1);
                    if let Some(bs) = &e.budget_session {
                        add(&mut d, scope::held_in(bs), held, 1);
                    }
                }
                runs.insert(
                    e.run_id.clone(),
                    RunState {
                        held,
                        reserved,
                        bs: e.budget_session.clone(),
                        settled: was_settled,
                        spent,
                    },
                );
                begun.push((&**e, held));
                out.push(Ok(()));
            }
            BookOp::Settle(id) => {
                if let Some(r) = runs.get_mut(id) {
                    release(&mut d, r);
                    r.settled = true;
                    r.held = 0.0;
                }
                settled.push(id);
                out.push(Ok(()));
            }
        }
    }
    // One row per run (a run noted twice in the batch: its last note).
    let mut last = std::collections::HashMap::new();
    for (i, (e, _)) in begun.iter().enumerate() {
        last.insert(e.run_id.as_str(), i);
    }
    let begun = begun
        .iter()
        .enumerate()
        .filter(|(i, (e, _))| last.get(e.run_id.as_str()) == Some(i))
        .map(|(_, b)| *b)
        .collect();
    (out, begun, settled, d)
}

/// The writes of a batch as arrays: sessions, run notes (one upsert), settlements.
struct Writes<'a> {
    sessions: Vec<&'a str>,
    id: Vec<&'a str>,
    session: Vec<Option<&'a str>>,
    trace: Vec<Option<&'a str>>,
    targets: Vec<&'a str>,
    projected: Vec<Option<f64>>,
    prompt: Vec<Option<&'a str>>,
    reserved: Vec<Option<f64>>,
    bs: Vec<Option<&'a str>>,
    pid: Vec<i64>,
    host: Vec<&'a str>,
    held: Vec<f64>,
    settled: Vec<&'a str>,
}

impl<'a> Writes<'a> {
    fn new(begun: &[(&'a RunEntry, f64)], settled: Vec<&'a str>, host: &'a str) -> Self {
        let pid = crate::shared::pid() as i64;
        Writes {
            sessions: begun
                .iter()
                .filter_map(|(e, _)| e.session_id.as_deref())
                .collect(),
            id: begun.iter().map(|(e, _)| e.run_id.as_str()).collect(),
            session: begun.iter().map(|(e, _)| e.session_id.as_deref()).collect(),
            trace: begun.iter().map(|(e, _)| e.trace_id.as_deref()).collect(),
            targets: begun.iter().map(|(e, _)| e.targets.as_str()).collect(),
            projected: begun.iter().map(|(e, _)| e.projected_usd).collect(),
            prompt: begun.iter().map(|(e, _)| e.prompt.as_deref()).collect(),
            reserved: begun.iter().map(|(e, _)| e.bound()).collect(),
            bs: begun
                .iter()
                .map(|(e, _)| e.budget_session.as_deref())
                .collect(),
            pid: begun.iter().map(|_| pid).collect(),
            host: begun.iter().map(|_| host).collect(),
            held: begun.iter().map(|(_, h)| *h).collect(),
            settled,
        }
    }

    /// The statements, to pipeline in this order.
    async fn send<'s>(
        &'s self,
        tx: &'s deadpool_postgres::Transaction<'s>,
    ) -> Result<Vec<Write<'s>>, tokio_postgres::Error> {
        let (sessions, upsert, settle) = futures_util::try_join!(
            tx.prepare_cached(
                "INSERT INTO sessions (id) SELECT DISTINCT unnest($1::text[]) ORDER BY 1
                 ON CONFLICT (id) DO NOTHING",
            ),
            tx.prepare_cached(
                "INSERT INTO runs (id, session_id, trace_id, targets, projected_usd, prompt,
                                   reserved_usd, budget_session, pid, host, held_usd)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                      $5::float8[], $6::text[], $7::float8[], $8::text[],
                                      $9::int8[], $10::text[], $11::float8[]) ORDER BY 1
                 ON CONFLICT (id) DO UPDATE SET targets = excluded.targets,
                     projected_usd = excluded.projected_usd,
                     reserved_usd = excluded.reserved_usd,
                     budget_session = excluded.budget_session, pid = excluded.pid,
                     host = excluded.host, held_usd = excluded.held_usd",
            ),
            tx.prepare_cached(SETTLE_SQL.as_str())
        )?;
        let mut w: Vec<Write<'s>> = Vec::new();
        if !self.sessions.is_empty() {
            let p = [&self.sessions as &(dyn ToSql + Sync)];
            w.push(Box::pin(async move { tx.execute_raw(&sessions, p).await }));
        }
        if !self.id.is_empty() {
            let p: [&(dyn ToSql + Sync); 11] = [
                &self.id,
                &self.session,
                &self.trace,
                &self.targets,
                &self.projected,
                &self.prompt,
                &self.reserved,
                &self.bs,
                &self.pid,
                &self.host,
                &self.held,
            ];
            w.push(Box::pin(async move { tx.execute_raw(&upsert, p).await }));
        }
        if !self.settled.is_empty() {
            let p = [&self.settled as &(dyn ToSql + Sync)];
            w.push(Box::pin(async move { tx.execute_raw(&settle, p).await }));
        }
        Ok(w)
    }
}

/// Apply bookkeeping `ops` in transaction `tx` (see [`Backend::write`]), with as few
/// round trips as the decisions allow: a batch without caps sends everything at once.
/// The counter changes are returned (the caller applies them once per transaction).
/// With `no_flush` (a batch of bookkeeping alone), the commit does not wait for its
/// WAL flush.
async fn book_in(
    tx: &deadpool_postgres::Transaction<'_>,
    host: &str,
    ops: &[&BookOp],
    no_flush: bool,
) -> Result<(Vec<Result<(), Refused>>, Deltas), tokio_postgres::Error> {
    // Bookkeeping before the send: atomic and visible to every replica at commit,
    // without waiting for its own WAL flush; it becomes durable with the flush of the
    // next request row (as SQLite's run notes do). Losing it in a crash of the
    // database loses no request, only holds.
    let sync_off = async {
        if no_flush {
            tx.batch_execute("SET LOCAL synchronous_commit = off").await
        } else {
            Ok(())
        }
    };
    let gates: Vec<&RunEntry> = ops
        .iter()
        .filter_map(|o| match o {
            BookOp::Begin(e) if e.gate.is_some() => Some(&**e),
            _ => None,
        })
        .collect();
    let ids: Vec<&str> = ops
        .iter()
        .map(|o| match o {
            BookOp::Begin(e) => e.run_id.as_str(),
            BookOp::Settle(id) => id.as_str(),
        })
        .collect();
    let priors_st = tx.prepare_cached(PRIORS_SQL).await?;
    if gates.is_empty() {
        // No cap to check: what to write does not depend on what is there (a run
        // noted without a gate holds nothing), so the runs are read (and locked)
        // and written in one pipeline; the counters learn what was released.
        let (_, begun, settled, _) =
            decide(ops, Default::default(), &Default::default(), Deltas::new());
        let writes = Writes::new(&begun, settled, host);
        let sent = writes.send(tx).await?;
        let ids_p: [&(dyn ToSql + Sync); 1] = [&ids];
        let (_, rows, _) = futures_util::try_join!(
            sync_off,
            tx.query(&priors_st, &ids_p),
            futures_util::future::try_join_all(sent)
        )?;
        let (out, _, _, d) = decide(ops, priors(&rows), &Default::default(), Deltas::new());
        return Ok((out, d));
    }
    // One lock per budget scope, always in this order: the daily cap, then sessions by
    // name. Replicas anywhere serialise on the check.
    let lock = tx
        .prepare_cached("SELECT pg_advisory_xact_lock(hashtext($1))")
        .await?;
    let mut keys: Vec<String> = Vec::new();
    if gates
        .iter()
        .any(|e| e.gate.as_ref().is_some_and(|g| g.0.daily_usd.is_some()))
    {
        keys.push("quorum:budget:daily".into());
    }
    let sessions: std::collections::BTreeSet<&str> = gates
        .iter()
        .filter(|e| e.gate.as_ref().is_some_and(|g| g.0.session_usd.is_some()))
        .filter_map(|e| e.budget_session.as_deref())
        .collect();
    keys.extend(
        sessions
            .iter()
            .map(|s| format!("quorum:budget:session:{s}")),
    );
    let lock = &lock;
    let locks = keys.iter().map(|k| async move {
        let p: [&(dyn ToSql + Sync); 1] = [k];
        tx.execute(lock, &p).await
    });
    futures_util::try_join!(sync_off, futures_util::future::try_join_all(locks))?;
    let scopes = counter_scopes(gates.iter().filter_map(|e| e.budget_session.as_deref()));
    let counters_st = tx
        .prepare_cached("SELECT scope, usd FROM budget_spend WHERE scope = ANY($1)")
        .await?;
    let (ids_p, scopes_p): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) =
        ([&ids], [&scopes]);
    let read = || async {
        let (rows, counters) = futures_util::try_join!(
            tx.query(&priors_st, &ids_p),
            tx.query(&counters_st, &scopes_p)
        )?;
        let counters: std::collections::HashMap<String, f64> =
            counters.iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok::<_, tokio_postgres::Error>((priors(&rows), counters))
    };
    let (runs, counters) = read().await?;
    let mut decided = decide(ops, runs, &counters, Deltas::new());
    // Dead and stale holds are expired lazily, only when a cap check fails (then the
    // batch is decided again on fresh reads). This is safe: such holds only add to
    // the held counters, so leaving them in place can only make a check stricter,
    // never let a run pass that should be refused; a check that fails with them gets
    // its second chance without them. Nothing was written yet: `decide` is in memory.
    if decided
        .0
        .iter()
        .any(|r| matches!(r, Err(Refused::Budget(_))))
    {
        let mut d = Deltas::new();
        expire_dead(tx, host, &mut d).await?;
        let (runs, counters) = read().await?;
        decided = decide(ops, runs, &counters, d);
    }
    let (out, begun, settled, d) = decided;
    let writes = Writes::new(&begun, settled, host);
    let sent = writes.send(tx).await?;
    futures_util::future::try_join_all(sent).await?;
    Ok((out, d))
}

type Write<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>;

/// Settle runs by id (their holds are released by the caller).
static SETTLE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("UPDATE runs SET settled_at = {NOW_PG}, held_usd = 0 WHERE id = ANY($1) AND settled_at IS NULL")
});

/// Insert request `rows` (with their sessions, runs and price rows) in transaction
/// `tx`: their ids, and the counter changes they make (applied by the caller). Rows
/// written before (a replay) keep their ids, and were counted then.
async fn insert_in(
    tx: &deadpool_postgres::Transaction<'_>,
    place: &str,
    rows: &[&NewRequest],
) -> Result<(Vec<i64>, Deltas), LedgerError> {
    let ce = |e: tokio_postgres::Error| classify(place, &e);
    // One statement per table for the whole batch (arrays, `unnest`), all four
    // pipelined; then the budget counters.
    let (insert, session, run, price) = futures_util::try_join!(
        tx.prepare_cached(&INSERT_MANY),
        tx.prepare_cached(
            "INSERT INTO sessions (id, source_agent)
             SELECT * FROM unnest($1::text[], $2::text[]) ORDER BY 1 ON CONFLICT (id) DO NOTHING",
        ),
        tx.prepare_cached(
            "INSERT INTO runs (id, session_id, trace_id, prompt)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) ORDER BY 1
             ON CONFLICT (id) DO NOTHING",
        ),
        tx.prepare_cached(
            "INSERT INTO prices (id, row)
             SELECT * FROM unnest($1::text[], $2::text[]) ORDER BY 1 ON CONFLICT (id) DO NOTHING",
        )
    )
    .map_err(ce)?;
    // Sessions, runs and price rows once each per batch.
    let mut seen = std::collections::HashSet::new();
    let (mut s_id, mut s_agent) = (Vec::new(), Vec::new());
    let (mut r_id, mut r_session, mut r_trace, mut r_prompt) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut p_id, mut p_row) = (Vec::new(), Vec::new());
    for &row in rows {
        if let Some((s, agent)) = &row.session {
            if seen.insert(("s", s.as_str())) {
                s_id.push(s.as_str());
                s_agent.push(agent.as_deref());
            }
        }
        let (r, s, t, p) = &row.run;
        if seen.insert(("r", r.as_str())) {
            r_id.push(r.as_str());
            r_session.push(s.as_deref());
            r_trace.push(t.as_deref());
            r_prompt.push(p.as_deref());
        }
        if let Some((id, json)) = &row.price {
            if seen.insert(("p", id.as_str())) {
                p_id.push(id.as_str());
                p_row.push(json.as_str());
            }
        }
    }
    let columns = request_arrays(rows);
    let params: Vec<&(dyn ToSql + Sync)> = columns
        .iter()
        .map(|c| &**c as &(dyn ToSql + Sync))
        .collect();
    let sp: [&(dyn ToSql + Sync); 2] = [&s_id, &s_agent];
    let rp: [&(dyn ToSql + Sync); 4] = [&r_id, &r_session, &r_trace, &r_prompt];
    let pp: [&(dyn ToSql + Sync); 2] = [&p_id, &p_row];
    let (_, _, _, inserted) = futures_util::try_join!(
        tx.execute(&session, &sp),
        tx.execute(&run, &rp),
        tx.execute(&price, &pp),
        tx.query(&insert, &params)
    )
    .map_err(ce)?;
    let mut new: std::collections::HashMap<String, (i64, String)> = inserted
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    // Rows written before (a replay) keep their ids, and were counted then.
    let old: Vec<&str> = rows
        .iter()
        .filter(|r| !new.contains_key(&r.uid))
        .map(|r| r.uid.as_str())
        .collect();
    let mut old_ids = std::collections::HashMap::new();
    if !old.is_empty() {
        for r in tx
            .query("SELECT uid, id FROM requests WHERE uid = ANY($1)", &[&old])
            .await
            .map_err(ce)?
        {
            old_ids.insert(r.get::<_, String>(0), r.get::<_, i64>(1));
        }
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut counted = Vec::new();
    for &row in rows {
        let id = match new.remove(&row.uid) {
            Some((id, at)) => {
                counted.push(counted_row(row, at));
                id
            }
            None => old_ids
                .get(&row.uid)
                .copied()
                .ok_or_else(|| LedgerError::Backend {
                    place: place.to_string(),
                    detail: format!("request {} was neither written nor found", row.uid),
                })?,
        };
        ids.push(id);
    }
    let d = count_requests(tx, &counted).await.map_err(ce)?;
    Ok((ids, d))
}

fn run_row(r: &tokio_postgres::Row) -> Result<RunRow, tokio_postgres::Error> {
    let targets: Option<String> = r.try_get("targets")?;
    Ok(RunRow {
        id: r.try_get("id")?,
        session_id: r.try_get("session_id")?,
        trace_id: r.try_get("trace_id")?,
        created_at: r.try_get("created_at")?,
        targets: targets
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
        projected_usd: r.try_get("projected_usd")?,
        prompt: r.try_get("prompt")?,
    })
}

impl PgBackend {
    /// Connect to `url`, and create or migrate the schema.
    pub fn connect(url: &str) -> Result<PgBackend, LedgerError> {
        let b = Self::build(url)?;
        b.run(|_, _, _| async { Ok(()) })?;
        Ok(b)
    }

    /// Like [`PgBackend::connect`], but a database that cannot be reached now is not
    /// an error: the backend is returned with why (every call reports it unavailable
    /// until it returns, and the first call that reaches it migrates the schema).
    /// Anything else (a bad URL, TLS, a refused login, a newer schema) still fails.
    pub fn connect_lazy(url: &str) -> Result<(PgBackend, Option<LedgerError>), LedgerError> {
        let b = Self::build(url)?;
        match b.run(|_, _, _| async { Ok(()) }) {
            Ok(()) => Ok((b, None)),
            Err(e) if e.is_unavailable() => Ok((b, Some(e))),
            Err(e) => Err(e),
        }
    }

    /// The pool, without connecting.
    fn build(url: &str) -> Result<PgBackend, LedgerError> {
        let super::pg_conn::Resolved { cfg, tls, place } =
            super::pg_conn::resolve(url).map_err(|r| LedgerError::Open {
                place: r.place,
                detail: r.detail,
            })?;
        let open = |detail: String| LedgerError::Open {
            place: place.clone(),
            detail,
        };
        let connector = tls
            .connector()
            .map_err(|e| open(format!("TLS ({}): {e}", tls.describe())))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("quorum-ledger-pg")
            .enable_all()
            .build()
            .map_err(|e| open(format!("cannot start its runtime: {e}")))?;
        let mc = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let mgr = match connector {
            Some(c) => Manager::from_config(cfg, c, mc),
            None => Manager::from_config(cfg, NoTls, mc),
        };
        let pool = {
            let _g = rt.enter();
            Pool::builder(mgr)
                .max_size(16)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(Duration::from_secs(30)))
                .create_timeout(Some(Duration::from_secs(30)))
                .recycle_timeout(Some(Duration::from_secs(5)))
                .build()
                .map_err(|e| open(e.to_string()))?
        };
        Ok(PgBackend {
            rt: Some(rt),
            pool,
            place,
            host: this_host(),
            migrated: Arc::new(AtomicBool::new(false)),
            migrating: Arc::new(tokio::sync::Mutex::new(())),
            tls,
        })
    }

    /// Run `f` on this backend's runtime and wait for it; the schema is migrated
    /// first when no call has reached the database yet.
    fn run<T, Fut>(&self, f: impl FnOnce(Pool, String, String) -> Fut) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, LedgerError>> + Send + 'static,
    {
        let Some(rt) = &self.rt else {
            return Err(LedgerError::Unavailable {
                place: self.place.clone(),
                detail: "the ledger is shutting down".into(),
            });
        };
        let ready = (!self.migrated.load(Ordering::Acquire)).then(|| {
            migrate(
                self.pool.clone(),
                self.place.clone(),
                self.migrated.clone(),
                self.migrating.clone(),
            )
        });
        let fut = f(self.pool.clone(), self.place.clone(), self.host.clone());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            if let Some(ready) = ready {
                if let Err(e) = ready.await {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
            let _ = tx.send(fut.await);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(LedgerError::Unavailable {
                place: self.place.clone(),
                detail: "the ledger's task ended without an answer".into(),
            })
        })
    }

    /// Copy rows already made elsewhere (migration): requests keep their `created_at`,
    /// runs their reservation state. Idempotent (existing rows are kept).
    pub fn import(&self, batch: super::migrate::Batch) -> Result<u64, LedgerError> {
        self.run(move |pool, place, _| async move {
            let ce = |e: tokio_postgres::Error| classify(&place, &e);
            let mut client = pool.get().await.map_err(|e| pool_err(&place, e))?;
            let tx = client.transaction().await.map_err(ce)?;
            let mut n = 0u64;
            for s in &batch.sessions {
                n += tx
                    .execute(
                        "INSERT INTO sessions (id, created_at, label, source_agent)
                         VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                        &[&s.id, &s.created_at, &s.label, &s.source_agent],
                    )
                    .await
                    .map_err(ce)?;
            }
            for r in &batch.runs {
                n += tx
                    .execute(
                        "INSERT INTO runs (id, session_id, trace_id, created_at, targets, projected_usd,
                                           prompt, reserved_usd, budget_session, pid, settled_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                         ON CONFLICT (id) DO NOTHING",
                        &[
                            &r.id,
                            &r.session_id,
                            &r.trace_id,
                            &r.created_at,
                            &r.targets,
                            &r.projected_usd,
                            &r.prompt,
                            &r.reserved_usd,
                            &r.budget_session,
                            &r.pid,
                            // A hold copied from another machine's file is over.
                            &r.settled_at.clone().or_else(|| Some(r.created_at.clone())),
                        ],
                    )
                    .await
                    .map_err(ce)?;
            }
            for (id, row, first) in &batch.prices {
                n += tx
                    .execute(
                        "INSERT INTO prices (id, row, first_used_at) VALUES ($1, $2, $3)
                         ON CONFLICT (id) DO NOTHING",
                        &[id, row, first],
                    )
                    .await
                    .map_err(ce)?;
            }
            let mut cols: Vec<&str> = vec!["uid", "created_at"];
            cols.extend(request_written_columns().map(|c| c.name));
            let marks: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "INSERT INTO requests ({}) VALUES ({}) ON CONFLICT (uid) DO NOTHING",
                cols.join(", "),
                marks.join(", ")
            );
            let st = tx.prepare(&sql).await.map_err(ce)?;
            let mut counted = Vec::new();
            for (uid, created, row) in &batch.requests {
                let mut params: Vec<&(dyn ToSql + Sync)> = vec![uid, created];
                for c in request_written_columns() {
                    params.push(row.value(c.name));
                }
                let wrote = tx.execute(&st, &params).await.map_err(ce)?;
                if wrote > 0 {
                    counted.push(counted_row(row, created.clone()));
                }
                n += wrote;
            }
            // Their costs count in the budget counters (their runs are settled).
            let d = count_requests(&tx, &counted).await.map_err(ce)?;
            bump(&tx, d).await.map_err(ce)?;
            for v in &batch.votes {
                n += tx
                    .execute(
                        "INSERT INTO votes (uid, run_id, targets, winner, tag, created_at)
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (uid) DO NOTHING",
                        &[&v.0, &v.1, &v.2, &v.3, &v.4, &v.5],
                    )
                    .await
                    .map_err(ce)?;
            }
            for (table, key, rows) in [
                ("eval_runs", "id", &batch.eval_runs),
                ("eval_cases", "eval_run_id, case_key", &batch.eval_cases),
            ] {
                for row in rows {
                    let cols: Vec<&str> = row.iter().map(|(c, _)| c.as_str()).collect();
                    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
                    let sql = format!(
                        "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({key}) DO NOTHING",
                        cols.join(", "),
                        marks.join(", ")
                    );
                    let params: Vec<&(dyn ToSql + Sync)> =
                        row.iter().map(|(_, v)| v as &(dyn ToSql + Sync)).collect();
                    n += tx.execute(&sql, &params).await.map_err(ce)?;
                }
            }
            tx.commit().await.map_err(ce)?;
            Ok(n)
        })
    }
}

/// Create or migrate the schema, once per process (under an advisory lock, so that
/// several processes may start at once).
async fn migrate(
    pool: Pool,
    place: String,
    migrated: Arc<AtomicBool>,
    migrating: Arc<tokio::sync::Mutex<()>>,
) -> Result<(), LedgerError> {
    let _one = migrating.lock().await;
    if migrated.load(Ordering::Acquire) {
        return Ok(());
    }
    let pe = |e| pool_err(&place, e);
    let ce = |e: tokio_postgres::Error| classify(&place, &e);
    let mut client = pool.get().await.map_err(pe)?;
    let migs = migrations();
    let tx = client.transaction().await.map_err(ce)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(ce)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS quorum_schema (version BIGINT NOT NULL)")
        .await
        .map_err(ce)?;
    let v: Option<i64> = tx
        .query_opt("SELECT version FROM quorum_schema", &[])
        .await
        .map_err(ce)?
        .map(|r| r.get(0));
    let mut v = match v {
        Some(v) => v,
        None => {
            tx.execute("INSERT INTO quorum_schema (version) VALUES (0)", &[])
                .await
                .map_err(ce)?;
            0
        }
    };
    if v as usize > migs.len() {
        return Err(LedgerError::Schema {
            place,
            found: v,
            known: migs.len() as i64,
        });
    }
    while (v as usize) < migs.len() {
        tx.batch_execute(&migs[v as usize]).await.map_err(ce)?;
        v += 1;
        tx.execute("UPDATE quorum_schema SET version = $1", &[&v])
            .await
            .map_err(ce)?;
    }
    tx.commit().await.map_err(ce)?;
    migrated.store(true, Ordering::Release);
    Ok(())
}

async fn query_requests(
    client: &deadpool_postgres::Object,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    place: &str,
) -> Result<Vec<RequestRow>, LedgerError> {
    let rows = client
        .query(sql, params)
        .await
        .map_err(|e| classify(place, &e))?;
    rows.iter()
        .map(|r| {
            RequestRow::from_row(r).map_err(|detail| LedgerError::Backend {
                place: place.to_string(),
                detail,
            })
        })
        .collect()
}

impl Backend for PgBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Postgres
    }

    /// Two: the database works on one batch while the next is sent (every statement
    /// locks runs in id order, counters last, so concurrent batches do not deadlock).
    fn concurrent_writes(&self) -> usize {
        2
    }

    fn place(&self) -> &str {
        &self.place
    }

    fn content_cap(&self) -> usize {
        // PostgreSQL takes up to 1 GB per field.
        content_cap_for(1 << 30)
    }

    fn version(&self) -> Result<i64, LedgerError> {
        self.run(|pool, place, _| async move {
            let c = pool.get().await.map_err(|e| pool_err(&place, e))?;
            c.query_one("SELECT version FROM quorum_schema", &[])
                .await
                .map(|r| r.get(0))
                .map_err(|e| classify(&place, &e))
        })
    }

    fn check_writable(&self) -> Result<(), LedgerError> {
        self.run(|pool, place, _| async move {
            let c = pool.get().await.map_err(|e| pool_err(&place, e))?;
            c.execute("UPDATE quorum_schema SET version = version", &[])
                .await
                .map(|_| ())
                .map_err(|e| classify(&place, &e))
        })
    }

    fn write(&self, ops: &[WriteOp]) -> Result<Vec<Result<i64, Refused>>, LedgerError> {
        let ops = ops.to_vec();
        self.run(move |pool, place, host| async move {
            let ce = |e: tokio_postgres::Error| classify(&place, &e);
            let mut client = pool.get().await.map_err(|e| pool_err(&place, e))?;
            let tx = client.transaction().await.map_err(ce)?;
            // Run notes first (a cap is checked before this batch's rows release their
            // runs' holds: stricter, never looser), then settlements, then the rows (a
            // settled run's row releases nothing more); the counters change once, at
            // the end, so their rows are locked in one order by every writer.
            let row_settles: Vec<BookOp> = ops
                .iter()
                .filter_map(|o| match o {
                    WriteOp::Row { row, settle: true } => Some(BookOp::Settle(row.run.0.clone())),
                    _ => None,
                })
                .collect();
            let mut book: Vec<&BookOp> = Vec::new();
            let mut at = Vec::new();
            for (i, o) in ops.iter().enumerate() {
                if let WriteOp::Book(b @ BookOp::Begin(_)) = o {
                    book.push(b);
                    at.push(i);
                }
            }
            for (i, o) in ops.iter().enumerate() {
                if let WriteOp::Book(b @ BookOp::Settle(_)) = o {
                    book.push(b);
                    at.push(i);
                }
            }
            let booked = at.len();
            book.extend(row_settles.iter());
            let rows: Vec<&NewRequest> = ops
                .iter()
                .filter_map(|o| match o {
                    WriteOp::Row { row, .. } => Some(&**row),
                    _ => None,
                })
                .collect();
            // Every statement here is planned for the ids it is given: a generic plan
            // made while the tables were small (a fresh ledger) would stay cached on
            // the pooled connection and scan them whole ever after (measured: 2.3x
            // fewer requests/s). Sent ahead of the batch's first statements.
            let custom = tx.batch_execute("SET LOCAL plan_cache_mode = force_custom_plan");
            let book_ops = async {
                if book.is_empty() {
                    Ok((Vec::new(), Deltas::new()))
                } else {
                    book_in(&tx, &host, &book, rows.is_empty()).await
                }
            };
            let (_, (out, mut d)) = futures_util::try_join!(custom, book_ops).map_err(ce)?;
            let ids = if rows.is_empty() {
                Vec::new()
            } else {
                let (ids, more) = insert_in(&tx, &place, &rows).await?;
                for (k, (usd, n)) in more {
                    add(&mut d, k, usd, n);
                }
                ids
            };
            bump(&tx, d).await.map_err(ce)?;
            tx.commit().await.map_err(ce)?;
            let mut res: Vec<Result<i64, Refused>> = (0..ops.len()).map(|_| Ok(0)).collect();
            for (i, r) in at.into_iter().zip(out.into_iter().take(booked)) {
                res[i] = r.map(|()| 0);
            }
            let rows_at = ops
                .iter()
                .enumerate()
                .filter(|(_, o)| matches!(o, WriteOp::Row { .. }))
                .map(|(i, _)| i);
            for (i, id) in rows_at.zip(ids) {
                res[i] = Ok(id);
            }
            Ok(res)
        })
    }

    fn budget_counters(&self) -> Result<CounterCheck, LedgerError> {
        self.run(|pool, place, _| async move {
            let ce = |e: tokio_postgres::Error| classify(&place, &e);
            let c = pool.get().await.map_err(|e| pool_err(&place, e))?;
            let read = |rows: Vec<tokio_postgres::Row>| {
                rows.iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect::<Vec<_>>()
            };
            let kept = c
                .query("SELECT scope, usd, n FROM budget_spend ORDER BY scope", &[])
                .await
                .map_err(ce)?;
            let recomputed = c
                .query(
                    &format!("SELECT * FROM ({}) x ORDER BY 1", recompute_sql()),
                    &[],
                )
                .await
                .map_err(ce)?;
            Ok(CounterCheck {
                kept: read(kept),
                recomputed: read(recomputed),
            })
        })
    }

    fn start_session(
        &self,
        id: &str,
        label: Option<&str>,
        source_agent: Option<&str>,
    ) -> Result<(), LedgerError> {
        let (id, label, agent) = (
            id.to_string(),
            label.map(String::from),
            source_agent.map(String::from),
        );
        self.run(|pool, place, _| async move {
            let c = pool.get().await.map_err(|e| pool_err(&place, e))?;
            c.execute(
                "INSERT INTO sessions (id, label, source_agent) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET label = COALESCE(excluded.label, sessions.label)",
                &[&id, &label, &agent],
            )
            .await
            .map(|_| ())
            .map_err(|e| classify(&place, &e))
        })
    }

    fn spend(&self, session: Option<&str>) -> Result<Spend, LedgerError> {
        let session = session.map(String::from);
        self.run(|pool, place, _| async move {
            let c = pool.get().await.map_err(|e| pool_err(&place, e))?;
            spend_in(&c, session.as_deref())
                .await
                .map_err(|e| classify(&place, &e))
        })
    }

    fn open_reservations(&self) -> Result<(u64, f64), LedgerError> {
        self.run(|pool, place, _| async move {
            let c = pool.get().await.map_err(|e| pool_err(&place, e))?;
            let r = c
                .query_one(
                    &format!(
                        "SELECT COUNT(*), COALESCE(SUM({OUTSTANDING}), 0)::float8 FROM runs r WHERE {OPEN}"
                    ),
                    &[],
                )
                .await
                .map_err(|e| classify(&place, &e))?;
            Ok((r.get::<_, i64>(0) as u64, r.get(1)))
        })
    }

    fn totals(&self, by: GroupBy) -> Result<Vec<TotalRow>, LedgerError> {
        let key = match by {
            GroupBy::Session => "COALESCE(session_id, '(none)')",
            GroupBy::Day => {
                "to_char((created_at::timestamptz AT TIME ZONE 'UTC') + make_interval(secs => $1), 'YYYY-MM-DD')"
            }
            GroupBy::Provider => "provider",
            GroupBy::Model => "provider || '/' || model",
        };
        let offset = local_offset_secs() as f64;
        let day = by == GroupBy::Day;
        let sql = format!(
            "SELECT {key} AS k, COUNT(*), COALESCE(SUM(cost_usd), 0)::float8,
                    SUM(CASE WHEN cost_usd IS NULL THEN 1 ELSE 0 END)::int8,
                    SUM(CASE WHEN cost_source = 'estimated' THEN 1 ELSE 0 END)::int8,
                    SUM(CASE WHEN cache_hit = 0 THEN input_tokens ELSE 0 END)::int8,
                    SUM(CASE WHEN cache_hit = 0 THEN output_tokens ELSE 0 END)::int8,
                    SUM(CASE WHEN cache_hit = 0 THEN cached_input_tokens ELSE 0 END)::int8,
                    SUM(CASE WHEN cache_hit = 0 THEN reasoning_tokens ELSE 0 END)::int8,
                    SUM(cache_hit)::int8, SUM(CASE WHEN status <> 'ok' THEN 1 ELSE 0 END)::int8,
                    MIN(created_at), MAX(created_at)
             FROM requests GROUP BY k ORDER BY MAX(created_at) DESC"
        );
        self.run(move |pool, place, _| async move {
            let c = pool.get().await.map_err(|e| pool_err(&place, e))?;
            let rows = if day {
                c.query(&sql, &[&offset]).await
            } else {
                c.query(&sql, &[]).await
            }
            .map_err(|e| classify(&place, &e))?;
            let u = |r: &tokio_postgres::Row, i: usize| {
                r.get::<_, Option<i64>>(i).unwrap_or(0).max(0) as u64
            };
            Ok(rows
                .iter()
                .map(|r| TotalRow {
                    key: r.get(0),
                    requests: u(r, 1),
                    cost_usd: r.get(2),
                    unknown_cost: u(r, 3),
                    estimated: u(r, 4),
                    input_tokens: u(r, 5),
                    output_tokens: u(r, 6),
                    cached_input_tokens: u(r, 7),
                    reasoning_tokens: u(r, 8),
                    cache_hits: u(r, 9),
                    failed: u(r, 10),
                    first: r.get(11),
                    last: r.get(12),
                })
                .collect())
        })
    }

    fn sessions(&self, limit: usize) -> Result<Vec<SessionRow>, LedgerError> {
        let limit = limit.min(i64::MAX as usize) as i64;
        self.run(move |pool, place, _| async move {
            let c = pool.get().await.map_err(|e| pool_err(&place, e))?;
            let rows = c
                .query(
                    "SELECT s.id, s.label, s.source_agent, s.created_at,
                            COUNT(DISTINCT r.run_id), COUNT(r.id), COALESCE(SUM(r.cost_usd), 0)::float8,
                            COALESCE(SUM(CASE WHEN r.cost_usd IS NULL AND r.id IS NOT NULL THEN 1 ELSE 0 END), 0)::int8,
                            COALESCE(MAX(r.created_at), s.created_at) AS last
                     FROM sessions s LEFT JOIN requests r ON r.session_id = s.id
                     GROUP BY s.id ORDER BY last DESC LIMIT $1",
                    &[&limit],
                )
                .await
                .map_err(|e| classify(&place, &e))?;
            Ok(rows
                .iter()
                .map(|r| SessionRow {
                    id: r.get(0),
                    label: r.get(1),
                    source_agent: r.get(2),
                    created_at: r.get(3),
                    runs: r.get::<_, i64>(4) as u64,
                    requests: r.get::<_, i64>(5) as u64,
                    cost_usd: r.get(6),
                    unknown_cost: r.get::<_, i64>(7) as u64,
                    last: r.get(8),
                })
                .collect())
        })
    }

    fn requests(&self, filter: RequestFilter<'_>) -> Result<Vec<RequestRow>, LedgerError> {
        let cols = request_select_list();
        let (sql, text, int): (String, Option<String>, Option<i64>) = match filter {
            RequestFilter::Id(n) => (
                format!("SELECT {cols} FROM requests WHERE id = $1 ORDER BY id"),
                None,
                Some(n),
            ),
            RequestFilter::Run(r) => (
                format!("SELECT {cols} FROM requests WHERE run_id = $1 ORDER BY id"),
                Some(r.to_string()),
                None,
            ),
            RequestFilter::Session(s) => (
                format!("SELECT {cols} FROM requests WHERE session_id = $1 ORDER BY id"),
                Some(s.to_string()),
                None,
            ),
            RequestFilter::Recent(n) => (
                format!("SELECT {cols} FROM requests ORDER BY id DESC LIMIT $1"),
                None,
                Some(n.min(i64::MAX as usize) as i64),
            ),
        };
        self.run(move |pool, place, _| async move {
            let c = pool.get().await.map_err(|e| pool_err(&place, e))?;
            match (&text, &int) {
                (Some(t), _) => query_requests(&c, &sql, &[t], &place).await,
                (_, Some(i)) => query_requests(&c, &sql, &[i], &place).await,
                _ => query_requests(&c, &sql, &[], &place).await,
            }
        })
    }

    fn runs(&self, filter: RunFilter<'_>) -> Result<Vec<RunRow>, LedgerError> {
        let (cond, arg) = match filter {
            RunFilter::Id(id) => ("id = $1", id.to_string()),
            RunFilter::Session(s) => ("session_id = $1", s.to_string()),
        };
        let sql = format!(
            "SELECT id, session_id, trace_id, created_at, targets, projected_usd, prompt
             FROM runs WHERE {cond} ORDER BY created_at"
        );
        self.run(move |pool, place, _| async move {
            let c = pool.get().await.map_err(|e| pool_err(&place, e))?;
            let rows = c
                .query(&sql, &[&arg])
                .await
                .map_err(|e| classify(&place, &e))?;
            rows.iter()
                .map(|r| run_row(r).map_err(|e| classify(&place, &e)))
                .collect()
        })
    }

    fn price_row(&self, id: &str) -> Result<Option<String>, LedgerError> {
        let id = id.to_string();
        self.run(move |pool, place, _| async move {
            let c = pool.get().await.map_err(|e| pool_err(&place, e))?;
            c.query_opt("SELECT row FROM prices WHERE id = $1", &[&id])
                .await
                .map(|r| r.map(|r| r.get(0)))
                .map_err(|e| classify(&place, &e))
        })
    }

    fn record_vote(
        &self,
        run_id: Option<&str>,
        targets: &str,
        winner: &str,
        tag: Option<&str>,
    ) -> Result<(), LedgerError> {
        let (run_id, targets, winner, tag) = (
            run_id.map(String::from),
            targets.to_string(),
            winner.to_string(),
            tag.map(String::from),
        );
        let uid = super::new_uid();
        self.run(move |pool, place, _| async move {
            let c = pool.get().await.map_err(|e| pool_err(&place, e))?;
            c.execute(
                "INSERT INTO votes (uid, run_id, targets, winner, tag) VALUES ($1, $2, $3, $4, $5)",
                &[&uid, &run_id, &targets, &winner, &tag],
            )
            .await
            .map(|_| ())
            .map_err(|e| classify(&place, &e))
        })
    }

    fn votes(&self) -> Result<Vec<VoteRow>, LedgerError> {
        self.run(|pool, place, _| async move {
            let c = pool.get().await.map_err(|e| pool_err(&place, e))?;
            let rows = c
                .query(
                    "SELECT run_id, targets, winner, tag, created_at FROM votes ORDER BY id",
                    &[],
                )
                .await
                .map_err(|e| classify(&place, &e))?;
            Ok(rows
                .iter()
                .map(|r| {
                    let targets: Option<String> = r.get(1);
                    let winner: String = r.get(2);
                    VoteRow {
                        run_id: r.get(0),
                        targets: targets
                            .and_then(|t| serde_json::from_str(&t).ok())
                            .unwrap_or_default(),
                        winner: (winner != "tie").then_some(winner),
                        tag: r.get(3),
                        created_at: r.get(4),
                    }
                })
                .collect())
        })
    }

    fn request_count(&self) -> Result<u64, LedgerError> {
        self.run(|pool, place, _| async move {
            let c = pool.get().await.map_err(|e| pool_err(&place, e))?;
            c.query_one("SELECT COUNT(*) FROM requests", &[])
                .await
                .map(|r| r.get::<_, i64>(0) as u64)
                .map_err(|e| classify(&place, &e))
        })
    }

    fn flush(&self) -> Result<(), LedgerError> {
        // Every row is committed (and fsynced by the server) when written.
        Ok(())
    }

    fn set_length_limit(&self, _bytes: i32) -> Result<(), LedgerError> {
        Err(LedgerError::Backend {
            place: self.place.clone(),
            detail: "PostgreSQL's row limit cannot be changed per connection".into(),
        })
    }

    fn begin_eval_run(
        &self,
        id: &str,
        suite: &str,
        suite_hash: &str,
        targets: &str,
        cases: i64,
    ) -> Result<(), LedgerError> {
        let (id, suite, hash, targets) = (
            id.to_string(),
            suite.to_string(),
            suite_hash.to_string(),
            targets.to_string(),
        );
        self.run(move |pool, place, _| async move {
            let c = pool.get().await.map_err(|e| pool_err(&place, e))?;
            c.execute(
                "INSERT INTO eval_runs (id, suite, suite_hash, targets, cases) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET status = 'running', finished_at = NULL",
                &[&id, &suite, &hash, &targets, &cases],
            )
            .await
            .map(|_| ())
            .map_err(|e| classify(&place, &e))
        })
    }

    fn record_eval_case(&self, eval_run_id: &str, row: &EvalCaseRow) -> Result<(), LedgerError> {
        let (run, row) = (eval_run_id.to_string(), row.clone());
        self.run(move |pool, place, _| async move {
            let c = pool.get().await.map_err(|e| pool_err(&place, e))?;
            c.execute(
                "INSERT INTO eval_cases (eval_run_id, case_key, case_index, passed, cost_usd, result)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (eval_run_id, case_key) DO UPDATE SET case_index = excluded.case_index,
                     passed = excluded.passed, cost_usd = excluded.cost_usd, result = excluded.result,
                     created_at = excluded.created_at",
                &[
                    &run,
                    &row.case_key,
                    &(row.case_index as i64),
                    &i64::from(row.passed),
                    &row.cost_usd,
                    &row.result,
                ],
            )
            .await
            .map(|_| ())
            .map_err(|e| classify(&place, &e))
        })
    }

    fn end_eval_run(&self, id: &str, status: &str) -> Result<(), LedgerError> {
        let (id, status) = (id.to_string(), status.to_string());
        self.run(move |pool, place, _| async move {
            let c = pool.get().await.map_err(|e| pool_err(&place, e))?;
            c.execute(
                &format!("UPDATE eval_runs SET status = $2, finished_at = {NOW_PG} WHERE id = $1"),
                &[&id, &status],
            )
            .await
            .map(|_| ())
            .map_err(|e| classify(&place, &e))
        })
    }

    fn eval_run(
        &self,
        id: Option<&str>,
        latest_for: Option<&str>,
    ) -> Result<Option<EvalRunRow>, LedgerError> {
        let (id, suite) = (id.map(String::from), latest_for.map(String::from));
        self.run(move |pool, place, _| async move {
            let c = pool.get().await.map_err(|e| pool_err(&place, e))?;
            let r = c
                .query_opt(
                    "SELECT id, suite, suite_hash, targets, cases, status, created_at, finished_at
                     FROM eval_runs WHERE ($1::text IS NULL OR id = $1) AND ($2::text IS NULL OR suite = $2)
                     ORDER BY created_at DESC, id DESC LIMIT 1",
                    &[&id, &suite],
                )
                .await
                .map_err(|e| classify(&place, &e))?;
            Ok(r.map(|r| {
                let targets: String = r.get(3);
                EvalRunRow {
                    id: r.get(0),
                    suite: r.get(1),
                    suite_hash: r.get(2),
                    targets: serde_json::from_str(&targets).unwrap_or_default(),
                    cases: r.get::<_, i64>(4).max(0) as u64,
                    status: r.get(5),
                    created_at: r.get(6),
                    finished_at: r.get(7),
                }
            }))
        })
    }

    fn eval_cases(&self, eval_run_id: &str) -> Result<Vec<EvalCaseRow>, LedgerError> {
        let run = eval_run_id.to_string();
        self.run(move |pool, place, _| async move {
            let c = pool.get().await.map_err(|e| pool_err(&place, e))?;
            let rows = c
                .query(
                    "SELECT case_key, case_index, passed, cost_usd, result FROM eval_cases
                     WHERE eval_run_id = $1 ORDER BY case_index",
                    &[&run],
                )
                .await
                .map_err(|e| classify(&place, &e))?;
            Ok(rows
                .iter()
                .map(|r| EvalCaseRow {
                    case_key: r.get(0),
                    case_index: r.get::<_, i64>(1).max(0) as u64,
                    passed: r.get::<_, i64>(2) != 0,
                    cost_usd: r.get(3),
                    result: r.get(4),
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::mask_url;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_url("postgres://quorum:s3cret@db:5432/ledger"),
            "postgres://quorum:***@db:5432/ledger"
        );
        assert_eq!(
            mask_url("postgres://db/ledger?user=q&password=s3cret&sslmode=disable"),
            "postgres://db/ledger?user=q&password=***&sslmode=disable"
        );
        assert_eq!(mask_url("postgres://q@db/l"), "postgres://q@db/l");
        assert_eq!(
            mask_url("postgres://db/l?sslpassword=k3y&password=s3cret&sslmode=disable"),
            "postgres://db/l?sslpassword=***&password=***&sslmode=disable"
        );
        assert!(!mask_url("postgresql://u:p@ss@h/d").contains("p@ss"));
        assert!(!mask_url("postgresql://u:p?ss#w@h/d?sslmode=require").contains("p?ss"));
        assert_eq!(
            mask_url("postgresql://u:p?ss@h/d?sslmode=require"),
            "postgresql://u:***@h/d?sslmode=require"
        );
    }
}
