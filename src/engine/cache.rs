//! The response cache (opt-in): an answer already received for exactly the same
//! provider, model, parameters and messages is replayed at once, costs $0, and is marked
//! cached everywhere, without any HTTP request.
//!
//! The key is the SHA-256 of a canonical JSON (sorted keys) of the provider, the model
//! and the whole [`ChatRequest`]. Entries live in `cache.sqlite3` in the data dir, apart
//! from the ledger so they can be deleted freely, and expire after a TTL. The database is
//! opened on first use, never at startup.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::event::{Completion, FinishReason, StreamEvent, ToolCall, Usage};
use super::request::ChatRequest;

/// File name of the cache inside the data dir.
pub const CACHE_FILE: &str = "cache.sqlite3";

/// Cache settings (`[cache]` in config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Use the cache for runs that do not say otherwise.
    pub enabled: bool,
    /// How long an answer stays valid.
    pub ttl_secs: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            enabled: false,
            ttl_secs: 24 * 3600,
        }
    }
}

/// A stored answer: everything needed to replay it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    /// Provider.
    pub provider: String,
    /// Model.
    pub model: String,
    /// Text.
    pub text: String,
    /// Thinking.
    #[serde(default)]
    pub thinking: String,
    /// Refusal.
    #[serde(default)]
    pub refusal: Option<String>,
    /// Tool calls.
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
    /// Normalised finish.
    pub finish_reason: FinishReason,
    /// Provider's finish word.
    #[serde(default)]
    pub raw_finish_reason: String,
    /// Usage of the original request (what the answer took; nothing is billed now).
    pub usage: Usage,
    /// Whether the original reported usage.
    #[serde(default)]
    pub usage_reported: bool,
}

impl CachedAnswer {
    /// Keep a finished completion.
    pub fn from_completion(c: &Completion) -> CachedAnswer {
        CachedAnswer {
            provider: c.provider.clone(),
            model: c.model.clone(),
            text: c.text.clone(),
            thinking: c.thinking.clone(),
            refusal: c.refusal.clone(),
            tool_calls: c.tool_calls.clone(),
            finish_reason: c.finish_reason,
            raw_finish_reason: c.raw_finish_reason.clone(),
            usage: c.usage,
            usage_reported: c.usage_reported,
        }
    }

    /// The stream a face sees on a hit, without the final `Finished`: `Started`, then
    /// thinking, text, tool calls and usage, each in one piece.
    pub fn events(&self) -> Vec<StreamEvent> {
        let mut v = vec![StreamEvent::Started {
            provider: self.provider.clone(),
            model: self.model.clone(),
            attempt: 1,
        }];
        if !self.thinking.is_empty() {
            v.push(StreamEvent::ThinkingDelta(self.thinking.clone()));
        }
        if let Some(r) = &self.refusal {
            v.push(StreamEvent::TextDelta(r.clone()));
        }
        if !self.text.is_empty() {
            v.push(StreamEvent::TextDelta(self.text.clone()));
        }
        for (i, t) in self.tool_calls.iter().enumerate() {
            v.push(StreamEvent::ToolCallDelta {
                index: i,
                id: Some(t.id.clone()),
                name: Some(t.name.clone()),
                arguments: t.arguments.clone(),
            });
        }
        if self.usage_reported {
            v.push(StreamEvent::Usage(self.usage));
        }
        v
    }

    /// The completion of a hit: marked cached, $0 (the engine sets latency).
    pub fn to_completion(&self) -> Completion {
        Completion {
            provider: self.provider.clone(),
            model: self.model.clone(),
            text: self.text.clone(),
            thinking: self.thinking.clone(),
            refusal: self.refusal.clone(),
            tool_calls: self.tool_calls.clone(),
            finish_reason: self.finish_reason,
            raw_finish_reason: self.raw_finish_reason.clone(),
            usage: self.usage,
            usage_reported: self.usage_reported,
            cost_usd: Some(0.0),
            cost_source: super::event::CostSource::Cached,
            cached: true,
            ..Default::default()
        }
    }
}

