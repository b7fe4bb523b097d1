//! Themes: `themes/*.toml` shipped in the binary, user themes from the config
//! dir. A theme names only the styles it changes; everything else keeps the
//! built-in default. A broken theme falls back with a warning; `NO_COLOR`
//! drops every colour and keeps bold, reverse and the like.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use ratatui::style::{Color, Modifier, Style};
use serde::Deserialize;

/// The shipped themes, by name.
pub const SHIPPED: &[(&str, &str)] = &[
    ("dark", include_str!("../../themes/dark.toml")),
    ("light", include_str!("../../themes/light.toml")),
    (
        "high-contrast",
        include_str!("../../themes/high-contrast.toml"),
    ),
];

/// Every style the TUI draws with.
#[derive(Debug, Clone, PartialEq)]
pub struct Theme {
    /// Name it was loaded as.
    pub name: String,
    /// Screen background and default text.
    pub base: Style,
    /// Answer text.
    pub text: Style,
    /// Prompt text in transcripts.
    pub user: Style,
    /// Thinking.
    pub thinking: Style,
    /// Tool calls.
    pub tool: Style,
    /// Errors.
    pub error: Style,
    /// Notes from quorum.
    pub notice: Style,
    /// Markdown headings.
    pub heading: Style,
    /// Code.
    pub code: Style,
    /// Secondary text: stats, gutters, rules.
    pub dim: Style,
    /// Links.
    pub link: Style,
    /// Borders.
    pub border: Style,
    /// Border of the focused panel.
    pub border_focused: Style,
    /// Panel titles.
    pub title: Style,
    /// Finished, priced.
    pub ok: Style,
    /// Retrying, estimated, warnings.
    pub warn: Style,
    /// Streaming.
    pub active: Style,
    /// Status bar.
    pub status: Style,
    /// Key names in the status bar and help.
    pub key: Style,
    /// The banner line.
    pub banner: Style,
    /// Selected rows (picker, history).
    pub selection: Style,
}

impl Default for Theme {
    fn default() -> Self {
        Theme::builtin()
    }
}

fn fg(c: Color) -> Style {
    Style::new().fg(c)
}

impl Theme {
    /// The built-in defaults (what `themes/dark.toml` spells out).
    pub fn builtin() -> Theme {
        Theme {
            name: "dark".into(),
            base: Style::new(),
            text: Style::new(),
            user: fg(Color::Cyan).add_modifier(Modifier::BOLD),
            thinking: fg(Color::DarkGray).add_modifier(Modifier::ITALIC),
            tool: fg(Color::Magenta),
            error: fg(Color::Red),
            notice: fg(Color::Blue).add_modifier(Modifier::ITALIC),
            heading: fg(Color::Yellow).add_modifier(Modifier::BOLD),
            code: fg(Color::Green),
            dim: fg(Color::DarkGray),
            link: fg(Color::Blue).add_modifier(Modifier::UNDERLINED),
            border: fg(Color::DarkGray),
            border_focused: fg(Color::Cyan).add_modifier(Modifier::BOLD),
            title: Style::new().add_modifier(Modifier::BOLD),
            ok: fg(Color::Green),
            warn: fg(Color::Yellow),
            active: fg(Color::Cyan),
            status: fg(Color::Gray),
            key: fg(Color::Cyan).add_modifier(Modifier::BOLD),
            banner: fg(Color::Black).bg(Color::Yellow),
            selection: Style::new().add_modifier(Modifier::REVERSED),
        }
    }

    fn slot(&mut self, key: &str) -> Option<&mut Style> {
        Some(match key {
            "base" => &mut self.base,
            "text" => &mut self.text,
            "user" => &mut self.user,
            "thinking" => &mut self.thinking,
            "tool" => &mut self.tool,
            "error" => &mut self.error,
            "notice" => &mut self.notice,
            "heading" => &mut self.heading,
            "code" => &mut self.code,
            "dim" => &mut self.dim,
            "link" => &mut self.link,
            "border" => &mut self.border,
            "border_focused" => &mut self.border_focused,
            "title" => &mut self.title,
            "ok" => &mut self.ok,
            "warn" => &mut self.warn,
            "active" => &mut self.active,
            "status" => &mut self.status,
            "key" => &mut self.key,
            "banner" => &mut self.banner,
            "selection" => &mut self.selection,
            _ => return None,
        })
    }

    /// Apply a theme file's text over this theme.
    pub fn apply_toml(&mut self, text: &str) -> Result<(), String> {
        let file: ThemeFile = toml::from_str(text).map_err(|e| e.to_string())?;
        for (key, spec) in file.styles {
            let style = spec.to_style().map_err(|e| format!("{key}: {e}"))?;
            match self.slot(&key) {
                Some(s) => *s = style,
                None => return Err(format!("unknown style `{key}`")),
            }
        }
        Ok(())
    }

