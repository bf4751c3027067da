//! The README's Rust quickstart, compiled by `cargo test` so it cannot rot.
//!
//! Run: `cargo build --release -p ringbase-server && cargo run --release -p ringbase-client --example quickstart`
//! (finds `target/release/ringbase` next to the example's directory, or `$RINGBASE_SERVER`,
//! or `ringbase` on PATH, and starts it if no server named "default" is running).

use ringbase_client::{Client, ConnectOptions, Request, SpawnOptions};

fn main() -> Result<(), ringbase_client::Error> {
    let mut spawn = SpawnOptions::default();
    if std::env::var_os("RINGBASE_SERVER").is_none() {
        // target/release/examples/quickstart -> target/release/ringbase
        spawn.server_path = std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.parent()?.parent()?.join("ringbase")))
            .filter(|p| p.is_file());
    }
    // Connect to the server "default", starting it (detached) if none is running.
    let mut db = Client::connect_or_spawn(ConnectOptions::new("default"), spawn)?;
    let version = db.put_json("player:1", r#"{"name":"Ada"}"#)?; // returns once committed
    println!("wrote player:1 at {version:?}");
    let rec = db.get("player:1")?.expect("just written");
    println!("read {}", String::from_utf8_lossy(&rec.value));
    if let Some(view) = db.get_view("player:1")? {
        // Zero copy: `view.value` points into the response ring until the next call.
        println!(
            "{} bytes in place, version {:?}",
            view.value.len(),
            view.version
        );
    }
    let page = db.list("player:", None, 100)?; // page.more: ask again with start_after
    println!("{} record(s) under player:", page.records.len());

    // Pipelining: send many, then collect; responses come in request order.
    for i in 0..64 {
        db.send(&Request::Get {
            key: format!("k{i}"),
        })?;
    }
    for _ in 0..64 {
        let (_corr, _resp) = db.recv()?;
    }
    db.delete("player:1")?;
    println!("status: {:?}", db.status()?);
    Ok(())
}
