//! `quorum pricing show [MODEL]` and `quorum pricing update --from FILE|URL`.

use clap::{Args, Subcommand};

use super::{runtime, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::app::{self, GlobalFlags};
use crate::engine::cost::{today, Price, PriceRow, Pricing};
use crate::engine::files::data_dir;
use crate::engine::pricing_file;

/// Arguments of `quorum pricing`.
#[derive(Debug, Args)]
pub struct PricingArgs {
    #[command(subcommand)]
    command: PricingCommand,
}

#[derive(Debug, Subcommand)]
enum PricingCommand {
    /// Show the prices in force (config > user pricing file > built-in table).
    Show {
        /// One model as provider/model (or an alias): its row, tier and history.
        model: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Include rows shadowed by a higher layer.
        #[arg(long)]
        all: bool,
    },
    /// Import LiteLLM's model_prices_and_context_window.json into the user pricing file.
    Update {
        /// A file path or an http(s) URL.
        #[arg(long, value_name = "FILE|URL")]
        from: String,
        /// Show what would change without writing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// List every added row (default: the first 20).
        #[arg(long)]
        verbose: bool,
    },
}

/// Run `quorum pricing`.
pub fn run(flags: &GlobalFlags, args: PricingArgs) -> i32 {
    match args.command {
        PricingCommand::Show { model, json, all } => show(flags, model, json, all),
        PricingCommand::Update {
            from,
            dry_run,
            json,
            verbose,
        } => update(flags, &from, dry_run, json, verbose),
    }
}

fn rate(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    if s.is_empty() {
        "0".into()
    } else {
        s
    }
}

fn opt_rate(v: Option<f64>) -> String {
    v.map(rate).unwrap_or_else(|| "-".into())
}

fn price_line(p: &Price) -> String {
    let mut s = format!("in {} out {}", rate(p.input), rate(p.output));
    if let Some(c) = p.cached_input {
        s.push_str(&format!(" cached {}", rate(c)));
    }
    if let Some(w) = p.cache_write {
        s.push_str(&format!(" write {}", rate(w)));
    }
    if let Some(r) = p.reasoning {
        s.push_str(&format!(" reasoning {}", rate(r)));
    }
    s
}

fn pricing_for(flags: &GlobalFlags) -> Result<(Pricing, Option<crate::engine::Engine>), String> {
    match app::load(flags) {
        Ok((engine, _)) => Ok((engine.pricing().clone(), Some(engine))),
        Err(e) => Err(format!("{e:#}")),
    }
}

fn show(flags: &GlobalFlags, model: Option<String>, json: bool, all: bool) -> i32 {
    let (pricing, engine) = match pricing_for(flags) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("quorum: {e}");
            return EXIT_USAGE;
        }
    };
    for e in pricing.load_errors() {
        eprintln!("quorum: warning: {e}");
    }
    match model {
        Some(m) => {
            let (provider, name) = match engine.as_ref().and_then(|e| e.registry().resolve(&m).ok())
            {
                Some(r) => (r.spec.name.clone(), r.model.clone()),
                None => match m.split_once('/') {
                    Some((p, n)) => (p.to_string(), n.to_string()),
                    None => {
                        eprintln!("quorum: write the model as provider/model");
                        return EXIT_USAGE;
                    }
                },
            };
            let row = pricing.lookup(&provider, &name);
            let history = pricing.history(&provider, &name);
            if json {
                let v = serde_json::json!({
                    "target": format!("{provider}/{name}"),
                    "price": row,
                    "history": history,
                });
                println!("{v}");
                return if row.is_some() { EXIT_OK } else { EXIT_FAILED };
            }
            let Some(r) = row else {
                println!(
                    "{provider}/{name}: no price known (costs are shown as unknown, never $0)"
                );
                return EXIT_FAILED;
            };
            println!("{provider}/{name}");
            if r.model != name {
                println!("  priced as     {}/{}", r.provider, r.model);
            }
            println!("  row           {}  ({})", r.id, r.origin.as_str());
            println!("  USD per 1M    {}", price_line(&r.price));
            if let Some(t) = &r.long_context {
                println!(
                    "  above {} prompt tokens: {}",
                    t.threshold,
                    price_line(&t.price)
                );
            }
            let (cw, mo) = pricing.limits(&provider, &name);
            if let Some(cw) = cw {
                println!("  context       {cw} tokens");
            }
            if let Some(mo) = mo {
                println!("  max output    {mo} tokens");
            }
            if !r.capabilities.is_empty() {
                println!("  capabilities  {}", r.capabilities.join(", "));
            }
            println!("  source        {}", r.source);
            if !r.effective.is_empty() {
                println!("  effective     {}", r.effective);
            }
            if let Some(d) = &r.deprecated {
                let repl = r
                    .replacement
                    .as_ref()
                    .map(|x| format!(" (use {x})"))
                    .unwrap_or_default();
                println!("  deprecated    {d}{repl}");
            }
            if let Some(n) = &r.note {
                println!("  note          {n}");
            }
            if history.len() > 1 {
                println!("  history:");
                for h in history {
                    println!(
                        "    {:<10} {}  {}",
                        if h.effective.is_empty() {
                            "-"
                        } else {
                            &h.effective
                        },
                        price_line(&h.price),
                        h.id
                    );
                }
            }
            EXIT_OK
        }
        None => {
            let rows: Vec<(&PriceRow, bool)> = pricing
                .current_rows()
                .into_iter()
                .filter(|(_, shadowed)| all || !shadowed)
                .collect();
            if json {
                let v: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(r, s)| {
                        let mut v = serde_json::to_value(r).unwrap_or_default();
                        v["shadowed"] = serde_json::Value::Bool(*s);
                        v
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
                return EXIT_OK;
            }
            println!(
                "{:<44} {:>8} {:>8} {:>8} {:>8}  {:<8} {:<10} (USD per 1M tokens)",
                "provider/model", "input", "output", "cached", "write", "layer", "effective"
            );
            for (r, shadowed) in rows {
                let tier = if r.long_context.is_some() {
                    " +tier"
                } else {
                    ""
                };
                println!(
                    "{:<44} {:>8} {:>8} {:>8} {:>8}  {:<8} {:<10}{tier}{}",
                    r.target(),
                    rate(r.price.input),
                    rate(r.price.output),
                    opt_rate(r.price.cached_input),
                    opt_rate(r.price.cache_write),
                    r.origin.as_str(),
                    r.effective,
                    if shadowed { " (shadowed)" } else { "" }
                );
            }
            if let Some(f) = pricing.user_file() {
                println!("user pricing file: {}", f.display());
            }
            EXIT_OK
        }
    }
}