/// Write JSON with object keys sorted at every level, so equal requests hash equally
/// whatever the map order.
fn write_canonical(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&m[k.as_str()], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The cache key of a request to `provider`/`model` (hex SHA-256).
pub fn key(provider: &str, model: &str, req: &ChatRequest) -> String {
    let v = serde_json::json!({
        "v": 1,
        "provider": provider,
        "model": model,
        "request": req,
    });
    let mut s = String::new();
    write_canonical(&v, &mut s);
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The on-disk response cache.
pub struct ResponseCache {
    settings: CacheSettings,
    path: PathBuf,
    conn: OnceLock<Result<Mutex<Connection>, String>>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("path", &self.path)
            .field("settings", &self.settings)
            .finish()
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl ResponseCache {
    /// A cache at `cache.sqlite3` in `data_dir`; nothing is opened yet.
    pub fn new(data_dir: &Path, settings: CacheSettings) -> ResponseCache {
        ResponseCache {
            settings,
            path: data_dir.join(CACHE_FILE),
            conn: OnceLock::new(),
        }
    }

    /// Settings.
    pub fn settings(&self) -> CacheSettings {
        self.settings
    }

    /// Whether a run asking `per_run` (None: the configured default) uses the cache.
    pub fn enabled_for(&self, per_run: Option<bool>) -> bool {
        per_run.unwrap_or(self.settings.enabled)
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, String> {
        let c = self.conn.get_or_init(|| {
            if let Some(dir) = self.path.parent() {
                super::files::create_private_dir(dir)?;
            }
            if !self.path.exists() {
                super::files::create_private_file(&self.path)?;
            }
            let c = Connection::open(&self.path).map_err(|e| format!("cache: {e}"))?;
            c.busy_timeout(Duration::from_secs(5))
                .map_err(|e| format!("cache: {e}"))?;
            let _ = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0));
            // A lost cache entry costs one request; no need to sync every write.
            let _ = c.pragma_update(None, "synchronous", "NORMAL");
            c.execute_batch(
                "CREATE TABLE IF NOT EXISTS responses (
                    key        TEXT PRIMARY KEY,
                    provider   TEXT NOT NULL,
                    model      TEXT NOT NULL,
                    answer     TEXT NOT NULL,
                    created_at INTEGER NOT NULL,
                    expires_at INTEGER NOT NULL,
                    hits       INTEGER NOT NULL DEFAULT 0
                 );
                 CREATE INDEX IF NOT EXISTS responses_expiry ON responses(expires_at);",
            )
            .map_err(|e| format!("cache: {e}"))?;
            Ok(Mutex::new(c))
        });
        match c {
            Ok(m) => m.lock().map_err(|_| "cache: lock poisoned".to_string()),
            Err(e) => Err(e.clone()),
        }
    }

    /// The live answer under `key`, if any (counts a hit).
    pub fn get(&self, key: &str) -> Result<Option<CachedAnswer>, String> {
        let conn = self.conn()?;
        let now = now_secs();
        let s: Option<String> = conn
            .query_row(
                "SELECT answer FROM responses WHERE key = ?1 AND expires_at > ?2",
                params![key, now],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| format!("cache: {e}"))?;
        let Some(s) = s else { return Ok(None) };
        let _ = conn.execute("UPDATE responses SET hits = hits + 1 WHERE key = ?1", [key]);
        Ok(serde_json::from_str(&s).ok())
    }

    /// Keep `answer` under `key` for the TTL (replacing an older one); drops expired rows.
    pub fn put(&self, key: &str, answer: &CachedAnswer) -> Result<(), String> {
        let body = serde_json::to_string(answer).map_err(|e| e.to_string())?;
        let conn = self.conn()?;
        let now = now_secs();
        let expires = now.saturating_add(self.settings.ttl_secs.min(i64::MAX as u64) as i64);
        conn.execute(
            "INSERT INTO responses (key, provider, model, answer, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(key) DO UPDATE SET answer = excluded.answer,
                 created_at = excluded.created_at, expires_at = excluded.expires_at",
            params![key, answer.provider, answer.model, body, now, expires],
        )
        .map_err(|e| format!("cache: {e}"))?;
        let _ = conn.execute("DELETE FROM responses WHERE expires_at <= ?1", [now]);
        Ok(())
    }

    /// Remove every entry; returns how many there were.
    pub fn clear(&self) -> Result<usize, String> {
        self.conn()?
            .execute("DELETE FROM responses", [])
            .map_err(|e| format!("cache: {e}"))
    }
}

/// Whether a finished completion may be kept: a clean answer, not itself a replay.
pub fn cacheable(c: &Completion) -> bool {
    c.error.is_none()
        && !c.cached
        && matches!(
            c.finish_reason,
            FinishReason::Stop | FinishReason::Length | FinishReason::ToolCalls
        )
        && (!c.text.is_empty() || !c.tool_calls.is_empty() || c.refusal.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::request::Message;

    #[test]
    fn key_depends_on_everything_that_shapes_the_answer() {
        let req = ChatRequest::from_prompt("hi");
        let k = key("openai", "gpt-4o-mini", &req);
        assert_eq!(k, key("openai", "gpt-4o-mini", &req.clone()));
        assert_ne!(k, key("openai", "gpt-4o", &req));
        assert_ne!(k, key("openrouter", "gpt-4o-mini", &req));
        let mut r2 = req.clone();
        r2.temperature = Some(0.5);
        assert_ne!(k, key("openai", "gpt-4o-mini", &r2));
        let mut r3 = req.clone();
        r3.messages.insert(0, Message::system("be brief"));
        assert_ne!(k, key("openai", "gpt-4o-mini", &r3));
        assert_eq!(k.len(), 64);
    }

    #[test]
    fn canonical_json_ignores_key_order() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":[1,{"q":1,"p":2}]}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a":{"x":[1,{"p":2,"q":1}],"y":2},"b":1}"#).unwrap();
        let (mut sa, mut sb) = (String::new(), String::new());
        write_canonical(&a, &mut sa);
        write_canonical(&b, &mut sb);
        assert_eq!(sa, sb);
        assert_eq!(sa, r#"{"a":{"x":[1,{"p":2,"q":1}],"y":2},"b":1}"#);
    }
}
