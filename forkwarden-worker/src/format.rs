//! How durations and sizes read in log lines, and tables in the command-line tools.

use std::time::Duration;

/// An uptime or other elapsed time: `0.04s`, `12.3s`, `5m12s`, `2h3m`, `3d4h`.
pub fn elapsed(time: Duration) -> String {
    let seconds = time.as_secs();
    match seconds {
        0 => format!("{:.2}s", time.as_secs_f64()),
        1..60 => format!("{:.1}s", time.as_secs_f64()),
        60..3600 => format!("{}m{}s", seconds / 60, seconds % 60),
        3600..86400 => format!("{}h{}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{}h", seconds / 86400, seconds % 86400 / 3600),
    }
}

/// A measured time against a limit, to the hundredth: `120.07s`.
pub fn measured(time: Duration) -> String {
    format!("{:.2}s", time.as_secs_f64())
}

/// A configured time: `60s`, `0.5s`.
pub fn seconds(time: Duration) -> String {
    if time.subsec_millis() == 0 {
        format!("{}s", time.as_secs())
    } else {
        format!("{:.1}s", time.as_secs_f64())
    }
}

/// A memory size, rounded to the MiB: `612 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes.saturating_add(1 << 19) >> 20)
}

/// Rows as left-aligned columns, two spaces apart.
pub fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// `text` with every control character (but tab, and newline when `keep_newlines`) written
/// as `\xNN`: what the log does to every message, and the command-line tools to what they
/// print from the server, its programs and its jobs, so that no text a worker wrote can move
/// a terminal's cursor, retitle it, or forge a line.
pub fn escape_controls(text: &str, keep_newlines: bool) -> std::borrow::Cow<'_, str> {
    let kept = |character: char| {
        !character.is_control() || character == '\t' || (keep_newlines && character == '\n')
    };
    if text.chars().all(kept) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for character in text.chars() {
        if kept(character) {
            escaped.push(character);
        } else {
            escaped.push_str(&format!("\\x{:02x}", u32::from(character)));
        }
    }
    std::borrow::Cow::Owned(escaped)
}

/// [`escape_controls`] of `text` (no newline kept), owned.
pub fn escape_controls_owned(text: &str) -> String {
    escape_controls(text, false).into_owned()
}

/// `value` as one line of JSON for a terminal: the same JSON, with the control characters
/// JSON leaves as they are (DEL, and C1's, which terminals act on) written as `\u00XX`.
pub fn json_for_terminal(value: &impl serde::Serialize) -> serde_json::Result<String> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, TerminalJson);
    value.serialize(&mut serializer)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

struct TerminalJson;

impl serde_json::ser::Formatter for TerminalJson {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        for character in fragment.chars() {
            if character.is_control() {
                write!(writer, "\\u{:04x}", u32::from(character))?;
            } else {
                let mut buffer = [0u8; 4];
                writer.write_all(character.encode_utf8(&mut buffer).as_bytes())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes_read_naturally() {
        assert_eq!(elapsed(Duration::from_millis(40)), "0.04s");
        assert_eq!(elapsed(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(elapsed(Duration::from_secs(312)), "5m12s");
        assert_eq!(elapsed(Duration::from_secs(7380)), "2h3m");
        assert_eq!(elapsed(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d4h");
        assert_eq!(measured(Duration::from_millis(120_071)), "120.07s");
        assert_eq!(seconds(Duration::from_secs(60)), "60s");
        assert_eq!(seconds(Duration::from_millis(500)), "0.5s");
        assert_eq!(mib(612 << 20), "612 MiB");
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(
            escape_controls("GET /\x1b]0;owned\x07", false),
            "GET /\\x1b]0;owned\\x07"
        );
        assert_eq!(escape_controls("a\nb\tc", true), "a\nb\tc");
        assert_eq!(escape_controls("a\nb\u{9b}", false), "a\\x0ab\\x9b");
        let json =
            json_for_terminal(&serde_json::json!({"request": "\u{9b}2J\x1b[H\u{7f}é"})).unwrap();
        assert_eq!(json, r#"{"request":"\u009b2J\u001b[H\u007fé"}"#);
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["request"], "\u{9b}2J\x1b[H\u{7f}é");
    }
}
