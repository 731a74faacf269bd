//! Logging: JSON (default, for log pipelines) or text, to stderr.

use crate::config::{Args, LogFormat};
use std::fmt;
use std::io::IsTerminal;
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::{FormatFields, MakeWriter};
use tracing_subscriber::util::SubscriberInitExt;

/// The level `--log-level` and `--debug` ask for.
pub fn level(args: &Args) -> &str {
    if args.debug { "debug" } else { &args.log_level }
}

/// `RUST_LOG` wins over `level` when set, for per-module debugging.
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let directives = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => v,
        _ => level.to_string(),
    };
    let filter = EnvFilter::try_new(directives).map_err(|e| format!("invalid log level {level:?}: {e}"))?;
    // Colour only for a person at a terminal, never into a log file or pipeline.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    subscriber(format, filter, ansi, std::io::stderr)
        .try_init()
        .map_err(|e| e.to_string())
}

/// The subscriber [`init`] installs, writing to `writer` at `level` (no `RUST_LOG`,
/// no colour), for a caller that installs it per thread: the tests run several
/// daemons in one process, each with logs of its own.
pub fn to_writer<W>(format: LogFormat, level: &str, writer: W) -> Result<Dispatch, String>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(level).map_err(|e| format!("invalid log level {level:?}: {e}"))?;
    Ok(Dispatch::new(subscriber(format, filter, false, writer)))
}

fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        // serde_json escapes every control character in a string.
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .finish(),
        ),
        LogFormat::Text => Box::new(builder.fmt_fields(EscapedFields).finish()),
    }
}

/// The text format's fields, with control characters escaped: event fields carry
/// what senders wrote (a v1 type, a v2 object name), and a raw newline or terminal
/// escape there would forge log lines or repaint the operator's terminal. Every
/// field, message and span field passes through here, whether logged with `%`,
/// `?` or as a string.
struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut escaping = Escaping(&mut writer);
        DefaultFields::new().format_fields(Writer::new(&mut escaping), fields)
    }
}

struct Escaping<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if needs_escape(c) {
                write!(self.0, "{}", c.escape_default())?;
            } else {
                self.0.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Control characters, and the Unicode ones that break or reorder a line on screen.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// A hostile event field, logged every way the code logs one.
    fn log(format: LogFormat, ansi: bool) -> String {
        let out = Captured::default();
        let sub = subscriber(format, EnvFilter::new("info"), ansi, out.clone());
        let hostile = "sync\nINFO forged: all good \x1b[31mred\u{2028}";
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("request", name = %hostile);
            let _entered = span.enter();
            tracing::info!(r#type = %hostile, name = hostile, dbg = ?hostile, "event {hostile} acknowledged");
        });
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn text_fields_cannot_forge_lines_or_colour() {
        let text = log(LogFormat::Text, false);
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
        assert!(text.ends_with('\n'), "{text:?}");
        assert!(!text.contains('\x1b') && !text.contains('\u{2028}'), "{text:?}");
        // Escaped, not dropped: the operator still sees what was sent.
        assert!(text.contains(r"type=sync\nINFO forged"), "{text:?}");
        assert!(text.contains(r"\u{1b}[31mred\u{2028}"), "{text:?}");
        assert!(text.contains(r"event sync\nINFO forged"), "{text:?}");
        assert!(text.contains(r"request{name=sync\nINFO forged"), "{text:?}");
        // At a terminal the formatter colours its own parts, and only those.
        let coloured = log(LogFormat::Text, true);
        assert_eq!(coloured.matches('\n').count(), 1, "{coloured:?}");
        assert!(
            coloured.contains('\x1b') && !coloured.contains("\x1b[31m"),
            "{coloured:?}"
        );
    }

    #[test]
    fn json_escapes_them_too() {
        let text = log(LogFormat::Json, false);
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
        assert!(!text.contains('\x1b'), "{text:?}");
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["type"], "sync\nINFO forged: all good \x1b[31mred\u{2028}");
    }
}
