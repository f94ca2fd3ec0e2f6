//! The commands that read or write the project files alone, with no master: `config`
//! (the cluster as the master would run it), `init` (a new project), `cmd` (route constants
//! for clients).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{Defaults, ProjectArgs, host_port, load_project, out};

/// `kennel init [DIR]`: a new game project (see [`crate::scaffold`]).
pub(super) fn init(
    dir: Option<PathBuf>,
    name: Option<String>,
    kennel: Option<String>,
    force: bool,
) -> Result<ExitCode> {
    let dir = dir.unwrap_or_else(|| PathBuf::from("."));
    let dep = kennel.unwrap_or_else(crate::scaffold::default_kennel_dependency);
    let files = crate::scaffold::init(&dir, name.as_deref(), &dep, force)?;
    out(&format!(
        "kennel: created {} files in {}\nkennel: next: cd {} && cargo build && kennel start\n",
        files.len(),
        dir.display(),
        dir.display()
    ));
    Ok(ExitCode::SUCCESS)
}

/// `kennel cmd <lang>`: route constants for a client (see [`crate::codegen`]).
pub(super) fn cmd(
    args: ProjectArgs,
    lang: crate::codegen::Lang,
    output: Option<PathBuf>,
    defaults: &Defaults,
) -> Result<ExitCode> {
    let project = load_project(&args, defaults)?;
    let text = crate::codegen::generate(lang, &project.routes, &project.route_notes);
    match output {
        Some(path) => std::fs::write(&path, text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => out(&text),
    }
    Ok(ExitCode::SUCCESS)
}

/// One server as `kennel config --json` prints it.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigRow {
    id: String,
    #[serde(rename = "type")]
    server_type: String,
    host: String,
    port: u16,
    frontend: bool,
    client_port: Option<u16>,
    bin: Option<String>,
    args: Vec<String>,
    restart: String,
    /// `local`, `remote` (through the launcher) or `external`.
    launch: String,
}

/// `kennel config [--json]`: the cluster as the master would run it.
pub(super) fn config(
    args: ProjectArgs,
    bin: Option<PathBuf>,
    json: bool,
    defaults: &Defaults,
) -> Result<ExitCode> {
    let project = load_project(&args, defaults)?;
    let bin = bin.or_else(|| defaults.bin.clone());
    let this_host = crate::launch::ThisHost::detect();
    let mut rows = Vec::new();
    for s in &project.servers {
        let policy = s.settings.restart;
        let launch = if s.settings.external {
            "external"
        } else if this_host.is_local(&s.info.host) {
            "local"
        } else {
            "remote"
        };
        rows.push(ConfigRow {
            id: s.info.id.clone(),
            server_type: s.info.server_type.clone(),
            host: s.info.host.clone(),
            port: s.info.port,
            frontend: s.info.frontend,
            client_port: s.info.client_port,
            bin: bin
                .clone()
                .or_else(|| project.server_bin(s))
                .map(|b| b.display().to_string()),
            args: s.args.clone(),
            restart: policy.name().to_owned(),
            launch: launch.to_owned(),
        });
    }
    if json {
        out(&format!("{}\n", serde_json::to_string_pretty(&rows)?));
        return Ok(ExitCode::SUCCESS);
    }
    out(&format!(
        "env {} of {} (master {} at {})\n",
        project.env,
        project.dir.display(),
        project.master.id,
        host_port(&project.master.host, project.master.port)
    ));
    let header = [
        "ID",
        "TYPE",
        "HOST",
        "PORT",
        "CLIENT_PORT",
        "LAUNCH",
        "RESTART",
        "BIN",
        "ARGS",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.server_type.clone(),
                r.host.clone(),
                r.port.to_string(),
                r.client_port
                    .map_or_else(|| "-".to_owned(), |p| p.to_string()),
                r.launch.clone(),
                r.restart.clone(),
                r.bin.clone().unwrap_or_else(|| "-".to_owned()),
                r.args.join(" "),
            ]
        })
        .collect();
    out(&crate::table::align(&header, &cells));
    Ok(ExitCode::SUCCESS)
}
