//! `quorum serve`'s shared state in-process: an empty config file in `dir`,
//! the offline mock as the default model, no ledger, and only the
//! environment given (the process's own is not read).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use llm_quorum::serve::{AppState, ServeOptions};

pub fn app_state(dir: &Path, env: &[(&str, &str)], opts: ServeOptions) -> Arc<AppState> {
    let cfg_path = dir.join("config.toml");
    std::fs::write(&cfg_path, "").unwrap();
    let mut vars: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vars.insert("QUORUM_CONFIG".into(), cfg_path.display().to_string());
    let env = move |k: &str| vars.get(k).cloned();
    let flags = llm_quorum::app::GlobalFlags::default();
    let cfg = llm_quorum::config::load(&flags.overrides(), &env).unwrap();
    let engine = llm_quorum::engine::Engine::new(cfg.engine_config(&env).unwrap()).unwrap();
    let settings = llm_quorum::app::Settings {
        default_model: Some("mock/alpha".into()),
        config: cfg,
        ledger: None,
        budget: Default::default(),
    };
    AppState::new(engine, settings, opts)
}
