//! Attachments: text files and images read from disk, checked before anything
//! is sent, and the image token estimates of each provider's published formula.
//!
//! Every error names the file, so a face can print it as it is.

use std::path::Path;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::error::EngineError;
use super::provider::ProviderKind;
use super::request::{Attachment, AttachmentData, ChatRequest};

/// Largest text file we attach (a prompt, not a corpus).
pub const MAX_TEXT_BYTES: u64 = 2 * 1024 * 1024;

/// Largest image we attach: Anthropic's per-image limit (5 MB) is the
/// strictest of the four providers'.
pub const MAX_IMAGE_BYTES: u64 = 5 * 1024 * 1024;

fn bad(path: &Path, why: impl std::fmt::Display) -> EngineError {
    EngineError::Config {
        message: format!("{}: {why}", path.display()),
    }
}

fn read(path: &Path, max: u64) -> Result<Vec<u8>, EngineError> {
    let meta = std::fs::metadata(path).map_err(|e| bad(path, io_reason(&e)))?;
    if meta.is_dir() {
        return Err(bad(path, "is a directory, not a file"));
    }
    if meta.len() > max {
        return Err(bad(
            path,
            format!(
                "is {} bytes; the limit for this kind of attachment is {max}",
                meta.len()
            ),
        ));
    }
    std::fs::read(path).map_err(|e| bad(path, io_reason(&e)))
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => format!("cannot be read ({e})"),
    }
}

