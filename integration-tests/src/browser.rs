//! Support for the browser tests (`tests/browser.rs`): finds `node` and Debian's Chromium,
//! gives the Node scripts of `integration-tests/browser/` their pinned `playwright-core`
//! (installed once into `<target>/browser-cache/playwright-core-<version>/`, the same place
//! `test.sh` fills), and runs those scripts with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::mydog::{run_bounded, target_dir};

/// Env var that, set to `1`, lets browser tests skip (instead of fail) without node/chromium.
pub const SKIP_ENV: &str = "KENNEL_SKIP_BROWSER";
/// Env var naming the Chromium binary (default [`DEFAULT_CHROMIUM`]).
pub const CHROMIUM_ENV: &str = "KENNEL_CHROMIUM";
/// Debian's `chromium` package installs it here.
pub const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";
/// How long `npm install` of playwright-core may take.
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

/// `integration-tests/browser/`: the Node scripts and their `package.json`.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// `chat-demo/web/`: the chat page's files.
pub fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../chat-demo/web")
}

/// The Chromium binary the tests drive.
pub fn chromium() -> PathBuf {
    std::env::var_os(CHROMIUM_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CHROMIUM))
}

/// `Ok` when `node` runs (and, with `need_chromium`, Chromium and `npm` too); else why not.
pub fn tools(need_chromium: bool) -> std::result::Result<(), String> {
    let mut needed = vec![("node", PathBuf::from("node"))];
    if need_chromium {
        needed.push(("npm", PathBuf::from("npm")));
        needed.push(("chromium", chromium()));
    }
    for (name, exe) in needed {
        match Command::new(&exe)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(format!(
                    "`{} --version` failed: {}",
                    exe.display(),
                    o.status
                ));
            }
            Err(e) => {
                let hint = if name == "chromium" {
                    format!(" (apt-get install chromium, or name it in ${CHROMIUM_ENV})")
                } else {
                    String::new()
                };
                return Err(format!(
                    "{name} ({}) is not runnable: {e}{hint}",
                    exe.display()
                ));
            }
        }
    }
    Ok(())
}

/// Whether the caller should skip: `false` when the tools are there; `true` (after saying
/// why) when they are missing and `KENNEL_SKIP_BROWSER=1`; otherwise panics with the reason.
pub fn skip_without_tools(need_chromium: bool) -> bool {
    let Err(why) = tools(need_chromium) else {
        return false;
    };
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!("skipping the browser test: {why} ({SKIP_ENV}=1)");
        return true;
    }
    panic!(
        "the browser test needs node, npm and Debian's chromium: {why}. `./test.sh` installs \
         them; set {SKIP_ENV}=1 to skip this test where they cannot be installed"
    );
}

/// The pinned playwright-core version of `browser/package.json`.
pub fn playwright_version() -> Result<String> {
    let path = scripts_dir().join("package.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    match json["dependencies"]["playwright-core"].as_str() {
        Some(v) if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.') => {
            Ok(v.to_string())
        }
        other => bail!(
            "{}: dependencies.playwright-core must be an exact version, not {other:?}",
            path.display()
        ),
    }
}

/// A dir holding `node_modules/playwright-core` at the pinned version: the cache, filled by
/// `npm install` on first use (staged beside it, then renamed, so a concurrent run or a killed
/// install never leaves a half-filled cache).
pub fn playwright_modules() -> Result<PathBuf> {
    let version = playwright_version()?;
    let root = target_dir()?.join("browser-cache");
    let dir = root.join(format!("playwright-core-{version}"));
    let installed = |d: &Path| -> bool {
        std::fs::read_to_string(d.join("node_modules/playwright-core/package.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|j| j["version"] == version.as_str())
    };
    if installed(&dir) {
        return Ok(dir);
    }
    std::fs::create_dir_all(&root)?;
    let staging = tempfile::tempdir_in(&root)?;
    std::fs::copy(
        scripts_dir().join("package.json"),
        staging.path().join("package.json"),
    )?;
    let mut npm = Command::new("npm");
    npm.args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(staging.path())
        .env("npm_config_update_notifier", "false");
    let out = run_bounded(npm, "npm install playwright-core", INSTALL_TIMEOUT)?;
    if !out.status.success() || !installed(staging.path()) {
        bail!(
            "npm install of playwright-core {version} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !installed(&dir) {
        let _ = std::fs::remove_dir_all(&dir);
        if std::fs::rename(staging.path(), &dir).is_err() && !installed(&dir) {
            bail!(
                "cannot move the playwright-core install to {}",
                dir.display()
            );
        }
    }
    Ok(dir)
}

/// Runs `node <args>` in `browser/` with `env`, killed (with its children) after `limit`.
pub fn run_node(args: &[&str], env: &[(&str, &Path)], limit: Duration) -> Result<Output> {
    let mut node = Command::new("node");
    node.args(args).current_dir(scripts_dir());
    for (k, v) in env {
        node.env(k, v);
    }
    run_bounded(node, &format!("node {}", args.join(" ")), limit)
}
