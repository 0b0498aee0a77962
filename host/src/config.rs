//! The configuration file, `arp-host.toml`, and what the server refuses to start with.
//!
//! Every key of the file is the name of an `arp-host serve` flag (`listen`, `data-dir`,
//! `database-url`, `operator-token`, ...); see [`FileConfig`]. Precedence, highest first:
//!
//! 1. a flag on the command line (`--listen 127.0.0.1:9000`),
//! 2. its environment variable (`ARP_LISTEN`),
//! 3. the configuration file,
//! 4. the built-in default.
//!
//! The file is `--config <file>` (or `ARP_CONFIG`), else `./arp-host.toml` when it exists;
//! a file named explicitly must exist. It is read before the command line is parsed and
//! its values become the defaults of the matching flags of every command (so `data-dir` and
//! `database-url` also apply to `migrate`, `tenant`, `audit`, ...): clap then lets the
//! environment and the flags override them, which is exactly the order above.
//!
//! `arp-host config check` prints the effective settings of `serve` with the secrets
//! redacted ([`render`]) and runs the checks `serve` runs before it starts ([`validate`]).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cli::{CliError, ServeArgs};
use crate::logging::LogFormat;

/// The file read when neither `--config` nor `ARP_CONFIG` names one (if it exists).
pub const DEFAULT_CONFIG_FILE: &str = "arp-host.toml";

/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "ARP_CONFIG";

/// What a secret is shown as.
pub const REDACTED: &str = "<redacted>";

/// The contents of `arp-host.toml`: every key optional, named like the `serve` flag it
/// sets (see `arp-host serve --help` for each one's meaning and default). Unknown keys are
/// refused, so a typo is an error rather than a silently ignored setting.
///
/// ```toml
/// listen = "127.0.0.1:8787"
/// data-dir = "/var/lib/arp-host"
/// database-url = "postgres://arp@db.internal/arp"
/// operator-token = "change-me"
/// log-format = "json"
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// `--listen`: address to listen on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--data-dir`: SQLite store and compiled policy cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--database-url`: `postgres://...` or `sqlite:<file>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    /// `--operator-token`: the admin API's operator token (a secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_token: Option<String>,
    /// `--clock-window-secs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_window_secs: Option<u64>,
    /// `--body-limit`, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_limit: Option<usize>,
    /// `--log-format`: `json` or `text`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormatName>,
    /// `--metrics-log-samples`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_log_samples: Option<bool>,
    /// `--did-web-timeout-ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub did_web_timeout_ms: Option<u64>,
    /// `--did-web-connect-to`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub did_web_connect_to: Option<SocketAddr>,
    /// `--did-web-ca-file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub did_web_ca_file: Option<PathBuf>,
    /// `--ack-timeout-ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_timeout_ms: Option<u64>,
    /// `--ping-interval-ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping_interval_ms: Option<u64>,
    /// `--message-ttl-secs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_ttl_secs: Option<u64>,
    /// `--expiry-interval-secs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiry_interval_secs: Option<u64>,
    /// `--rescan-interval-ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rescan_interval_ms: Option<u64>,
}

/// The log formats, as the file spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormatName {
    /// One JSON object per line.
    Json,
    /// For people.
    Text,
}

/// A configuration file that was found and read.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// Where it was read from.
    pub path: PathBuf,
    /// What it says.
    pub config: FileConfig,
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("invalid configuration file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (with line and column).
        message: String,
    },
}

/// Finds the configuration file for this command line: `--config <file>` or
/// `--config=<file>`, else `ARP_CONFIG`, else `./arp-host.toml` if it exists; `None` when
/// there is none. The flag says whether the file was named (then it must exist).
pub fn locate(args: &[OsString]) -> Option<(PathBuf, bool)> {
    let mut named = None;
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        if text == "--config" {
            named = iter.next().map(PathBuf::from);
        } else if let Some(path) = text.strip_prefix("--config=") {
            named = Some(PathBuf::from(path));
        }
    }
    if let Some(path) = named {
        return Some((path, true));
    }
    if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return Some((PathBuf::from(path), true));
    }
    let default = PathBuf::from(DEFAULT_CONFIG_FILE);
    default.is_file().then_some((default, false))
}

/// Reads and parses a configuration file.
pub fn read(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|message| ConfigError::Parse {
        path: path.display().to_string(),
        message,
    })
}

/// Parses the text of a configuration file; the error names the line and the key.
pub fn parse(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|error| error.to_string().trim_end().to_owned())
}

/// The configuration file of this command line, read, if there is one.
pub fn load(args: &[OsString]) -> Result<Option<Loaded>, ConfigError> {
    match locate(args) {
        None => Ok(None),
        Some((path, _)) => {
            let config = read(&path)?;
            Ok(Some(Loaded { path, config }))
        }
    }
}

