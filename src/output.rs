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

/// Which of a program's output streams a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// What follows the program's name in its log lines.
    fn tag(self) -> &'static str {
        match self {
            Self::Stdout => "",
            Self::Stderr => " [stderr]",
        }
    }

    /// The level of a line that states none: standard error is for what went wrong.
    fn default_level(self) -> LineLevel {
        match self {
            Self::Stdout => LineLevel::Info,
            Self::Stderr => LineLevel::Warn,
        }
    }
}

/// Logs one line of `source`'s output (`http worker 0 (pid 4312)`, `cron job backup`) at
/// the level the line states, without its own timestamp (see [`program_line`]).
pub fn log_program_line(source: &str, stream: Stream, line: &str) {
    let (level, text) = program_line(line);
    let level = level.unwrap_or(stream.default_level());
    let tag = stream.tag();
    let stream = match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    macro_rules! at {
        ($level:expr) => {
            tracing::event!(
                $level,
                event = "program_output",
                source,
                stream,
                "{source}{tag}: {text}"
            )
        };
    }
    match level {
        LineLevel::Error => at!(tracing::Level::ERROR),
        LineLevel::Warn => at!(tracing::Level::WARN),
        LineLevel::Info => at!(tracing::Level::INFO),
        LineLevel::Debug => at!(tracing::Level::DEBUG),
    }
}

/// The level a program's line states, as logging libraries write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// How many words from the start of a line (after its timestamp) may name its level: Odoo
/// writes `<pid> ERROR <db> <logger>: ...`, Python's default `ERROR:root:...`.
const LEVEL_WORDS: usize = 4;

/// Reads a program's output line the way its log line will show it: the level the line
/// states (None if it states none), and the line without the program's own timestamp at
/// its start (the log line has one; two stacked timestamps only confuse).
pub fn program_line(line: &str) -> (Option<LineLevel>, &str) {
    let text = strip_timestamp(line);
    let level = text
        .split_whitespace()
        .take(LEVEL_WORDS)
        .find_map(|word| level_named(word.split(':').next().unwrap_or(word)));
    (level, text)
}

fn level_named(word: &str) -> Option<LineLevel> {
    let word = word.trim_matches(|c: char| matches!(c, '[' | ']' | '(' | ')' | ',' | '<' | '>'));
    Some(match word {
        "CRITICAL" | "FATAL" | "ERROR" => LineLevel::Error,
        "WARNING" | "WARN" => LineLevel::Warn,
        "INFO" => LineLevel::Info,
        "DEBUG" | "TRACE" => LineLevel::Debug,
        _ => return None,
    })
}

/// `line` without a leading date and time (`2026-11-28 12:00:00,123`, ISO 8601 with `T`,
/// fraction and zone, either in brackets), or all of it when it does not start with one.
fn strip_timestamp(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut at = usize::from(bytes.first() == Some(&b'['));
    let digits = |at: &mut usize, count: usize| -> bool {
        let end = *at + count;
        let ok = bytes
            .get(*at..end)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit));
        if ok {
            *at = end;
        }
        ok
    };
    let byte = |at: &mut usize, options: &[u8]| -> bool {
        let ok = bytes.get(*at).is_some_and(|b| options.contains(b));
        if ok {
            *at += 1;
        }
        ok
    };
    let date_time = digits(&mut at, 4)
        && byte(&mut at, b"-")
        && digits(&mut at, 2)
        && byte(&mut at, b"-")
        && digits(&mut at, 2)
        && byte(&mut at, b" T")
        && digits(&mut at, 2)
        && byte(&mut at, b":")
        && digits(&mut at, 2)
        && byte(&mut at, b":")
        && digits(&mut at, 2);
    if !date_time {
        return line;
    }
    if byte(&mut at, b".,") {
        while digits(&mut at, 1) {}
    }
    // A zone: `Z`, `+01:00`, `+0100`, or ` +0000` as gunicorn writes it.
    let before_zone = at;
    if !byte(&mut at, b"Z") {
        byte(&mut at, b" ");
        if byte(&mut at, b"+-") && digits(&mut at, 2) {
            byte(&mut at, b":");
            digits(&mut at, 2);
        } else {
            at = before_zone;
        }
    }
    byte(&mut at, b"]");
    match line.get(at..) {
        Some(rest) if rest.is_empty() || rest.starts_with([' ', '\t']) => rest.trim_start(),
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_keeps_the_level_it_states_without_its_own_timestamp() {
        let odoo = "2026-11-28 12:00:01,234 4312 ERROR prod odoo.http: Exception during request";
        assert_eq!(
            program_line(odoo),
            (
                Some(LineLevel::Error),
                "4312 ERROR prod odoo.http: Exception during request"
            )
        );
        assert_eq!(
            program_line("WARNING:root:disk almost full"),
            (Some(LineLevel::Warn), "WARNING:root:disk almost full")
        );
        assert_eq!(
            program_line("[2026-11-28 12:00:01 +0000] [4312] [INFO] Booting worker"),
            (Some(LineLevel::Info), "[4312] [INFO] Booting worker")
        );
        assert_eq!(
            program_line("2026-11-28T12:00:01.5Z DEBUG x"),
            (Some(LineLevel::Debug), "DEBUG x")
        );
        assert_eq!(
            program_line("2026-11-28T12:00:01+01:00 level: hello"),
            (None, "level: hello")
        );
        // Levels are words near the start, in capitals; the rest of a line is its own.
        assert_eq!(
            program_line("GET /ERROR 200 served after the ERROR page"),
            (None, "GET /ERROR 200 served after the ERROR page")
        );
        assert_eq!(program_line("error: lowercase"), (None, "error: lowercase"));
        assert_eq!(program_line("2026-11-28x"), (None, "2026-11-28x"));
        assert_eq!(program_line("2026-11-28 12:00:01"), (None, ""));
    }

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
