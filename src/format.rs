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
}
