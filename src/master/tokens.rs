//! The master's poll tokens, in one place: what each event source is.
//!
//! A token is a tag, in its low bits, naming the kind of source, and an index above it
//! naming which one of that kind (a conversation's key, an output pipe's number). Decoding
//! is one match on the tag, so the master's dispatch is one match on [`EventSource`]: no
//! kind's range can run into another's, and no order of guards matters.

use mio::Token;

/// Bits of a token that hold its tag.
const TAG_BITS: u32 = 3;
const TAG_MASK: usize = (1 << TAG_BITS) - 1;

/// What woke the master's poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EventSource {
    /// The signal pipe (SIGCHLD, SIGTERM, SIGHUP...).
    Signals,
    /// Programs' sd_notify socket.
    Notifications,
    /// The built-in workers' doorbell.
    Doorbell,
    /// The control socket `forkwarden status` connects to.
    ControlListener,
    /// A connection of the control socket: its key among them.
    ControlReader(usize),
    /// The metrics listener (`metrics_listen`).
    MetricsListener,
    /// A connection of the metrics listener: its key among them.
    MetricsConnection(usize),
    /// A program's output pipe: its number (see [`OutputTokens`]).
    Output(usize),
}

impl EventSource {
    /// The source's token. Indexes stay far below `usize::MAX >> TAG_BITS`: conversations'
    /// keys are bounded (`answers::MAX_OPEN`), and output pipes count two per program
    /// started, which a master would take millennia to exhaust.
    pub(super) fn token(self) -> Token {
        let (tag, index) = match self {
            Self::Signals => (0, 0),
            Self::Notifications => (1, 0),
            Self::Doorbell => (2, 0),
            Self::ControlListener => (3, 0),
            Self::ControlReader(key) => (4, key),
            Self::MetricsListener => (5, 0),
            Self::MetricsConnection(key) => (6, key),
            Self::Output(number) => (7, number),
        };
        Token(index << TAG_BITS | tag)
    }

    /// The source a token stands for.
    pub(super) fn of(token: Token) -> Self {
        let index = token.0 >> TAG_BITS;
        match token.0 & TAG_MASK {
            0 => Self::Signals,
            1 => Self::Notifications,
            2 => Self::Doorbell,
            3 => Self::ControlListener,
            4 => Self::ControlReader(index),
            5 => Self::MetricsListener,
            6 => Self::MetricsConnection(index),
            _ => Self::Output(index),
        }
    }
}

/// Hands out the tokens of programs' output pipes, two per program, never reused (a late
/// event of a dead program's pipe can never be taken for a new one's).
pub(super) struct OutputTokens(usize);

impl OutputTokens {
    pub(super) fn new() -> Self {
        Self(0)
    }

    /// The tokens for a new program's stdout and stderr.
    pub(super) fn pair(&mut self) -> [Token; 2] {
        let first = self.0;
        self.0 = first.wrapping_add(2);
        [
            EventSource::Output(first).token(),
            EventSource::Output(first.wrapping_add(1)).token(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_comes_back_from_its_token_and_none_share_one() {
        let sources = [
            EventSource::Signals,
            EventSource::Notifications,
            EventSource::Doorbell,
            EventSource::ControlListener,
            EventSource::ControlReader(0),
            EventSource::ControlReader(63),
            EventSource::MetricsListener,
            EventSource::MetricsConnection(0),
            EventSource::MetricsConnection(63),
            EventSource::Output(0),
            EventSource::Output(1),
            EventSource::Output(1 << 40),
        ];
        let mut tokens = std::collections::BTreeSet::new();
        for source in sources {
            assert_eq!(EventSource::of(source.token()), source);
            assert!(tokens.insert(source.token()), "{source:?} shares a token");
        }
        let mut outputs = OutputTokens::new();
        let [out, err] = outputs.pair();
        assert_eq!(EventSource::of(out), EventSource::Output(0));
        assert_eq!(EventSource::of(err), EventSource::Output(1));
        assert_eq!(EventSource::of(outputs.pair()[0]), EventSource::Output(2));
    }
}
