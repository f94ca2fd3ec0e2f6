//! chat-demo: one binary for the whole chat game.
//!
//! - `chat-demo --id <id> --env <env>` runs one server (how the master starts it);
//! - `chat-demo` with no `--id` runs the master on this demo's project directory, spawning this
//!   same binary for every server (`cargo run --release -p chat-demo`); any `kennel` subcommand
//!   and flag works too (`chat-demo list`, `chat-demo start -e single`).
//!
//! A WebSocket frontend whose entry has `"web": <port>` also serves the browser chat page
//! (`web/`, see [`web`]; over https when the entry has `"ssl": true`).

use std::path::PathBuf;
use std::process::ExitCode;

mod game;
mod web;

fn main() -> ExitCode {
    // A server is started with flags only (`--id x --env e`); `chat-demo send --id x ...` is
    // the CLI.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let is_server = args.first().is_some_and(|a| a.starts_with('-'))
        && args.iter().any(|a| a == "--id" || a.starts_with("--id="));
    if !is_server {
        return kennel_master::cli_main_with(kennel_master::Defaults {
            dir: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
            bin: std::env::current_exe().ok(),
        });
    }
    match server() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one server on the runtime its config asks for (`"threads"`, single-threaded by
/// default).
fn server() -> anyhow::Result<()> {
    let app = kennel::App::from_args()?;
    game::setup(&app);
    let page = web::WebConfig::from_app(&app)?;
    app.runtime()?.block_on(async {
        if let Some(page) = page {
            web::start(page, app.client_tls()).await?;
        }
        app.run().await?;
        Ok(())
    })
}