fn display_name(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A text file, attached under its name. Refuses binary files and invalid UTF-8.
pub fn load_text(path: &Path) -> Result<Attachment, EngineError> {
    let bytes = read(path, MAX_TEXT_BYTES)?;
    if bytes.contains(&0) {
        return Err(bad(
            path,
            "looks binary (it holds NUL bytes); attach images with -i/--image",
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        bad(
            path,
            format!("is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
    })?;
    Ok(Attachment {
        name: display_name(path),
        size: text.len() as u64,
        sha256: sha256_hex(text.as_bytes()),
        data: AttachmentData::Text { text },
    })
}

/// The media type of image bytes, by their magic number: PNG, JPEG, WebP or GIF.
pub fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else {
        None
    }
}

/// An image, checked: its format is read from its bytes (not its name) and
/// must be PNG, JPEG, WebP or GIF; its dimensions must be readable.
pub fn load_image(path: &Path) -> Result<Attachment, EngineError> {
    let bytes = read(path, MAX_IMAGE_BYTES)?;
    image_from_bytes(&display_name(path), &bytes).map_err(|why| bad(path, why))
}

/// [`load_image`] from bytes already in memory (`name` is only a label).
pub fn image_from_bytes(name: &str, bytes: &[u8]) -> Result<Attachment, String> {
    let media_type = sniff_image(bytes)
        .ok_or("is not a PNG, JPEG, WebP or GIF image (unrecognised file header)")?;
    let size = imagesize::blob_size(bytes)
        .map_err(|e| format!("is a damaged {media_type} image: its size cannot be read ({e})"))?;
    if size.width == 0 || size.height == 0 {
        return Err(format!(
            "is a damaged {media_type} image ({}x{} pixels)",
            size.width, size.height
        ));
    }
    Ok(Attachment {
        name: name.to_string(),
        size: bytes.len() as u64,
        sha256: sha256_hex(bytes),
        data: AttachmentData::Image {
            media_type: media_type.to_string(),
            base64: base64::engine::general_purpose::STANDARD.encode(bytes),
            width: u32::try_from(size.width).unwrap_or(u32::MAX),
            height: u32::try_from(size.height).unwrap_or(u32::MAX),
        },
    })
}

/// An image given inline as a `data:` URL (`data:image/png;base64,...`), checked
/// like a file (format from its bytes, dimensions readable, at most
/// [`MAX_IMAGE_BYTES`]). `http(s)` URLs are refused: the engine does not fetch
/// images from the network (that would let a request make the server fetch any URL).
pub fn image_from_url(name: &str, url: &str) -> Result<Attachment, String> {
    let url = url.trim();
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https:/") {
        return Err(
            "image URLs are not fetched; send the image inline as a data: URL \
             (data:image/png;base64,...)"
                .into(),
        );
    }
    let Some(rest) = url.strip_prefix("data:") else {
        return Err("expected a data: URL (data:image/png;base64,...)".into());
    };
    let Some((meta, data)) = rest.split_once(',') else {
        return Err("a data: URL needs a comma before its data".into());
    };
    if !meta.to_ascii_lowercase().ends_with(";base64") {
        return Err("the data: URL must be base64 (data:image/png;base64,...)".into());
    }
    // The decoded size is about 3/4 of the text: refuse a huge one before decoding.
    if data.len() as u64 / 4 * 3 > MAX_IMAGE_BYTES + 3 {
        return Err(format!(
            "the image is over {MAX_IMAGE_BYTES} bytes, the limit for one image"
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("the data: URL is not valid base64 ({e})"))?;
    if bytes.len() as u64 > MAX_IMAGE_BYTES {
        return Err(format!(
            "the image is {} bytes; the limit for one image is {MAX_IMAGE_BYTES}",
            bytes.len()
        ));
    }
    image_from_bytes(name, &bytes).map_err(|why| format!("the image {why}"))
}

/// Where a content part went wrong: the part's path under its field (`[1].image_url.url`)
/// and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartError {
    /// Path of the bad part, relative to the content field.
    pub at: String,
    /// Why it is refused.
    pub message: String,
}

/// OpenAI-style content parts (`[{"type":"text","text":..}, {"type":"image_url",
/// "image_url":{"url":"data:..."}}]`) as a message's text (text parts joined) and
/// its images, in order. Images are only accepted where `images_ok` (user messages).
pub fn content_parts(
    parts: &[serde_json::Value],
    images_ok: bool,
) -> Result<(String, Vec<Attachment>), PartError> {
    use serde_json::Value;
    let mut text = String::new();
    let mut images = Vec::new();
    for (j, p) in parts.iter().enumerate() {
        let err = |at: String, message: String| PartError { at, message };
        let ty = p.get("type").and_then(Value::as_str).unwrap_or("");
        match ty {
            "text" => match p.get("text") {
                Some(Value::String(t)) => text.push_str(t),
                _ => return Err(err(format!("[{j}].text"), "expected a string".into())),
            },
            "image_url" if !images_ok => {
                return Err(err(
                    format!("[{j}].type"),
                    "images are accepted in user messages only".into(),
                ))
            }
            "image_url" => {
                // `{"url": ...}` as OpenAI documents it; a bare string as some clients send.
                let url = match p.get("image_url") {
                    Some(Value::Object(o)) => o.get("url").and_then(Value::as_str),
                    Some(Value::String(s)) => Some(s.as_str()),
                    _ => None,
                };
                let Some(url) = url else {
                    return Err(err(
                        format!("[{j}].image_url.url"),
                        "missing (a data: URL of the image)".into(),
                    ));
                };
                let name = format!("image-{}", images.len() + 1);
                let a = image_from_url(&name, url)
                    .map_err(|m| err(format!("[{j}].image_url.url"), m))?;
                images.push(a);
            }
            _ => {
                return Err(err(
                    format!("[{j}].type"),
                    format!(
                        "content parts of type {ty:?} are not supported (\"text\" or \"image_url\")"
                    ),
                ))
            }
        }
    }
    Ok((text, images))
}

/// Prompt tokens one image costs at `kind`/`model`, by the provider's
/// published formula. Always an estimate: providers resize server-side.
///
/// - OpenAI (`detail: auto/high`): fit in 2048x2048, then shortest side to
///   768; 170 tokens per 512-px tile plus 85 (gpt-4o-mini: 5667 and 2833).
/// - Anthropic: `width * height / 750`, after fitting the long edge in 1568 px,
///   at most ~1600 (larger images are scaled to about 1.15 megapixels).
/// - Gemini: 258 tokens when both sides are at most 384 px, else 258 per
///   768x768 tile.
/// - Ollama and others: 576 (a 336-px CLIP encoder's 24x24 patches), a guess.
pub fn image_tokens(kind: ProviderKind, model: &str, width: u32, height: u32) -> u64 {
    let (w, h) = (f64::from(width.max(1)), f64::from(height.max(1)));
    match kind {
        ProviderKind::Openai
        | ProviderKind::Openrouter
        | ProviderKind::Compatible
        | ProviderKind::Responses
        | ProviderKind::Azure => {
            let (base, per_tile) = if model.contains("4o-mini") {
                (2833, 5667)
            } else {
                (85, 170)
            };
            let s = (2048.0 / w.max(h)).min(1.0);
            let (w, h) = (w * s, h * s);
            let s = (768.0 / w.min(h)).min(1.0);
            let (w, h) = (w * s, h * s);
            let tiles = (w / 512.0).ceil() * (h / 512.0).ceil();
            base + per_tile * tiles as u64
        }
        ProviderKind::Anthropic => {
            // Larger images are scaled down to about 1.15 megapixels (~1600 tokens).
            let s = (1568.0 / w.max(h)).min(1.0);
            (((w * s) * (h * s) / 750.0).ceil() as u64).min(1600)
        }
        ProviderKind::Gemini => {
            if w <= 384.0 && h <= 384.0 {
                258
            } else {
                258 * ((w / 768.0).ceil() * (h / 768.0).ceil()) as u64
            }
        }
        ProviderKind::Ollama | ProviderKind::Mock | ProviderKind::Template => 576,
    }
}

/// Estimated prompt tokens of every image in `req` at `kind`/`model`.
pub fn request_image_tokens(kind: ProviderKind, model: &str, req: &ChatRequest) -> u64 {
    req.messages
        .iter()
        .flat_map(|m| m.images())
        .map(|a| match a.data {
            AttachmentData::Image { width, height, .. } => image_tokens(kind, model, width, height),
            AttachmentData::Text { .. } => 0,
        })
        .sum()
}

/// A valid 1x1 PNG, for tests across the crate.
#[cfg(test)]
pub(crate) fn tests_png() -> &'static [u8] {
    tests::PNG_1X1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1x1 PNG (a valid file: signature, IHDR, IDAT, IEND).
    pub const PNG_1X1: &[u8] = &[
        0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F,
        0x15, 0xC4, 0x89, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0xF8,
        0xCF, 0xC0, 0xF0, 0x1F, 0x00, 0x05, 0x00, 0x01, 0xFF, 0x89, 0x99, 0x3D, 0x1D, 0x00, 0x00,
        0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
    ];

    #[test]
    fn published_formulas() {
        // OpenAI's worked examples: 1024x1024 -> 765 tokens; 2048x4096 -> 1105.
        assert_eq!(
            image_tokens(ProviderKind::Openai, "gpt-4o", 1024, 1024),
            765
        );
        assert_eq!(
            image_tokens(ProviderKind::Openai, "gpt-4o", 2048, 4096),
            1105
        );
        assert_eq!(image_tokens(ProviderKind::Openai, "gpt-4o", 100, 100), 255);
        // Anthropic: 1000x1000 -> ~1334 tokens (their table: 1.15 MP ~ 1600).
        assert_eq!(image_tokens(ProviderKind::Anthropic, "c", 1000, 1000), 1334);
        assert_eq!(image_tokens(ProviderKind::Anthropic, "c", 3136, 3136), 1600);
        assert_eq!(image_tokens(ProviderKind::Anthropic, "c", 200, 200), 54);
        // Gemini: small images 258; 1024x1024 -> 4 tiles.
        assert_eq!(image_tokens(ProviderKind::Gemini, "g", 384, 200), 258);
        assert_eq!(image_tokens(ProviderKind::Gemini, "g", 1024, 1024), 1032);
        assert_eq!(image_tokens(ProviderKind::Ollama, "llava", 1, 1), 576);
    }

    #[test]
    fn formats_are_sniffed_from_bytes() {
        assert_eq!(sniff_image(PNG_1X1), Some("image/png"));
        assert_eq!(sniff_image(b"\xFF\xD8\xFF\xE0rest"), Some("image/jpeg"));
        assert_eq!(sniff_image(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff_image(b"GIF89a...."), Some("image/gif"));
        assert_eq!(sniff_image(b"%PDF-1.7"), None);
        let a = image_from_bytes("dot.png", PNG_1X1).unwrap();
        assert_eq!(a.size, PNG_1X1.len() as u64);
        match &a.data {
            AttachmentData::Image {
                media_type,
                width,
                height,
                base64,
            } => {
                assert_eq!((media_type.as_str(), *width, *height), ("image/png", 1, 1));
                assert!(base64.starts_with("iVBORw0KGgo"));
            }
            other => panic!("{other:?}"),
        }
        assert!(a
            .data_url()
            .unwrap()
            .starts_with("data:image/png;base64,iVBOR"));
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.png");
        let e = load_image(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.png") && e.contains("no such file"), "{e}");
        let fake = dir.path().join("fake.png");
        std::fs::write(&fake, b"not an image at all").unwrap();
        let e = load_image(&fake).unwrap_err().to_string();
        assert!(e.contains("fake.png") && e.contains("not a PNG"), "{e}");
        let cut = dir.path().join("cut.png");
        std::fs::write(&cut, &PNG_1X1[..12]).unwrap();
        let e = load_image(&cut).unwrap_err().to_string();
        assert!(e.contains("cut.png") && e.contains("damaged"), "{e}");
        let bin = dir.path().join("data.bin");
        std::fs::write(&bin, b"a\0b").unwrap();
        let e = load_text(&bin).unwrap_err().to_string();
        assert!(e.contains("data.bin") && e.contains("binary"), "{e}");
        let e = load_text(dir.path()).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
        let notes = dir.path().join("notes.md");
        std::fs::write(&notes, "# Notes\nhello\n").unwrap();
        let a = load_text(&notes).unwrap();
        assert_eq!(
            a.text_part().unwrap(),
            format!("File: {}\n```\n# Notes\nhello\n```", notes.display())
        );
        assert_eq!(a.sha256.len(), 64);
    }
}