fn fetch(from: &str) -> Result<(Vec<u8>, String), String> {
    if from.starts_with("http://") || from.starts_with("https://") {
        let rt = runtime();
        let body = rt.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .map_err(|e| e.to_string())?;
            let resp = client
                .get(from)
                .send()
                .await
                .map_err(|e| format!("cannot fetch {from}: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("cannot fetch {from}: HTTP {}", resp.status()));
            }
            resp.bytes()
                .await
                .map(|b| b.to_vec())
                .map_err(|e| format!("cannot fetch {from}: {e}"))
        })?;
        Ok((body, from.to_string()))
    } else {
        let label = std::path::Path::new(from)
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| from.to_string());
        std::fs::read(from)
            .map(|b| (b, label))
            .map_err(|e| format!("cannot read {from}: {e}"))
    }
}

fn update(flags: &GlobalFlags, from: &str, dry_run: bool, json: bool, verbose: bool) -> i32 {
    let Some(dir) = data_dir() else {
        eprintln!("quorum: no data directory: set QUORUM_DATA_DIR");
        return EXIT_USAGE;
    };
    let path = dir.join(pricing_file::FILE_NAME);
    let (body, label) = match fetch(from) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("quorum: {e}");
            return EXIT_FAILED;
        }
    };
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("quorum: {from} is not JSON: {e}");
            return EXIT_FAILED;
        }
    };
    let incoming = pricing_file::litellm_rows(&value, &label);
    if incoming.is_empty() {
        eprintln!("quorum: {from} has no chat-model prices in LiteLLM's format");
        return EXIT_FAILED;
    }
    let existing = match pricing_file::load(&path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("quorum: {e}");
            return EXIT_FAILED;
        }
    };
    let before: std::collections::HashMap<String, PriceRow> =
        existing.iter().map(|r| (r.id.clone(), r.clone())).collect();
    let (rows, report) = pricing_file::merge(existing, incoming, &today());
    // What the import changes against the prices in force before it (the built-in
    // table included), to see where LiteLLM and our table disagree.
    let current = pricing_for(flags)
        .map(|p| p.0)
        .unwrap_or_else(|_| Pricing::builtin());
    let by_id: std::collections::HashMap<&str, &PriceRow> =
        rows.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut differs: Vec<String> = Vec::new();
    for id in &report.added {
        let Some(new) = by_id.get(id.as_str()) else {
            continue;
        };
        if let Some(old) = current.lookup(&new.provider, &new.model) {
            if old.provider == new.provider
                && old.model == new.model
                && !old.price.same_as(&new.price)
            {
                differs.push(format!(
                    "{}: {} -> {}  (was {})",
                    new.target(),
                    price_line(&old.price),
                    price_line(&new.price),
                    old.id
                ));
            }
        }
    }
    if !dry_run && !report.is_empty() {
        if let Err(e) = pricing_file::save(&path, &rows) {
            eprintln!("quorum: {e}");
            return EXIT_FAILED;
        }
    }
    if json {
        let v = serde_json::json!({
            "file": path,
            "written": !dry_run && !report.is_empty(),
            "added": report.added,
            "changed": report.changed.iter().map(|(o, n)| serde_json::json!({"from": o, "to": n})).collect::<Vec<_>>(),
            "unchanged": report.unchanged,
            "not_in_import": report.not_in_import,
            "overrides_builtin": differs,
        });
        println!("{v}");
        return EXIT_OK;
    }
    for (old, new) in &report.changed {
        let o = before.get(old);
        let n = by_id.get(new.as_str());
        if let (Some(o), Some(n)) = (o, n) {
            println!(
                "~ {}: {} -> {}  ({} replaces {})",
                n.target(),
                price_line(&o.price),
                price_line(&n.price),
                new,
                old
            );
        }
    }
    let limit = if verbose { usize::MAX } else { 20 };
    for id in report.added.iter().take(limit) {
        if let Some(n) = by_id.get(id.as_str()) {
            println!("+ {}: {}", n.target(), price_line(&n.price));
        }
    }
    if report.added.len() > limit {
        println!(
            "+ ... and {} more (--verbose lists all)",
            report.added.len() - limit
        );
    }
    if !differs.is_empty() {
        println!("prices that now differ from the ones in force before:");
        for d in differs.iter().take(limit) {
            println!("  {d}");
        }
        if differs.len() > limit {
            println!("  ... and {} more", differs.len() - limit);
        }
    }
    println!(
        "{} added, {} changed, {} unchanged, {} not in this import (kept)",
        report.added.len(),
        report.changed.len(),
        report.unchanged,
        report.not_in_import
    );
    if report.is_empty() {
        println!("nothing to write: {} is up to date", path.display());
    } else if dry_run {
        println!("dry run: {} not written", path.display());
    } else {
        println!("wrote {}", path.display());
    }
    EXIT_OK
}
