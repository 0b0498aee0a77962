//! `arp-hostile-io`: a TEST-ONLY hostile policy, not an example. `evaluate` tries to read
//! `/etc/passwd` and to open a TCP connection to 127.0.0.1:1, so the component imports
//! `wasi:filesystem` and `wasi:sockets`. The host gives a policy no files and no network:
//! both must fail (or the host must refuse the component). It always denies, and says in
//! its reasons what each attempt did, so a test can see whether the sandbox held.

use arp_policy_sdk::{Decision, Policy, Request};

/// Tries file and network access.
pub struct Io;

impl Policy for Io {
    fn evaluate(_request: &Request) -> Decision {
        let file = match std::fs::read("/etc/passwd") {
            Ok(bytes) => format!("fs:opened:{}", bytes.len()),
            Err(error) => format!("fs:error:{error}"),
        };
        let net = match std::net::TcpStream::connect(("127.0.0.1", 1)) {
            Ok(_) => "net:connected".to_string(),
            Err(error) => format!("net:error:{error}"),
        };
        Decision::deny().reason(file).reason(net)
    }
}

arp_policy_sdk::export_policy!(Io);
