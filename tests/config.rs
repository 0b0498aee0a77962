//! The configuration file and `arp-host config check` on the real binary: precedence
//! (flag > environment > file > default), the default `./arp-host.toml`, redaction of
//! secrets, clear refusals of bad values, and no listening beyond loopback without an
//! operator token.

// Tests fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

/// `arp-host <args>` in `dir`, with none of the developer's ARP_* settings.
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_arp-host"));
    command.args(args).current_dir(dir);
    for (name, _) in std::env::vars() {
        if name.starts_with("ARP_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command.output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn flag_beats_environment_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("custom.toml"),
        "listen = \"127.0.0.1:7001\"\nclock-window-secs = 11\nack-timeout-ms = 12\n",
    )
    .unwrap();
    let output = run(
        dir.path(),
        &[
            "config",
            "check",
            "--config",
            "custom.toml",
            "--ack-timeout-ms",
            "33",
        ],
        &[
            ("ARP_CLOCK_WINDOW_SECS", "22"),
            ("ARP_ACK_TIMEOUT_MS", "44"),
        ],
    );
    let text = stdout(&output);
    assert!(output.status.success(), "{text}\n{}", stderr(&output));
    assert!(text.contains("# configuration file: custom.toml"), "{text}");
    assert!(text.contains("listen = \"127.0.0.1:7001\""), "file: {text}");
    assert!(
        text.contains("clock-window-secs = 22"),
        "env over file: {text}"
    );
    assert!(
        text.contains("ack-timeout-ms = 33"),
        "flag over env: {text}"
    );
    assert!(
        text.contains("message-ttl-secs = 604800"),
        "default: {text}"
    );
    assert!(text.contains("# ok"), "{text}");
}

#[test]
fn the_default_file_is_read_when_present_and_applies_to_serve() {
    let dir = tempfile::tempdir().unwrap();
    // No file: the defaults.
    let output = run(dir.path(), &["config", "check"], &[]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("no configuration file"), "{text}");
    assert!(text.contains("listen = \"127.0.0.1:8787\""), "{text}");

    std::fs::write(
        dir.path().join("arp-host.toml"),
        "listen = \"127.0.0.1:7002\"\nlog-format = \"text\"\n",
    )
    .unwrap();
    let output = run(dir.path(), &["config", "check"], &[]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("# configuration file: arp-host.toml"),
        "{text}"
    );
    assert!(text.contains("listen = \"127.0.0.1:7002\""), "{text}");
    assert!(text.contains("log-format = \"text\""), "{text}");
    // ARP_CONFIG names another file.
    std::fs::write(
        dir.path().join("other.toml"),
        "listen = \"127.0.0.1:7003\"\n",
    )
    .unwrap();
    let output = run(
        dir.path(),
        &["config", "check"],
        &[("ARP_CONFIG", "other.toml")],
    );
    assert!(
        stdout(&output).contains("listen = \"127.0.0.1:7003\""),
        "{}",
        stdout(&output)
    );
}

#[test]
fn secrets_are_redacted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("arp-host.toml"),
        "operator-token = \"super-secret-token\"\n\
         database-url = \"postgres://arp:hunter2@db.internal/arp\"\n",
    )
    .unwrap();
    let output = run(dir.path(), &["config", "check"], &[]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}\n{}", stderr(&output));
    assert!(text.contains("operator-token = \"<redacted>\""), "{text}");
    assert!(
        text.contains("database-url = \"postgres://arp:<redacted>@db.internal/arp\""),
        "{text}"
    );
    assert!(!text.contains("super-secret-token"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    // From the environment too.
    let output = run(
        dir.path(),
        &["config", "check"],
        &[("ARP_OPERATOR_TOKEN", "env-secret-token")],
    );
    assert!(!stdout(&output).contains("env-secret-token"));
}

#[test]
fn bad_values_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |file_text: &str, needles: &[&str]| {
        std::fs::write(dir.path().join("bad.toml"), file_text).unwrap();
        let output = run(
            dir.path(),
            &["config", "check", "--config", "bad.toml"],
            &[],
        );
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{file_text}: {message}");
        assert!(message.contains("bad.toml"), "{message}");
        for needle in needles {
            assert!(message.contains(needle), "{needle:?} not in {message}");
        }
    };
    refused("lisen = \"127.0.0.1:1\"\n", &["lisen"]);
    refused("listen = \"nowhere\"\n", &["listen"]);
    refused("ack-timeout-ms = \"soon\"\n", &["ack-timeout-ms"]);
    refused("log-format = \"xml\"\n", &["log-format"]);
    refused("listen = \n", &["line 1"]);

    // A named file must exist.
    let output = run(
        dir.path(),
        &["config", "check", "--config", "missing.toml"],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("missing.toml"),
        "{}",
        stderr(&output)
    );

    // Values the server would refuse.
    std::fs::write(dir.path().join("zero.toml"), "ping-interval-ms = 0\n").unwrap();
    let output = run(
        dir.path(),
        &["config", "check", "--config", "zero.toml"],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("ping-interval-ms must be greater than 0"));
    let output = run(
        dir.path(),
        &["config", "check", "--database-url", "mysql://db/arp"],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("postgres://"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn no_listening_beyond_loopback_without_an_operator_token() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(
        dir.path(),
        &["config", "check", "--listen", "0.0.0.0:8787"],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("beyond loopback"),
        "{}",
        stderr(&output)
    );
    let output = run(
        dir.path(),
        &["config", "check", "--listen", "0.0.0.0:8787"],
        &[("ARP_OPERATOR_TOKEN", "a-token")],
    );
    assert!(output.status.success(), "{}", stderr(&output));

    // serve refuses before it opens anything.
    let data = dir.path().join("data");
    let output = run(
        dir.path(),
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("beyond loopback"),
        "{}",
        stderr(&output)
    );
    assert!(!data.exists());
    // IPv6 loopback is loopback.
    let output = run(
        dir.path(),
        &["config", "check", "--listen", "[::1]:8787"],
        &[],
    );
    assert!(output.status.success(), "{}", stderr(&output));
}
