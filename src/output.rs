//! Turning a child's output stream into log lines.

/// Longest line logged as one; longer ones are split (a program without newlines must not
/// make us buffer without end).
const MAX_LINE: usize = 8 * 1024;

/// Collects bytes and hands back complete lines.
#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Adds `bytes`; returns the lines they complete, without their newline.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.partial.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(end) = self.partial.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            lines.push(text(&line[..line.len() - 1]));
        }
        while self.partial.len() >= MAX_LINE {
            let line: Vec<u8> = self.partial.drain(..MAX_LINE).collect();
            lines.push(text(&line));
        }
        lines
    }

    /// The unfinished last line, once the stream has ended.
    pub fn finish(&mut self) -> Option<String> {
        (!self.partial.is_empty()).then(|| text(&std::mem::take(&mut self.partial)))
    }
}

/// A line as it may be logged: without its CRLF's CR, and with every other control
/// character written as `\xNN` (as the log formatter writes ESC), so that a CR or a
/// backspace in a program's output cannot forge or hide part of a log line.
fn text(line: &[u8]) -> String {
    let line = String::from_utf8_lossy(line);
    let line = line.strip_suffix('\r').unwrap_or(&line);
    let mut escaped = String::with_capacity(line.len());
    for character in line.chars() {
        if character.is_ascii_control() && character != '\t' {
            escaped.push_str(&format!("\\x{:02x}", u32::from(character)));
        } else {
            escaped.push(character);
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_chunks_and_long_ones_cut() {
        let mut splitter = LineSplitter::default();
        assert_eq!(splitter.push(b"one\r\ntw"), ["one"]);
        assert_eq!(splitter.push(b"o\nthree"), ["two"]);
        assert_eq!(splitter.finish().as_deref(), Some("three"));
        assert_eq!(splitter.finish(), None);
        assert_eq!(
            splitter.push(b"ok\rERROR forged\x08\x1b[2J\ttab\r\n"),
            ["ok\\x0dERROR forged\\x08\\x1b[2J\ttab"]
        );
        let long = vec![b'x'; MAX_LINE + 10];
        let lines = splitter.push(&long);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE);
    }
}
