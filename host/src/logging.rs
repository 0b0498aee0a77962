//! Log output of the host: JSON lines per ARP-PROTOCOL §6, or human-readable text.
//!
//! [`init`] installs the global `tracing` subscriber. In [`LogFormat::Json`] every line is
//! one JSON object (formatted by [`JsonLines`]):
//!
//! ```json
//! {"level":"info","time":"2026-12-03T19:55:01.123Z","msg":"metric","target":"arp_host::metrics","metric":"arp.inbound","tenantId":"t1"}
//! ```
//!
//! `level` is lowercase, `time` is RFC 3339 UTC with milliseconds, `msg` is the event's
//! message, `target` its module path; then every event field follows at top level under its
//! own name with its own JSON type (numbers stay numbers, bools stay bools, `%`/`?` values
//! become strings), then the fields of the enclosing spans (innermost first, an event field
//! wins over a span field of the same name). An event field named `level`, `time`, `msg` or
//! `target` is written as `field.<name>` so that it cannot hide the fixed members.

use std::fmt::{self, Write as _};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, JsonFields};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::{SubscriberInitExt as _, TryInitError};

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (§6), for log drains.
    Json,
    /// tracing-subscriber's human-readable text.
    Text,
}

/// Why the logger could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The filter is not a valid `EnvFilter` directive string.
    #[error("invalid log filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// A global subscriber is already installed.
    #[error("installing the logger: {0}")]
    Init(#[from] TryInitError),
}

/// Installs the global subscriber: `filter` is an `EnvFilter` directive string (e.g.
/// `"info"`, or `RUST_LOG`). Logs go to stderr. Returns an error (not a panic) if a
/// subscriber is already set.
pub fn init(format: LogFormat, filter: &str) -> Result<(), LoggingError> {
    let filter = EnvFilter::try_new(filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // JsonFields records span fields as JSON, which JsonLines flattens back.
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .finish()
            .try_init()?,
        LogFormat::Text => builder.finish().try_init()?,
    }
    Ok(())
}

/// The §6 JSON-lines event formatter, usable with any writer.
///
/// Span fields are flattened when the subscriber records them with
/// [`JsonFields`] (as [`init`] does); with
/// another field formatter they are left out.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonLines;

/// Names of the fixed members that an event field may not take.
const RESERVED: [&str; 4] = ["level", "time", "msg", "target"];

const TIME_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// The event's fields in order, the message apart.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    members: Vec<(String, Value)>,
}

