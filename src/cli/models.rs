//! `quorum models`: providers and their models, whether a key is present
//! (never the key), context window and price; aliases and tiers with what
//! they resolve to now. `--json` prints one object.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use clap::Args;

use super::{EXIT_OK, EXIT_USAGE};
use crate::app::{self, GlobalFlags};
use crate::engine::discovery::discover_all;
pub use crate::shared::catalog::{
    listing, merge_discovered, ListedPrice, Listing, ModelRow, NameRow, ProviderRow,
};

/// Arguments of `quorum models`.
#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also ask every provider with a key (and a local Ollama) which models it offers now.
    #[arg(long)]
    pub discover: bool,
}

fn tokens(n: Option<u64>) -> String {
    match n {
        None => "-".into(),
        Some(n) if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        Some(n) if n >= 1_000 => format!("{}k", (n as f64 / 1e3).round()),
        Some(n) => n.to_string(),
    }
}

fn price(p: &Option<ListedPrice>) -> String {
    match p {
        None => "?".into(),
        Some(p) => format!("${}/${}", p.input, p.output),
    }
}

/// The listing as a text table.
pub fn render_text(l: &Listing) -> String {
    let mut out = String::new();
    match (&l.config_file, &l.config_searched) {
        (Some(f), _) => out.push_str(&format!("config: {f}\n\n")),
        (None, Some(s)) => out.push_str(&format!("config: none ({s} not found)\n\n")),
        (None, None) => out.push_str("config: none\n\n"),
    }
    out.push_str(&format!(
        "{:<12} {:<11} {:<34} {}\n",
        "PROVIDER", "KIND", "KEY", "BASE URL"
    ));
    for p in &l.providers {
        let key = if !p.key_needed && p.key_source.is_none() {
            "not needed".to_string()
        } else if let Some(src) = &p.key_source {
            format!("set ({})", src.trim_start_matches("env:"))
        } else if p.key_present {
            "set".to_string()
        } else if let Some(k) = p.key_env.first() {
            format!("missing (set {k})")
        } else {
            "missing".to_string()
        };
        out.push_str(&format!(
            "{:<12} {:<11} {:<34} {}\n",
            p.name, p.kind, key, p.base_url
        ));
    }
    out.push_str(&format!(
        "\n{:<44} {:<5} {:>8} {:>14}  {}\n",
        "MODEL", "KEY", "CONTEXT", "PRICE $/Mtok", "NOTE"
    ));
    for m in &l.models {
        let mut note = Vec::new();
        if m.provider == "mock" {
            note.push("mock (offline)".to_string());
        }
        if !m.allowed {
            note.push("not allowed".to_string());
        }
        if let Some(mt) = m.max_tokens {
            note.push(format!("max_tokens {mt}"));
        }
        let caps = m.capabilities;
        for (on, name) in [
            (caps.tools, "tools"),
            (caps.thinking, "thinking"),
            (caps.vision, "vision"),
            (caps.json, "json"),
        ] {
            match on {
                Some(true) => note.push(name.to_string()),
                Some(false) => note.push(format!("no {name}")),
                None => {}
            }
        }
        out.push_str(&format!(
            "{:<44} {:<5} {:>8} {:>14}  {}\n",
            m.id,
            if m.key_present { "yes" } else { "no" },
            tokens(m.context_window),
            price(&m.price),
            note.join(", ")
        ));
    }
    let names = |title: &str, rows: &BTreeMap<String, NameRow>, out: &mut String| {
        if rows.is_empty() {
            return;
        }
        out.push_str(&format!("\n{title}\n"));
        for (n, r) in rows {
            let now = match (&r.resolves_to, &r.error) {
                (Some(id), _) => format!("→ {id}"),
                (None, Some(e)) => format!("✗ {e}"),
                (None, None) => String::new(),
            };
            out.push_str(&format!("  {n:<12} {}  {now}\n", r.targets.join(", ")));
        }
    };
    names("ALIASES", &l.aliases, &mut out);
    names("TIERS", &l.tiers, &mut out);
    if !l.allowed_models.is_empty() {
        out.push_str(&format!(
            "\nallowed_models: {}\n",
            l.allowed_models.join(", ")
        ));
    }
    for (p, e) in &l.discovery_errors {
        out.push_str(&format!("\n{p}: could not list its models: {e}\n"));
    }
    out
}

/// Run `quorum models`.
pub fn run(flags: &GlobalFlags, args: ModelsArgs) -> i32 {
    let (engine, settings) = match app::load(flags) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("quorum: {e:#}");
            return EXIT_USAGE;
        }
    };
    let mut l = listing(&engine, &settings.config, &|k| std::env::var(k).ok());
    if args.discover {
        let specs = crate::engine::discovery::discoverable(engine.registry());
        let found = super::runtime().block_on(discover_all(specs, Duration::from_secs(5)));
        merge_discovered(&mut l, &engine, found);
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let res = if args.json {
        serde_json::to_writer_pretty(&mut out, &l)
            .map_err(std::io::Error::other)
            .and_then(|_| out.write_all(b"\n"))
    } else {
        out.write_all(render_text(&l).as_bytes())
    };
    match res {
        Ok(()) => EXIT_OK,
        // A closed pipe (`| head`) is not an error worth a message.
        Err(_) => EXIT_OK,
    }
}
