//! What the end-to-end tests share: the two backends, the real `arp-host` binary on a
//! real socket, and signing envelopes like a peer does.

#![allow(dead_code)]

pub mod agent;
pub mod postgres;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};

/// An HTTP client for the server under test (plain HTTP; reqwest is built without a
/// default TLS provider, so one is installed first).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Where a test's store lives; dropping it removes the directory or database.
pub enum Backend {
    /// A SQLite file in a temporary directory.
    Sqlite(tempfile::TempDir),
    /// A fresh Postgres database.
    Postgres(postgres::TestDatabase),
}

impl Backend {
    pub fn sqlite() -> Self {
        Self::Sqlite(tempfile::tempdir().unwrap())
    }

    pub async fn postgres() -> Self {
        Self::Postgres(postgres::TestDatabase::create().await)
    }

    /// The `--database-url` of this store.
    pub fn database_url(&self) -> String {
        match self {
            Self::Sqlite(dir) => {
                format!("sqlite:{}", dir.path().join("arp-host.sqlite3").display())
            }
            Self::Postgres(database) => database.url.clone(),
        }
    }

    /// The server's data dir: only its compiled policy cache, as the store is given by
    /// URL. Shared by every test, so the default policy is compiled once per machine
    /// (artifacts are written atomically, so concurrent servers can share it).
    pub fn data_dir(&self) -> PathBuf {
        std::env::temp_dir().join("arp-host-e2e-cache")
    }
}

/// A running `arp-host serve`, killed when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Server {
    /// Starts `arp-host serve` on a free port (unless `extra` has `--listen`) with this
    /// store and extra flags, and waits until it listens.
    pub fn spawn(backend: &Backend, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_arp-host"))
            .args(["serve", "--log-format", "text"])
            .args(if extra.contains(&"--listen") {
                &[][..]
            } else {
                &["--listen", "127.0.0.1:0"][..]
            })
            .arg("--data-dir")
            .arg(backend.data_dir())
            .arg("--database-url")
            .arg(backend.database_url())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self { child, url }
    }

    /// Stops the server with SIGTERM and waits for it.
    pub fn stop(mut self) {
        self.signal("-TERM");
        assert!(self.child.wait().unwrap().success());
    }

    /// Sends SIGTERM and returns; a thread waits for the exit and asserts it was clean.
    pub fn stop_in_background(mut self) -> std::thread::JoinHandle<()> {
        self.signal("-TERM");
        std::thread::spawn(move || assert!(self.child.wait().unwrap().success()))
    }

    /// Kills the server with SIGKILL: no shutdown work at all.
    pub fn kill9(mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        Command::new("kill").args([signal, &pid]).status().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `arp-host <args>` to completion; panics unless it exits 0. Returns stdout.
pub fn cli(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_arp-host"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "arp-host {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The golden envelope vectors.
pub fn envelope_vectors() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/vectors/envelopes.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A peer that signs envelopes.
pub struct Peer {
    pub did: String,
    key: SigningKey,
}

impl Peer {
    /// The peer `name` of the vectors' `keys`.
    pub fn from_vectors(vectors: &Value, name: &str) -> Self {
        let key = &vectors["keys"][name];
        let seed: [u8; 32] = hex::decode(key["seed_hex"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        Self {
            did: key["did"].as_str().unwrap().to_owned(),
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// A signer with this DID and Ed25519 seed (e.g. a hosted agent's generated key).
    pub fn from_seed(did: &str, seed: [u8; 32]) -> Self {
        Self {
            did: did.to_owned(),
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// A `did:key` peer with this seed (resolves without any network).
    pub fn did_key(seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let multibase = arp_host::did::encode_public_key_multibase(key.verifying_key().as_bytes());
        Self {
            did: format!("did:key:{multibase}"),
            key,
        }
    }

    /// A JWS compact envelope of `payload`, signed by this peer.
    pub fn sign(&self, payload: &Value) -> String {
        let header = json!({
            "alg": "EdDSA",
            "typ": "application/didcomm-signed+json",
            "kid": format!("{}#key-1", self.did),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let signature = self.key.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }

    /// A fresh request from this peer to `to`, created now.
    pub fn request(&self, id: &str, to: &str, body: Value) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        self.sign(&json!({
            "id": id,
            "type": "https://didcomm.org/arp/1.0/request",
            "from": self.did,
            "to": [to],
            "created_time": now,
            "body": body,
        }))
    }
}
