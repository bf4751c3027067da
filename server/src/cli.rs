//! The client subcommands of `ringbase`: they talk to a running server through shared
//! memory like any other client.

use std::process::ExitCode;
use std::time::Instant;

use ringbase_client::Client;

fn connect(name: &str) -> Result<Client, ExitCode> {
    Client::connect(name).map_err(|e| {
        eprintln!("ringbase: {e}");
        ExitCode::from(2)
    })
}

/// `ringbase ping`
pub fn ping(name: &str) -> ExitCode {
    let mut c = match connect(name) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let t = Instant::now();
    match c.ping() {
        Ok(()) => {
            println!(
                "pong from {name:?} in {:.1} µs",
                t.elapsed().as_secs_f64() * 1e6
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringbase: {e}");
            ExitCode::from(2)
        }
    }
}