impl FileConfig {
    /// `(clap argument id, value)` for every key the file sets. The ids are the
    /// `ServeArgs` field names, which clap derives from the flags.
    pub fn defaults(&self) -> Vec<(String, String)> {
        let Ok(Value::Object(map)) = serde_json::to_value(self) else {
            return Vec::new();
        };
        map.into_iter()
            .filter_map(|(key, value)| {
                let text = match value {
                    Value::Null => return None,
                    Value::String(text) => text,
                    other => other.to_string(),
                };
                Some((key.replace('-', "_"), text))
            })
            .collect()
    }

    /// The effective settings of `serve`, as a file would say them (secrets included).
    pub fn from_serve(args: &ServeArgs) -> Self {
        Self {
            listen: Some(args.listen),
            data_dir: Some(args.store.data_dir.clone()),
            database_url: args.store.database_url.clone(),
            operator_token: args.operator_token.clone(),
            clock_window_secs: Some(args.clock_window_secs),
            body_limit: Some(args.body_limit),
            log_format: Some(match args.log_format {
                LogFormat::Json => LogFormatName::Json,
                LogFormat::Text => LogFormatName::Text,
            }),
            metrics_log_samples: Some(args.metrics_log_samples),
            did_web_timeout_ms: Some(args.did_web_timeout_ms),
            did_web_connect_to: args.did_web_connect_to,
            did_web_ca_file: args.did_web_ca_file.clone(),
            ack_timeout_ms: Some(args.ack_timeout_ms),
            ping_interval_ms: Some(args.ping_interval_ms),
            message_ttl_secs: Some(args.message_ttl_secs),
            expiry_interval_secs: Some(args.expiry_interval_secs),
            rescan_interval_ms: Some(args.rescan_interval_ms),
        }
    }
}

/// Makes the file's values the defaults of the matching arguments of `command` and of all
/// its subcommands, so the environment and the flags still override them.
pub fn apply_defaults(command: clap::Command, defaults: &[(String, String)]) -> clap::Command {
    let names: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .collect();
    let mut command = command;
    for (id, value) in defaults {
        if command
            .get_arguments()
            .any(|arg| arg.get_id() == id.as_str())
        {
            // Once per process: clap keeps `'static` defaults.
            let value: &'static str = value.clone().leak();
            command = command.mut_arg(id.as_str(), |arg| arg.default_value(value));
        }
    }
    for name in names {
        command = command.mut_subcommand(name, |sub| apply_defaults(sub, defaults));
    }
    command
}

/// The checks `serve` makes before it starts: values that are in range, a store URL it
/// knows, and **no listening beyond loopback without an operator token** (the admin API
/// and tenant keys would be unmanageable, and an operator who forgot the token would not
/// notice).
pub fn validate(args: &ServeArgs) -> Result<(), CliError> {
    let invalid = |message: String| Err(CliError::Invalid(message));
    if !args.listen.ip().is_loopback() && args.operator_token.as_deref().unwrap_or("").is_empty() {
        return invalid(format!(
            "refusing to listen on {} (beyond loopback) without an operator token: set \
             --operator-token / ARP_OPERATOR_TOKEN / operator-token in arp-host.toml, or \
             listen on 127.0.0.1",
            args.listen
        ));
    }
    if let Some(url) = &args.store.database_url {
        let known = ["postgres://", "postgresql://", "sqlite:"];
        if !known.iter().any(|scheme| url.starts_with(scheme)) {
            return invalid(format!(
                "database-url {}: use postgres://user@host/db or sqlite:<file>",
                redact_url(url)
            ));
        }
    }
    for (name, value) in [
        ("clock-window-secs", args.clock_window_secs),
        ("body-limit", args.body_limit as u64),
        ("did-web-timeout-ms", args.did_web_timeout_ms),
        ("ack-timeout-ms", args.ack_timeout_ms),
        ("ping-interval-ms", args.ping_interval_ms),
        ("message-ttl-secs", args.message_ttl_secs),
        ("expiry-interval-secs", args.expiry_interval_secs),
        ("rescan-interval-ms", args.rescan_interval_ms),
    ] {
        if value == 0 {
            return invalid(format!("{name} must be greater than 0"));
        }
    }
    if let Some(path) = &args.did_web_ca_file
        && !path.is_file()
    {
        return invalid(format!("did-web-ca-file {}: no such file", path.display()));
    }
    Ok(())
}

