//! Bootstrap shared by every face: settings from config and environment,
//! and the engine built from them.

use crate::engine::registry::Registry;
use crate::engine::{Engine, EngineConfig};

/// Global flags every command accepts.
#[derive(Debug, Clone, Default)]
pub struct GlobalFlags {
    /// `--config PATH` (else `QUORUM_CONFIG`, else the platform config dir).
    pub config: Option<std::path::PathBuf>,
}

/// Settings the faces need beyond the engine.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Default model for `ask` (`QUORUM_DEFAULT_MODEL`).
    pub default_model: Option<String>,
}

/// Build the engine and settings from config and environment.
pub fn load(_flags: &GlobalFlags) -> anyhow::Result<(Engine, Settings)> {
    let env = |k: &str| std::env::var(k).ok();
    let registry = Registry::from_env(&env);
    let cfg = EngineConfig {
        registry,
        ..Default::default()
    };
    let settings = Settings {
        default_model: env("QUORUM_DEFAULT_MODEL").filter(|s| !s.is_empty()),
    };
    Ok((Engine::new(cfg)?, settings))
}