impl Fields {
    fn put(&mut self, name: &str, value: Value) {
        if name == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
            return;
        }
        let name = if RESERVED.contains(&name) {
            format!("field.{name}")
        } else {
            name.to_owned()
        };
        match self.members.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => *v = value,
            None => self.members.push((name, value)),
        }
    }

    /// Adds a span field unless the event (or an inner span) already has that name.
    fn put_span_field(&mut self, name: String, value: Value) {
        if name != "message"
            && !RESERVED.contains(&name.as_str())
            && !self.members.iter().any(|(n, _)| *n == name)
        {
            self.members.push((name, value));
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field.name(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field.name(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field.name(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field.name(), Value::from(value));
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        let v = i64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.put(field.name(), v);
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        let v = u64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.put(field.name(), v);
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinities: those become strings.
        let v = serde_json::Number::from_f64(value)
            .map_or_else(|| Value::String(value.to_string()), Value::Number);
        self.put(field.name(), v);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field.name(), Value::Bool(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field.name(), Value::String(value.to_string()));
    }
}

fn push_member(out: &mut String, key: &str, value: &Value) -> fmt::Result {
    if out.len() > 1 {
        out.push(',');
    }
    let key = serde_json::to_string(key).map_err(|_| fmt::Error)?;
    let value = serde_json::to_string(value).map_err(|_| fmt::Error)?;
    write!(out, "{key}:{value}")
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let time = time::OffsetDateTime::now_utc()
            .format(TIME_FORMAT)
            .map_err(|_| fmt::Error)?;

        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                let ext = span.extensions();
                let Some(recorded) = ext.get::<FormattedFields<N>>() else {
                    continue;
                };
                // Not JSON when the subscriber's field formatter is not `JsonFields`.
                if let Ok(map) = serde_json::from_str::<Map<String, Value>>(recorded) {
                    for (name, value) in map {
                        fields.put_span_field(name, value);
                    }
                }
            }
        }

        let mut out = String::with_capacity(256);
        out.push('{');
        push_member(&mut out, "level", &Value::from(level_name(meta.level())))?;
        push_member(&mut out, "time", &Value::String(time))?;
        let msg = fields.message.take().unwrap_or_default();
        push_member(&mut out, "msg", &Value::String(msg))?;
        push_member(&mut out, "target", &Value::from(meta.target()))?;
        for (name, value) in &fields.members {
            push_member(&mut out, name, value)?;
        }
        out.push('}');
        writeln!(writer, "{out}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Runs `f` under a JsonLines subscriber (span fields as JSON) and returns the raw
    /// lines and their parsed objects.
    fn logged(f: impl FnOnce()) -> Vec<(String, Map<String, Value>)> {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| (l.to_owned(), serde_json::from_str(l).unwrap()))
            .collect()
    }

    fn is_rfc3339_millis_utc(t: &str) -> bool {
        let b = t.as_bytes();
        let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
        b.len() == 24
            && digits(0..4)
            && b[4] == b'-'
            && digits(5..7)
            && b[7] == b'-'
            && digits(8..10)
            && b[10] == b'T'
            && digits(11..13)
            && b[13] == b':'
            && digits(14..16)
            && b[16] == b':'
            && digits(17..19)
            && b[19] == b'.'
            && digits(20..23)
            && b[23] == b'Z'
            && time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .is_ok()
    }

    #[test]
    fn event_is_one_json_object_with_fixed_members_first() {
        let lines = logged(|| {
            tracing::info!(
                tenantId = "t1",
                agentDid = "did:key:z6Mk",
                "envelope accepted"
            );
        });
        assert_eq!(lines.len(), 1);
        let (raw, obj) = &lines[0];
        assert!(raw.starts_with(r#"{"level":"info","time":""#), "{raw}");
        assert_eq!(obj["level"], "info");
        assert!(
            is_rfc3339_millis_utc(obj["time"].as_str().unwrap()),
            "{raw}"
        );
        assert_eq!(obj["msg"], "envelope accepted");
        assert_eq!(obj["tenantId"], "t1");
        assert_eq!(obj["agentDid"], "did:key:z6Mk");
        assert_eq!(obj["target"], module_path!());
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 6, "{keys:?}");
    }

    #[test]
    fn fields_keep_their_json_types() {
        let lines = logged(|| {
            tracing::warn!(
                metric = "arp.pdp_latency_ms",
                ms = 0.125_f64,
                count = 3_u64,
                delta = -2_i64,
                big = u128::MAX,
                ok = true,
                nan = f64::NAN,
                shown = %"display",
                debugged = ?vec![1, 2],
                "metric"
            );
            tracing::error!(status = 500_u16, "failed: {}", "disk full");
        });
        let (_, obj) = &lines[0];
        assert_eq!(obj["level"], "warn");
        assert_eq!(obj["metric"], "arp.pdp_latency_ms");
        assert_eq!(obj["ms"], Value::from(0.125));
        assert_eq!(obj["count"], Value::from(3));
        assert_eq!(obj["delta"], Value::from(-2));
        assert_eq!(obj["big"], Value::String(u128::MAX.to_string()));
        assert_eq!(obj["ok"], Value::Bool(true));
        assert_eq!(obj["nan"], "NaN");
        assert_eq!(obj["shown"], "display");
        assert_eq!(obj["debugged"], "[1, 2]");
        let (_, obj) = &lines[1];
        assert_eq!(obj["level"], "error");
        assert_eq!(obj["msg"], "failed: disk full");
        assert_eq!(obj["status"], Value::from(500));
    }

    #[test]
    fn levels_are_lowercase() {
        let lines = logged(|| {
            tracing::trace!("a");
            tracing::debug!("b");
            tracing::info!("c");
            tracing::warn!("d");
            tracing::error!("e");
        });
        let levels: Vec<&str> = lines
            .iter()
            .map(|(_, o)| o["level"].as_str().unwrap())
            .collect();
        assert_eq!(levels, ["trace", "debug", "info", "warn", "error"]);
    }

    #[test]
    fn span_fields_are_flattened_and_event_fields_win() {
        let lines = logged(|| {
            let outer = tracing::info_span!("request", tenantId = "t1", requestId = 7_u64);
            let _o = outer.enter();
            let inner = tracing::info_span!("decide", agentDid = "did:key:a", requestId = 8_u64);
            let _i = inner.enter();
            tracing::info!(tenantId = "override", "decided");
        });
        let (_, obj) = &lines[0];
        assert_eq!(obj["msg"], "decided");
        assert_eq!(obj["tenantId"], "override");
        assert_eq!(obj["agentDid"], "did:key:a");
        assert_eq!(obj["requestId"], Value::from(8));
    }

    #[test]
    fn reserved_field_names_do_not_hide_fixed_members() {
        let lines = logged(|| tracing::info!(level = "custom", msg = 1, "real"));
        let (raw, obj) = &lines[0];
        assert_eq!(obj["level"], "info", "{raw}");
        assert_eq!(obj["msg"], "real");
        assert_eq!(obj["field.level"], "custom");
        assert_eq!(obj["field.msg"], Value::from(1));
    }

    #[test]
    fn init_rejects_bad_filter_and_second_install() {
        assert!(matches!(
            init(LogFormat::Json, "arp_host=loud"),
            Err(LoggingError::Filter(_))
        ));
        // The first install may race with nothing else in this test binary: only this test
        // installs a global subscriber.
        init(LogFormat::Json, "info").unwrap();
        assert!(matches!(
            init(LogFormat::Text, "info"),
            Err(LoggingError::Init(_))
        ));
    }
}
