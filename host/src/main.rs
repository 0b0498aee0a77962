//! The `arp-host` binary: parses the command line and hands it to [`arp_host::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = arp_host::cli::Cli::parse();
    match arp_host::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    }
}
