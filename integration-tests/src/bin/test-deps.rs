//! Fills the npm caches the tests use before `cargo test` runs (called by `test.sh`): the
//! pinned playwright-core of the browser tests (`target/browser-cache/`) and the mydog peer's
//! `node_modules` (`target/mydog-peer-cache/`). Silent when both are filled; `KENNEL_SKIP_BROWSER=1`
//! and `KENNEL_SKIP_MYDOG=1` skip their part.

use anyhow::{Context, Result};
use integration_tests::{browser, mydog};

fn skip(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

fn main() -> std::process::ExitCode {
    match prepare() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("test-deps: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn prepare() -> Result<()> {
    if !skip(browser::SKIP_ENV) {
        browser::tools(true)
            .map_err(anyhow::Error::msg)
            .with_context(|| {
                format!(
                    "the browser tests need node, npm and chromium (or {}=1)",
                    browser::SKIP_ENV
                )
            })?;
        browser::playwright_modules().context("installing playwright-core")?;
    }
    if !skip(mydog::SKIP_ENV) {
        mydog::node_and_npm()
            .map_err(anyhow::Error::msg)
            .with_context(|| {
                format!(
                    "the mydog comparison needs node and npm (or {}=1)",
                    mydog::SKIP_ENV
                )
            })?;
        mydog::prepare().context("installing the mydog peer's node_modules")?;
    }
    Ok(())
}
