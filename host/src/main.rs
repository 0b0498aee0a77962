//! The `arp-host` binary: parses the command line and hands it to [`arp_host::cli`] (which
//! also reads the configuration file).

use std::process::ExitCode;

fn main() -> ExitCode {
    match arp_host::cli::parse().and_then(arp_host::cli::run) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    }
}
