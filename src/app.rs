//! Bootstrap shared by every face: the configuration (defaults ← file ←
//! environment ← flags) and the engine built from it.

use std::sync::Arc;

use crate::config::{self, Config, Overrides};
use crate::engine::budget::Budget;
use crate::engine::cache::{CacheSettings, ResponseCache};
use crate::engine::cost::{Price, Pricing};
use crate::engine::front::{Books, LedgerProblem};
use crate::engine::ledger::{
    BackgroundLedger, LedgerOptions, Location, LEDGER_FILE, LEDGER_SPOOL_FILE,
};
use crate::engine::pricing_file;
use crate::engine::registry::EnvFn;
use crate::engine::Engine;

/// Global flags every command accepts: the top layer of the configuration.
#[derive(Debug, Clone, Default)]
pub struct GlobalFlags {
    /// `--config PATH` (else `QUORUM_CONFIG`, else the platform config dir).
    pub config: Option<std::path::PathBuf>,
    /// `--timeout SECS`: total timeout of every request (over `QUORUM_TIMEOUT_SECS`).
    pub timeout_secs: Option<f64>,
    /// `--max-retries N`: retries after the first attempt (over `QUORUM_MAX_RETRIES`).
    pub max_retries: Option<u32>,
    /// `--no-ledger` (or `QUORUM_NO_LEDGER=1`): keep no ledger; a budget is then a
    /// configuration error.
    pub no_ledger: bool,
}

impl GlobalFlags {
    /// The flags as a config layer.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config: self.config.clone(),
            timeout_secs: self.timeout_secs,
            max_retries: self.max_retries,
            ..Default::default()
        }
    }
}

/// Settings the faces need beyond the engine.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Default model for `ask` (`QUORUM_DEFAULT_MODEL` over the file's `default_model`).
    pub default_model: Option<String>,
    /// The whole configuration (theme, keys, compare targets, budget, cache, pricing, ...).
    pub config: Config,
    /// The ledger, opening on its own thread (None without a data dir).
    pub ledger: Option<BackgroundLedger>,
    /// Spending caps from `[budget]`.
    pub budget: Budget,
}

/// Build the engine and settings from config and the process environment.
pub fn load(flags: &GlobalFlags) -> anyhow::Result<(Engine, Settings)> {
    load_with_env(flags, &|k| std::env::var(k).ok())
}

/// [`load`] with an injected environment (tests).
///
/// Nothing slow happens here: prices parse on first lookup, the ledger opens
/// on its own thread, and no tokenizer is loaded.
pub fn load_with_env(flags: &GlobalFlags, env: EnvFn<'_>) -> anyhow::Result<(Engine, Settings)> {
    let cfg = config::load(&flags.overrides(), env)?;
    for w in &cfg.warnings {
        eprintln!("quorum: warning: {w}");
    }
    let mut engine_cfg = cfg.engine_config(env)?;
    let no_ledger = flags.no_ledger
        || env("QUORUM_NO_LEDGER").is_some_and(|v| !matches!(v.trim(), "" | "0" | "false"));
    let budget = Budget {
        session_usd: cfg.budget.session_usd,
        daily_usd: cfg.budget.daily_usd,
    };
    if no_ledger && budget.is_set() {
        anyhow::bail!(
            "a budget is set ([budget] in the config) but the ledger is off (--no-ledger): \
             spending cannot be tracked without it; remove one or the other"
        );
    }
    // Through `env`, like the config: a caller with its own environment (tests,
    // embedders) must never open the user's real ledger.
    let data_dir = crate::engine::files::data_dir_in(env);
    let overrides: Vec<(String, Price)> = cfg
        .pricing
        .iter()
        .map(|(target, p)| {
            (
                target.clone(),
                Price {
                    input: p.input,
                    output: p.output,
                    cached_input: p.cached_input,
                    cache_write: p.cache_write,
                    reasoning: p.reasoning,
                },
            )
        })
        .collect();
    engine_cfg.pricing = Pricing::load(
        overrides,
        data_dir.as_ref().map(|d| d.join(pricing_file::FILE_NAME)),
    );
    let pricing = engine_cfg.pricing.clone();
    let mut engine = Engine::new(engine_cfg)?;
    let mut ledger = None;
    let mut books = if no_ledger {
        Books::Off
    } else {
        Books::Unusable(LedgerProblem {
            place: None,
            reason: "no data directory".into(),
            fix: "set QUORUM_DATA_DIR to a writable folder, or run with --no-ledger".into(),
        })
    };
    let opts = LedgerOptions {
        log_content: cfg.log_content,
    };
    if let Some(url) = cfg.ledger_url.as_ref().filter(|_| !no_ledger) {
        let u = url.expose();
        if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
            anyhow::bail!(
                "[ledger] url (or QUORUM_LEDGER_URL) must be a postgres:// URL, not {url}"
            );
        }
        // Without a budget, rows the database cannot take while it is away wait in
        // a local spool; with one, an unreachable database refuses (fail closed).
        let spool = data_dir
            .as_ref()
            .filter(|_| !budget.is_set())
            .map(|d| d.join(LEDGER_SPOOL_FILE));
        let bg = BackgroundLedger::spawn_at(
            Location::Url(u.to_string()),
            opts,
            Some(pricing.clone()),
            spool,
        );
        engine = engine.with_ledger(Arc::new(bg.clone()));
        books = Books::On { ledger: bg.clone() };
        ledger = Some(bg);
    }
    if let Some(d) = data_dir.as_ref().filter(|_| !no_ledger) {
        if ledger.is_none() {
            let bg = BackgroundLedger::spawn(d.join(LEDGER_FILE), opts, Some(pricing));
            engine = engine.with_ledger(Arc::new(bg.clone()));
            books = Books::On { ledger: bg.clone() };
            ledger = Some(bg);
        }
        let cache = CacheSettings {
            enabled: cfg.cache.enabled,
            ttl_secs: cfg.cache.ttl_secs,
        };
        engine = engine.with_cache(Arc::new(ResponseCache::new(d, cache)));
    }
    let engine = engine.with_books(books, budget);
    let settings = Settings {
        default_model: cfg.default_model.clone(),
        budget,
        ledger,
        config: cfg,
    };
    Ok((engine, settings))
}
