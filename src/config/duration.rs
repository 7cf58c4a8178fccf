//! Go's `time.ParseDuration` syntax, so values like upstream's `LOOKUP_CACHE_TTL=300s`
//! or `1h30m` keep working unchanged.

use std::time::Duration;

/// Why a duration string is invalid; the message is shown after the setting's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Empty or malformed input.
    #[error("invalid duration {0:?} (use a number with a unit, such as 300ms, 3s, 5m or 1h30m)")]
    Invalid(String),
    /// A number without a unit (only `0` may go without one).
    #[error("missing unit in duration {0:?} (such as 3s or 500ms)")]
    MissingUnit(String),
    /// A negative value.
    #[error("must be non-negative, got {0:?}")]
    Negative(String),
    /// More than the largest duration we accept.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses a Go-style duration: a sequence of decimal numbers, each with a unit
/// (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), such as `300s`, `1.5s` or `2h45m`.
/// A lone `0` needs no unit.
///
/// # Errors
/// [`DurationError`] for malformed, unit-less, negative or huge values.
pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError::Invalid(input.to_owned());
    let mut s = input.trim();
    if let Some(rest) = s.strip_prefix('-') {
        return if parse_go_duration(rest).is_ok_and(|d| d.is_zero()) {
            Ok(Duration::ZERO)
        } else {
            Err(DurationError::Negative(input.to_owned()))
        };
    }
    s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total_nanos: u128 = 0;
    while !s.is_empty() {
        let number_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let number = &s[..number_end];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid());
        }
        s = &s[number_end..];
        let unit_end = s
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(s.len());
        let unit = &s[..unit_end];
        s = &s[unit_end..];
        let unit_nanos: u128 = match unit {
            "" => return Err(DurationError::MissingUnit(input.to_owned())),
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(invalid()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole
                .parse()
                .map_err(|_| DurationError::Overflow(input.to_owned()))?
        };
        let mut nanos = whole
            .checked_mul(unit_nanos)
            .ok_or_else(|| DurationError::Overflow(input.to_owned()))?;
        // Fractions beyond nanosecond precision are dropped, as Go does.
        let mut scale = unit_nanos;
        for digit in fraction.bytes().take(18) {
            scale /= 10;
            nanos += u128::from(digit - b'0') * scale;
        }
        total_nanos = total_nanos
            .checked_add(nanos)
            .ok_or_else(|| DurationError::Overflow(input.to_owned()))?;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000)
        .map_err(|_| DurationError::Overflow(input.to_owned()))?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// Formats a duration the way Go prints it, for `check-config` output.
pub fn format_go_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let nanos = d.as_nanos();
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}us", trim_float(nanos as f64 / 1e3));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", trim_float(nanos as f64 / 1e6));
    }
    let secs = d.as_secs();
    let (h, m) = (secs / 3600, (secs % 3600) / 60);
    let s = (secs % 60) as f64 + f64::from(d.subsec_nanos()) / 1e9;
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{}s", trim_float(s)));
    out
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.9}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn go_examples() {
        let ok = [
            ("300s", Duration::from_secs(300)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("-0", Duration::ZERO),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5s", Duration::from_millis(1500)),
            (".5s", Duration::from_millis(500)),
            ("100ms", Duration::from_millis(100)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("2h45m0.5s", Duration::from_millis(9_900_500)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_go_duration(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn rejects_like_go() {
        assert!(matches!(
            parse_go_duration("300"),
            Err(DurationError::MissingUnit(_))
        ));
        assert!(matches!(
            parse_go_duration("-1s"),
            Err(DurationError::Negative(_))
        ));
        for bad in ["", "s", "1x", "1..5s", "1s2", "one second", "."] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_go_duration("99999999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_go_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(format_go_duration(Duration::from_secs(3)), "3s");
        assert_eq!(format_go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_go_duration(Duration::ZERO), "0s");
    }

    proptest! {
        #[test]
        fn format_round_trips(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse_go_duration(&format_go_duration(d)).unwrap(), d);
        }

        #[test]
        fn never_panics(s in "\\PC{0,20}") {
            let _ = parse_go_duration(&s);
        }
    }
}
