//! When a job falls due: a standard 5-field cron expression, or a fixed interval.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Local};
use croner::Cron;

/// A job's schedule.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// `schedule = "0 2 * * *"`, in the server's local time.
    Cron(Box<Cron>),
    /// `interval = "15m"`, counted from the start of the previous run.
    Every(Duration),
}

impl Schedule {
    /// The first due time strictly after `after`; None if the expression never matches again.
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        match self {
            Self::Every(interval) => Some(after + *interval),
            Self::Cron(cron) => {
                let local: DateTime<Local> = after.into();
                cron.find_next_occurrence(&local, false)
                    .ok()
                    .map(SystemTime::from)
            }
        }
    }

    /// When a job that has never run is first due: at once for an interval, at the next
    /// match for a cron expression.
    pub fn first_due(&self, now: SystemTime) -> Option<SystemTime> {
        match self {
            Self::Every(_) => Some(now),
            Self::Cron(_) => self.next_after(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike};

    #[test]
    fn cron_expressions_give_the_next_local_match() {
        let expression = crate::config::CronExpression::parse("30 2 * * *");
        let schedule = Schedule::Cron(Box::new(expression.cron().unwrap().clone()));
        let start = Local.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap();
        let next: DateTime<Local> = schedule.next_after(start.into()).unwrap().into();
        assert_eq!((next.day(), next.hour(), next.minute()), (11, 2, 30));
    }

    #[test]
    fn intervals_count_from_the_given_time() {
        let every = Schedule::Every(Duration::from_secs(90));
        let now = SystemTime::now();
        assert_eq!(every.next_after(now), Some(now + Duration::from_secs(90)));
        assert_eq!(every.first_due(now), Some(now));
    }
}
