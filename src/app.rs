//! Bootstrap shared by every face: the configuration (defaults ← file ←
//! environment ← flags) and the engine built from it.

use crate::config::{self, Config, Overrides};
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
}

/// Build the engine and settings from config and the process environment.
pub fn load(flags: &GlobalFlags) -> anyhow::Result<(Engine, Settings)> {
    load_with_env(flags, &|k| std::env::var(k).ok())
}

/// [`load`] with an injected environment (tests).
pub fn load_with_env(flags: &GlobalFlags, env: EnvFn<'_>) -> anyhow::Result<(Engine, Settings)> {
    let cfg = config::load(&flags.overrides(), env)?;
    let engine_cfg = cfg.engine_config(env)?;
    let settings = Settings {
        default_model: cfg.default_model.clone(),
        config: cfg,
    };
    Ok((Engine::new(engine_cfg)?, settings))
}
