//! Prometheus's text formats, written directly: the classic one (0.0.4, which Prometheus
//! reads by default) and OpenMetrics 1.0 (for a scraper that asks for it). They differ in
//! little for what the master exposes: a counter family is named with its `_total` in the
//! classic format and without it in OpenMetrics (its samples have it in both), and
//! OpenMetrics ends with `# EOF`.

use std::fmt::{Display, Write};

/// Which text format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Classic,
    OpenMetrics,
}

/// A sample's labels: names (ours) and values (escaped when written).
pub type Labels = Vec<(&'static str, String)>;

/// Metric families written one after the other into one text.
pub struct Exposition {
    format: Format,
    text: String,
}

/// One histogram of a family: its labels, (upper bound, observations in that bucket alone),
/// the sum of the observations and their count.
pub struct Histogram {
    pub labels: Labels,
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// Seconds, from a row's histogram over `DURATION_BOUNDS`.
    pub fn of_durations(labels: Labels, durations: &crate::scoreboard::Durations) -> Self {
        // Sums of many workers' counts may have saturated unevenly.
        let durations = durations.clone().consistent();
        Self {
            labels,
            buckets: crate::scoreboard::DURATION_BOUNDS
                .iter()
                .zip(durations.buckets)
                .map(|(bound, count)| (bound.as_secs_f64(), count))
                .collect(),
            sum: durations.sum_us as f64 / 1e6,
            count: durations.count,
        }
    }
}

impl Exposition {
    pub fn new(format: Format) -> Self {
        Self {
            format,
            text: String::new(),
        }
    }

    /// A counter family: one sample per label set, named `{name}_total`.
    pub fn counter<V: Display>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, V)>,
    ) {
        let total = format!("{name}_total");
        let family = match self.format {
            Format::Classic => total.as_str(),
            Format::OpenMetrics => name,
        };
        self.describe(family, help, "counter");
        for (labels, value) in samples {
            self.sample(&total, &labels, None, value);
        }
    }

    /// A gauge family: one sample per label set.
    pub fn gauge<V: Display>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, V)>,
    ) {
        self.describe(name, help, "gauge");
        for (labels, value) in samples {
            self.sample(name, &labels, None, value);
        }
    }

    /// A histogram family, one histogram per label set: `buckets` are (upper bound,
    /// observations in that bucket alone); the `+Inf` bucket is `count`.
    pub fn histogram(&mut self, name: &str, help: &str, series: &[Histogram]) {
        self.describe(name, help, "histogram");
        let bucket = format!("{name}_bucket");
        for histogram in series {
            let labels = &histogram.labels;
            let mut cumulative = 0u64;
            for (bound, observed) in &histogram.buckets {
                cumulative = cumulative.saturating_add(*observed);
                self.sample(&bucket, labels, Some(&format!("{bound:?}")), cumulative);
            }
            self.sample(&bucket, labels, Some("+Inf"), histogram.count);
            self.sample(&format!("{name}_sum"), labels, None, histogram.sum);
            self.sample(&format!("{name}_count"), labels, None, histogram.count);
        }
    }

    /// The whole text.
    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.text.push_str("# EOF\n");
        }
        self.text
    }

    fn describe(&mut self, family: &str, help: &str, kind: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {family} {help}");
        let _ = writeln!(self.text, "# TYPE {family} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &Labels, le: Option<&str>, value: impl Display) {
        self.text.push_str(name);
        let pairs = labels
            .iter()
            .map(|(label, value)| (*label, value.as_str()))
            .chain(le.map(|le| ("le", le)));
        let mut first = true;
        for (label, value) in pairs {
            self.text.push(if first { '{' } else { ',' });
            first = false;
            let value = value
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = write!(self.text, "{label}=\"{value}\"");
        }
        if !first {
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn families(format: Format) -> String {
        let mut exposition = Exposition::new(format);
        exposition.counter(
            "a_requests",
            "Requests\nserved.",
            [(vec![("role", "h\"t\\tp\n".to_string())], 3u64)],
        );
        exposition.gauge("a_rss", "Memory.", [(Labels::new(), 7i64)]);
        exposition.histogram(
            "a_seconds",
            "Durations.",
            &[Histogram {
                labels: vec![("role", "http".to_string())],
                buckets: vec![(0.5, 2), (1.0, 1)],
                sum: 1.25,
                count: 4,
            }],
        );
        exposition.finish()
    }

    #[test]
    fn both_formats_name_and_escape_as_prometheus_reads_them() {
        assert_eq!(
            families(Format::Classic),
            "# HELP a_requests_total Requests\\nserved.\n# TYPE a_requests_total counter\n\
             a_requests_total{role=\"h\\\"t\\\\tp\\n\"} 3\n# HELP a_rss Memory.\n\
             # TYPE a_rss gauge\na_rss 7\n# HELP a_seconds Durations.\n\
             # TYPE a_seconds histogram\na_seconds_bucket{role=\"http\",le=\"0.5\"} 2\n\
             a_seconds_bucket{role=\"http\",le=\"1.0\"} 3\n\
             a_seconds_bucket{role=\"http\",le=\"+Inf\"} 4\na_seconds_sum{role=\"http\"} 1.25\n\
             a_seconds_count{role=\"http\"} 4\n"
        );
        let openmetrics = families(Format::OpenMetrics);
        assert!(openmetrics.starts_with(
            "# HELP a_requests Requests\\nserved.\n# TYPE a_requests counter\na_requests_total{"
        ));
        assert!(openmetrics.ends_with("a_seconds_count{role=\"http\"} 4\n# EOF\n"));
    }
}