/// The effective settings of `serve` as TOML, with the operator token and any database
/// password replaced by [`REDACTED`].
pub fn render(args: &ServeArgs) -> String {
    let mut config = FileConfig::from_serve(args);
    if config.operator_token.is_some() {
        config.operator_token = Some(REDACTED.to_owned());
    }
    config.database_url = config.database_url.as_deref().map(redact_url);
    toml::to_string(&config).unwrap_or_else(|error| format!("# cannot render: {error}\n"))
}

/// A database URL without its password: the `user:password@` part and a `password=`
/// query parameter.
pub fn redact_url(url: &str) -> String {
    let mut text = url.to_owned();
    if let (Some(scheme), Some(at)) = (text.find("://"), text.rfind('@'))
        && at > scheme
        && let Some(colon) = text[scheme + 3..at].find(':')
    {
        text.replace_range(scheme + 3 + colon + 1..at, REDACTED);
    }
    if let Some(start) = text.find("password=") {
        let value = start + "password=".len();
        let end = text[value..].find('&').map_or(text.len(), |n| value + n);
        text.replace_range(value..end, REDACTED);
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_flag_names_and_unknown_keys_are_refused() {
        let config =
            parse("listen = \"0.0.0.0:9000\"\ndata-dir = \"/srv\"\nack-timeout-ms = 5\n").unwrap();
        assert_eq!(config.listen, Some("0.0.0.0:9000".parse().unwrap()));
        let defaults = config.defaults();
        assert!(defaults.contains(&("data_dir".into(), "/srv".into())));
        assert!(defaults.contains(&("ack_timeout_ms".into(), "5".into())));
        let error = parse("lisen = \"x\"").unwrap_err();
        assert!(error.contains("lisen"), "{error}");
        let error = parse("listen = \"nowhere\"").unwrap_err();
        assert!(
            error.contains("listen") || error.contains("line 1"),
            "{error}"
        );
        let error = parse("ack-timeout-ms = \"soon\"").unwrap_err();
        assert!(
            error.contains("ack-timeout-ms") || error.contains("line 1"),
            "{error}"
        );
    }

    /// Every key of the file is an argument of `serve` and of `config check` (else it
    /// would be skipped), and a file value reaches the parsed settings.
    #[test]
    fn every_key_is_a_serve_argument_and_becomes_its_default() {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let full = FileConfig {
            listen: Some("127.0.0.1:9999".parse().unwrap()),
            data_dir: Some("/srv/arp".into()),
            database_url: Some("sqlite:/srv/arp/x.db".into()),
            operator_token: Some("t".into()),
            clock_window_secs: Some(7),
            body_limit: Some(8),
            log_format: Some(LogFormatName::Text),
            metrics_log_samples: Some(true),
            did_web_timeout_ms: Some(9),
            did_web_connect_to: Some("127.0.0.1:443".parse().unwrap()),
            did_web_ca_file: Some("/ca.pem".into()),
            ack_timeout_ms: Some(10),
            ping_interval_ms: Some(11),
            message_ttl_secs: Some(12),
            expiry_interval_secs: Some(13),
            rescan_interval_ms: Some(14),
        };
        let defaults = full.defaults();
        assert_eq!(defaults.len(), 16);
        let command = crate::cli::Cli::command();
        for path in [&["serve"][..], &["config", "check"][..]] {
            let mut sub = command.clone();
            for name in path {
                sub = sub.find_subcommand(name).unwrap().clone();
            }
            for (id, _) in &defaults {
                assert!(
                    sub.get_arguments().any(|arg| arg.get_id() == id.as_str()),
                    "{id} is not an argument of {path:?}"
                );
            }
        }
        let command = apply_defaults(crate::cli::Cli::command(), &defaults);
        let matches = command.try_get_matches_from(["arp-host", "serve"]).unwrap();
        let cli = crate::cli::Cli::from_arg_matches(&matches).unwrap();
        let crate::cli::Command::Serve(args) = cli.command else {
            panic!("not serve");
        };
        assert_eq!(FileConfig::from_serve(&args), full);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://arp:s3cret@db/arp"),
            "postgres://arp:<redacted>@db/arp"
        );
        assert_eq!(
            redact_url("postgres://db/arp?user=arp&password=s3cret&sslmode=require"),
            "postgres://db/arp?user=arp&password=<redacted>&sslmode=require"
        );
        assert_eq!(redact_url("postgres://arp@db/arp"), "postgres://arp@db/arp");
        assert_eq!(redact_url("sqlite:/x.db"), "sqlite:/x.db");
    }

    #[test]
    fn locate_prefers_the_flag() {
        let args: Vec<OsString> = ["arp-host", "serve", "--config", "a.toml"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(locate(&args), Some((PathBuf::from("a.toml"), true)));
        let args: Vec<OsString> = ["arp-host", "config", "check", "--config=b.toml"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(locate(&args), Some((PathBuf::from("b.toml"), true)));
    }
}
