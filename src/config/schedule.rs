//! `schedule`: a 5-field cron expression (minute hour day-of-month month day-of-week),
//! parsed once, where the config is read. The config's check reports a parse error with the
//! job's name; the scheduler takes the parsed expression and never reads the text again.

use std::fmt;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A job's `schedule`, as written and as parsed.
#[derive(Clone)]
pub struct CronExpression {
    text: String,
    /// The expression, or why it is not one (the seconds and year fields some tools add are
    /// refused).
    parsed: Result<Box<Cron>, String>,
}

impl CronExpression {
    pub fn parse(text: &str) -> Self {
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        let parsed = parser.parse(text).map(Box::new).map_err(|error| {
            format!(
                "cannot parse {text:?} as a 5-field cron expression (minute hour day-of-month \
                 month day-of-week, e.g. \"0 2 * * *\"): {error}"
            )
        });
        Self {
            text: text.to_string(),
            parsed,
        }
    }

    /// The parsed expression, or why the text is not one.
    pub fn cron(&self) -> Result<&Cron, &str> {
        self.parsed.as_deref().map_err(String::as_str)
    }

    /// The text, as written in the config.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for CronExpression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl fmt::Display for CronExpression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for CronExpression {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Serialize for CronExpression {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for CronExpression {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|text| Self::parse(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_and_six_field_expressions_are_refused_and_good_ones_kept_as_written() {
        assert!(CronExpression::parse("61 * * * *").cron().is_err());
        assert!(
            CronExpression::parse("0 0 2 * * *").cron().is_err(),
            "seconds field"
        );
        let refused = CronExpression::parse("every day");
        assert!(refused.cron().unwrap_err().contains("5-field"));
        let good = CronExpression::parse("30 2 * * *");
        assert!(good.cron().is_ok());
        assert_eq!(good.to_string(), "30 2 * * *");
    }
}
