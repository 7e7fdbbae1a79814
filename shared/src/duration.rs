//! Durations in messages people read: `144ms`, `1.5s`, `2s`, `2m 30s`.
//!
//! Not the configuration syntax ([`config::format_duration`](crate::config::format_duration)
//! writes whole seconds that parse back): whole seconds print a 144 ms limit as `0s` and a
//! 2 s timeout, once capped by a deadline a few microseconds later, as `1s`.

use std::time::Duration;

/// `d` for a message: whole milliseconds under a second, seconds to a tenth under a minute,
/// then whole seconds as `1h 2m 3s` with zero parts left out. Rounds to the nearest unit
/// shown, so a timeout a hair under 2 s reads `2s`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        // Below a millisecond, `Debug` still shows the real value (`150µs`) rather than `0ms`.
        return if ms == 0 && !d.is_zero() {
            format!("{d:?}")
        } else {
            format!("{ms}ms")
        };
    }
    let tenths = (ms + 50) / 100;
    if tenths < 600 {
        return match tenths % 10 {
            0 => format!("{}s", tenths / 10),
            tenth => format!("{}.{tenth}s", tenths / 10),
        };
    }
    let secs = (ms + 500) / 1000;
    let parts = [(secs / 3600, "h"), (secs / 60 % 60, "m"), (secs % 60, "s")];
    parts
        .iter()
        .filter(|(amount, _)| *amount > 0)
        .map(|(amount, unit)| format!("{amount}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_sub_second_duration_keeps_its_milliseconds_instead_of_reading_0s() {
        assert_eq!(human(ms(144)), "144ms");
        assert_eq!(human(ms(999)), "999ms");
        assert_eq!(human(Duration::ZERO), "0ms");
        assert_eq!(human(Duration::from_micros(150)), "150µs");
    }

    #[test]
    fn a_2s_timeout_reads_2s_even_when_a_deadline_shaved_microseconds_off_it() {
        assert_eq!(human(Duration::from_secs(2)), "2s");
        assert_eq!(
            human(Duration::from_secs(2) - Duration::from_micros(30)),
            "2s"
        );
    }

    #[test]
    fn seconds_show_a_tenth_when_it_is_not_zero() {
        assert_eq!(human(ms(1000)), "1s");
        assert_eq!(human(ms(1500)), "1.5s");
        assert_eq!(human(ms(1549)), "1.5s");
        assert_eq!(human(ms(59_940)), "59.9s");
    }

    #[test]
    fn a_minute_or_more_reads_as_hours_minutes_and_seconds() {
        assert_eq!(human(ms(59_960)), "1m");
        assert_eq!(human(Duration::from_secs(150)), "2m 30s");
        assert_eq!(human(Duration::from_secs(3600)), "1h");
        assert_eq!(human(Duration::from_secs(3725)), "1h 2m 5s");
        assert_eq!(human(Duration::from_secs(3605)), "1h 5s");
    }
}
