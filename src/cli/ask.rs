//! `quorum ask`: one model, one answer, streamed to stdout (or one JSON object).

use std::io::{IsTerminal, Read, Write};

use clap::Args;

use super::{runtime, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::app::{self, GlobalFlags};
use crate::engine::{ChatRequest, Completion, Message, RunOptions, StartOptions, StreamEvent};

/// Arguments of `quorum ask`.
#[derive(Debug, Args)]
pub struct AskArgs {
    /// Target as provider/model (or an alias); default $QUORUM_DEFAULT_MODEL.
    #[arg(short, long, value_name = "PROVIDER/MODEL")]
    pub model: Option<String>,
    /// System prompt.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Output token limit.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    #[arg(long, value_name = "T")]
    pub temperature: Option<f32>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Ask for the whole response at once instead of a stream.
    #[arg(long)]
    pub no_stream: bool,
    /// Send even when the projected cost would cross a budget cap.
    #[arg(long)]
    pub force: bool,
    /// Bypass the response cache for this request.
    #[arg(long)]
    pub no_cache: bool,
    /// Reasoning, structured output, tools and attachments.
    #[command(flatten)]
    pub options: super::options::OptionFlags,
    /// The prompt (read from stdin when absent).
    pub prompt: Vec<String>,
}

/// Read the prompt from the arguments or stdin.
pub(crate) fn read_prompt(words: &[String]) -> Result<String, String> {
    if !words.is_empty() {
        return Ok(words.join(" "));
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err("no prompt: pass it as an argument or on stdin".into());
    }
    let mut s = String::new();
    stdin
        .lock()
        .read_to_string(&mut s)
        .map_err(|e| format!("could not read stdin: {e}"))?;
    if s.trim().is_empty() {
        return Err("the prompt on stdin is empty".into());
    }
    Ok(s)
}

/// Say on stderr when the ledger could not record a request (the answer stands);
/// whether it could not.
pub(crate) fn not_recorded(c: &Completion) -> bool {
    match &c.not_recorded {
        Some(why) => {
            eprintln!("quorum: this request was not recorded in the ledger: {why}");
            true
        }
        None => false,
    }
}

/// Run `quorum ask`.
pub fn run(flags: &GlobalFlags, args: AskArgs) -> i32 {
    let (engine, settings) = match app::load(flags) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("quorum: {e:#}");
            return EXIT_USAGE;
        }
    };
    let Some(model) = args.model.clone().or(settings.default_model.clone()) else {
        eprintln!("quorum: no model: pass -m PROVIDER/MODEL or set QUORUM_DEFAULT_MODEL");
        return EXIT_USAGE;
    };
    let prompt = match read_prompt(&args.prompt) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("quorum: {e}");
            return EXIT_USAGE;
        }
    };
    let mut req = ChatRequest::default();
    if let Some(s) = &args.system {
        req.messages.push(Message::system(s.clone()));
    }
    req.messages.push(Message::user(prompt));
    req.max_tokens = args.max_tokens;
    req.temperature = args.temperature;
    // Files are read and checked here, before anything is sent.
    if let Err(e) = args.options.to_options().apply(&mut req) {
        eprintln!("quorum: {e}");
        return EXIT_USAGE;
    }
    let opts = StartOptions {
        run: RunOptions {
            stream: !args.no_stream,
            cache: if args.no_cache { Some(false) } else { None },
            ..Default::default()
        },
        force: args.force,
        ..Default::default()
    };
    let rt = runtime();
    rt.block_on(async move {
        let mut handle = match engine.start(req, vec![model], opts).await {
            Ok(s) => {
                for w in &s.warnings {
                    eprintln!("quorum: warning: {w}");
                }
                s.handle
            }
            Err(e) => {
                eprintln!("quorum: {e}");
                return EXIT_USAGE;
            }
        };
        let cancel = handle.cancel_token();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                cancel.cancel();
            }
        });
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let mut code = EXIT_FAILED;
        let mut wrote_newline = true;
        while let Some(ev) = handle.recv().await {
            match ev.event {
                StreamEvent::TextDelta(t) if !args.json => {
                    let _ = out.write_all(t.as_bytes());
                    let _ = out.flush();
                    wrote_newline = t.ends_with('\n');
                }
                StreamEvent::Retrying {
                    attempt,
                    max_attempts,
                    wait,
                    reason,
                } if !args.json => {
                    eprintln!(
                        "quorum: retrying {attempt}/{max_attempts} in {:.1} s ({reason})",
                        wait.as_secs_f64()
                    );
                }
                StreamEvent::FellBack { from, to, reason } if !args.json => {
                    eprintln!("quorum: {from} failed ({reason}); fell back to {to}");
                }
                StreamEvent::Finished(c) | StreamEvent::Failed(c) => {
                    let failed = c.error.is_some();
                    if args.json {
                        let _ = serde_json::to_writer(&mut out, &*c);
                        let _ = out.write_all(b"\n");
                    } else {
                        if !c.tool_calls.is_empty() {
                            for t in &c.tool_calls {
                                let mark = super::options::tool_mark(t);
                                let _ = writeln!(
                                    out,
                                    "\n[tool call] {}({}){mark}",
                                    t.name, t.arguments
                                );
                            }
                        }
                        for line in super::options::verdict_lines(&c) {
                            eprintln!("quorum: {line}");
                        }
                        if !wrote_newline {
                            let _ = out.write_all(b"\n");
                        }
                    }
                    let _ = out.flush();
                    if let Some(e) = &c.error {
                        eprintln!("quorum: {}: {e}", handle.targets[0]);
                    }
                    code = if failed { EXIT_FAILED } else { EXIT_OK };
                    if not_recorded(&c) {
                        code = EXIT_FAILED;
                    }
                }
                _ => {}
            }
        }
        code
    })
}