    /// Drop every colour (NO_COLOR), keeping modifiers.
    pub fn without_colors(mut self) -> Theme {
        for key in STYLE_KEYS {
            if let Some(s) = self.slot(key) {
                let mut n = Style::new();
                n.add_modifier = s.add_modifier;
                n.sub_modifier = s.sub_modifier;
                *s = n;
            }
        }
        // Without colours the banner and the focus still need to stand out.
        self.banner = self.banner.add_modifier(Modifier::REVERSED);
        self.border_focused = self.border_focused.add_modifier(Modifier::BOLD);
        self
    }
}

const STYLE_KEYS: &[&str] = &[
    "base",
    "text",
    "user",
    "thinking",
    "tool",
    "error",
    "notice",
    "heading",
    "code",
    "dim",
    "link",
    "border",
    "border_focused",
    "title",
    "ok",
    "warn",
    "active",
    "status",
    "key",
    "banner",
    "selection",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThemeFile {
    /// Free text; informative only.
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    styles: BTreeMap<String, StyleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StyleSpec {
    Fg(String),
    Full(FullSpec),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FullSpec {
    fg: Option<String>,
    bg: Option<String>,
    #[serde(default)]
    bold: bool,
    #[serde(default)]
    italic: bool,
    #[serde(default)]
    underline: bool,
    #[serde(default)]
    dim: bool,
    #[serde(default)]
    reversed: bool,
}

fn color(s: &str) -> Result<Color, String> {
    Color::from_str(s.trim()).map_err(|_| format!("not a colour: `{s}`"))
}

impl StyleSpec {
    fn to_style(&self) -> Result<Style, String> {
        match self {
            StyleSpec::Fg(c) => Ok(Style::new().fg(color(c)?)),
            StyleSpec::Full(f) => {
                let mut s = Style::new();
                if let Some(c) = &f.fg {
                    s = s.fg(color(c)?);
                }
                if let Some(c) = &f.bg {
                    s = s.bg(color(c)?);
                }
                for (on, m) in [
                    (f.bold, Modifier::BOLD),
                    (f.italic, Modifier::ITALIC),
                    (f.underline, Modifier::UNDERLINED),
                    (f.dim, Modifier::DIM),
                    (f.reversed, Modifier::REVERSED),
                ] {
                    if on {
                        s = s.add_modifier(m);
                    }
                }
                Ok(s)
            }
        }
    }
}

/// The shipped theme called `name` (`default` is `dark`).
pub fn shipped(name: &str) -> Option<&'static str> {
    let name = match name {
        "default" => "dark",
        "high_contrast" | "contrast" => "high-contrast",
        n => n,
    };
    SHIPPED.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Load theme `name`: a user file `<config_dir>/themes/<name>.toml` first, then
/// the shipped ones. Returns the theme and warnings for the banner and log.
pub fn load(name: &str, config_dir: Option<&Path>, no_color: bool) -> (Theme, Vec<String>) {
    let mut warnings = Vec::new();
    let mut theme = Theme::builtin();
    let user = config_dir
        .map(|d| d.join("themes").join(format!("{name}.toml")))
        .filter(|p| p.is_file());
    let text = match &user {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Some(t),
            Err(e) => {
                warnings.push(format!("theme {}: {e}; using the default", p.display()));
                None
            }
        },
        None => match shipped(name) {
            Some(t) => Some(t.to_string()),
            None => {
                warnings.push(format!(
                    "no theme called `{name}` (shipped: dark, light, high-contrast); using the default"
                ));
                None
            }
        },
    };
    if let Some(t) = text {
        let mut candidate = Theme::builtin();
        match candidate.apply_toml(&t) {
            Ok(()) => {
                candidate.name = name.to_string();
                theme = candidate;
            }
            Err(e) => {
                let at = user
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| name.to_string());
                warnings.push(format!("theme {at} is broken ({e}); using the default"));
            }
        }
    }
    if no_color {
        theme = theme.without_colors();
    }
    (theme, warnings)
}

/// Whether `NO_COLOR` asks for no colour (set and non-empty).
pub fn no_color_env() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_themes_parse() {
        for (name, text) in SHIPPED {
            let mut t = Theme::builtin();
            t.apply_toml(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_eq!(Theme::builtin(), {
            let mut t = Theme::builtin();
            t.apply_toml(shipped("default").unwrap()).unwrap();
            t
        });
    }

    #[test]
    fn overrides_only_what_it_names() {
        let mut t = Theme::builtin();
        t.apply_toml("[styles]\nerror = \"#ff00ff\"\n").unwrap();
        assert_eq!(t.error, Style::new().fg(Color::Rgb(255, 0, 255)));
        assert_eq!(t.ok, Theme::builtin().ok);
    }

    #[test]
    fn broken_theme_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("themes")).unwrap();
        std::fs::write(dir.path().join("themes/bad.toml"), "[styles]\nnope = 1\n").unwrap();
        let (t, w) = load("bad", Some(dir.path()), false);
        assert_eq!(t, Theme::builtin());
        assert!(w[0].contains("broken"), "{w:?}");
        let (_, w) = load("missing", None, false);
        assert!(w[0].contains("no theme"));
    }

    #[test]
    fn no_color_strips_colours() {
        let (t, _) = load("light", None, true);
        assert_eq!(t.error.fg, None);
        assert!(t.user.add_modifier.contains(Modifier::BOLD));
    }
}
