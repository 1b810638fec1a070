//! Structured log lines on stderr: `key=value` text or one JSON object per
//! line (`--log-format`), each with a time, a level and a message.
//!
//! Logging is for rare events (start-up, shutdown, disk errors, stalls), so
//! a line is formatted into a local buffer and written with one `write`
//! call: lines from different threads never interleave.

use std::fmt::{self, Display, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `ts=… level=warn msg="…" key=value`, logfmt style.
    Text,
    /// `{"ts":"…","level":"warn","msg":"…","key":"value"}`.
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

static FORMAT: AtomicU8 = AtomicU8::new(0);

/// Chooses the format of every later line (set once at start).
pub fn set_format(format: Format) {
    FORMAT.store(format as u8, Ordering::Relaxed);
}

fn format() -> Format {
    if FORMAT.load(Ordering::Relaxed) == Format::Json as u8 {
        Format::Json
    } else {
        Format::Text
    }
}

/// Writes one line to stderr.
pub fn emit(level: Level, message: &str, fields: &[(&str, &dyn Display)]) {
    let line = render(format(), SystemTime::now(), level, message, fields);
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

pub fn info(message: &str, fields: &[(&str, &dyn Display)]) {
    emit(Level::Info, message, fields);
}

pub fn warn(message: &str, fields: &[(&str, &dyn Display)]) {
    emit(Level::Warn, message, fields);
}

pub fn error(message: &str, fields: &[(&str, &dyn Display)]) {
    emit(Level::Error, message, fields);
}

/// Formats one line, newline included.
pub fn render(format: Format, now: SystemTime, level: Level, message: &str, fields: &[(&str, &dyn Display)]) -> String {
    let mut line = String::with_capacity(128);
    let time = Rfc3339(now);
    match format {
        Format::Text => {
            let _ = write!(line, "ts={time} level={} msg=", level.name());
            text_value(&mut line, message);
            for (key, value) in fields {
                let _ = write!(line, " {key}=");
                text_value(&mut line, &value.to_string());
            }
        }
        Format::Json => {
            let _ = write!(line, "{{\"ts\":\"{time}\",\"level\":\"{}\",\"msg\":", level.name());
            json_string(&mut line, message);
            for (key, value) in fields {
                line.push(',');
                json_string(&mut line, key);
                line.push(':');
                json_string(&mut line, &value.to_string());
            }
            line.push('}');
        }
    }
    line.push('\n');
    line
}

/// A logfmt value: bare when it has no space, quote or `=`, else quoted.
fn text_value(line: &mut String, value: &str) {
    let bare = !value.is_empty() && !value.chars().any(|c| c.is_whitespace() || c == '"' || c == '=' || c == '\\');
    if bare {
        line.push_str(value);
        return;
    }
    quoted(line, value, false);
}

fn json_string(line: &mut String, value: &str) {
    quoted(line, value, true);
}

/// `value` in double quotes with `"`, `\` and newlines escaped; for JSON,
/// every other control character too.
fn quoted(line: &mut String, value: &str, json: bool) {
    line.push('"');
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            c if json && (c as u32) < 0x20 => {
                let _ = write!(line, "\\u{:04x}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

/// A UTC time as RFC 3339 with milliseconds: `2026-11-28T05:12:43.123Z`.
pub struct Rfc3339(pub SystemTime);

impl Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let seconds = since.as_secs();
        let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
        let of_day = seconds % 86_400;
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            of_day / 3600,
            of_day / 60 % 60,
            of_day % 60,
            since.subsec_millis()
        )
    }
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(seconds * 1000 + 123)
    }

    #[test]
    fn text_lines_are_logfmt() {
        let line = render(
            Format::Text,
            at(1_795_842_763),
            Level::Warn,
            "log write failed",
            &[("shard", &3), ("error", &"No space left on device (os error 28)"), ("path", &"/var/lib/x")],
        );
        assert_eq!(
            line,
            "ts=2026-11-28T05:12:43.123Z level=warn msg=\"log write failed\" shard=3 \
             error=\"No space left on device (os error 28)\" path=/var/lib/x\n"
        );
    }

    #[test]
    fn json_lines_escape() {
        let line = render(Format::Json, at(0), Level::Info, "a \"quoted\"\nline", &[("k", &"v\\w")]);
        assert_eq!(
            line,
            "{\"ts\":\"1970-01-01T00:00:00.123Z\",\"level\":\"info\",\"msg\":\"a \\\"quoted\\\"\\nline\",\"k\":\"v\\\\w\"}\n"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_785), (2026, 11, 28));
    }
}
