//! The commands that act on a running master over the CLI link: `list`, `stop`, `restart`,
//! `remove`, `start <ids>`, `send`, and `logs` (which reads the log files directly).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{
    Defaults, POLL, ProjectArgs, TargetArgs, connect, expand_ids, load_running_project, out,
};
use crate::client::MasterClient;
use crate::master::LOGS_DIR;
use crate::state::ServerState;
use crate::table::{ServerRow, render_table, rows};

/// How long `kennel stop` waits for the master to report the cluster stopped.
const STOP_WAIT: Duration = Duration::from_secs(60);
/// `list --watch` redraw period.
const WATCH_PERIOD: Duration = Duration::from_secs(1);

/// `kennel send`: prints each server's answer (`id: reply`), error or timeout; exit code 1
/// when any server did not answer successfully.
pub(super) async fn send(
    target: TargetArgs,
    ids: Vec<String>,
    types: Vec<String>,
    timeout: f64,
    json: bool,
    args: Vec<String>,
    defaults: &Defaults,
) -> Result<ExitCode> {
    if !(timeout > 0.0 && timeout <= 120.0) {
        anyhow::bail!("--timeout must be more than 0 and at most 120 seconds");
    }
    let ids = expand_ids(&ids)?;
    let mut master = connect(&target, defaults).await?;
    let reply = master
        .send(&ids, &types, &args, Duration::from_secs_f64(timeout))
        .await?;
    let failed = reply.results.iter().filter(|r| !r.ok).count();
    if json {
        let rows: Vec<serde_json::Value> = reply
            .results
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id,
                    "ok": r.ok,
                    "reply": r.ok.then_some(&r.reply),
                    "error": (!r.ok).then_some(&r.error),
                    "timedOut": r.timed_out,
                })
            })
            .collect();
        out(&format!("{}\n", serde_json::to_string_pretty(&rows)?));
    } else {
        let mut text = String::new();
        for r in &reply.results {
            let body = if r.ok {
                r.reply.clone()
            } else if r.timed_out {
                r.error.clone()
            } else {
                format!("error: {}", r.error)
            };
            let mut lines = body.lines();
            text.push_str(&format!("{}: {}\n", r.id, lines.next().unwrap_or_default()));
            for l in lines {
                text.push_str(&format!("  {l}\n"));
            }
        }
        out(&text);
    }
    if failed > 0 {
        crate::console::err(&format!(
            "kennel: {failed} of {} servers did not answer successfully\n",
            reply.results.len()
        ));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `kennel list [--json] [--watch]`: the master's server table.
pub(super) async fn list(
    target: TargetArgs,
    json: bool,
    watch: bool,
    defaults: &Defaults,
) -> Result<ExitCode> {
    let mut master = connect(&target, defaults).await?;
    let terminal = std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(WATCH_PERIOD);
    loop {
        tick.tick().await;
        let rows = rows(&master.list().await?);
        let text = if json {
            format!("{}\n", serde_json::to_string_pretty(&rows)?)
        } else {
            render_table(&rows)
        };
        if !watch {
            out(&text);
            return Ok(ExitCode::SUCCESS);
        }
        if terminal {
            // Home the cursor and clear the screen, then draw.
            out(&format!(
                "\x1b[H\x1b[2J{}  (every 1 s; Ctrl-C to quit)\n{text}",
                master.addr()
            ));
        } else {
            out(&format!("{text}\n"));
        }
    }
}

/// The rows of the master's table, by id.
async fn table(master: &mut MasterClient) -> Result<Vec<ServerRow>> {
    Ok(rows(&master.list().await?))
}

/// Fails with one line naming the first id the master does not know.
fn check_known(rows: &[ServerRow], ids: &[String]) -> Result<()> {
    if let Some(id) = ids.iter().find(|id| !rows.iter().any(|r| r.id == **id)) {
        anyhow::bail!(
            "unknown server id {id:?} (servers: {})",
            rows.iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Polls the master's table until `done` holds for the rows, or `within` passes.
async fn wait_rows(
    master: &mut MasterClient,
    within: Duration,
    what: &str,
    mut done: impl FnMut(&[ServerRow]) -> bool,
) -> Result<Vec<ServerRow>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let rows = table(master).await?;
        if done(&rows) {
            return Ok(rows);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("{what}: not done after {} s", within.as_secs());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `kennel restart <ids>`: one server at a time, each once the previous one runs again with
/// a new pid and a live master link.
pub(super) async fn restart(
    target: TargetArgs,
    ids: Vec<String>,
    within: Duration,
    defaults: &Defaults,
) -> Result<ExitCode> {
    let ids = expand_ids(&ids)?;
    let mut master = connect(&target, defaults).await?;
    check_known(&table(&mut master).await?, &ids)?;
    for id in &ids {
        let old = table(&mut master)
            .await?
            .into_iter()
            .find(|r| r.id == *id)
            .and_then(|r| r.pid);
        let ack = master.restart(id).await?;
        out(&format!("kennel: {ack}\n"));
        let rows = wait_rows(
            &mut master,
            within,
            &format!("{id} did not re-register"),
            |rows| {
                rows.iter().any(|r| {
                    r.id == *id
                        && r.state == ServerState::Running
                        && r.pid.is_some()
                        && r.pid != old
                })
            },
        )
        .await?;
        let pid = rows.iter().find(|r| r.id == *id).and_then(|r| r.pid);
        out(&format!(
            "kennel: {id} restarted and registered (pid {})\n",
            pid.unwrap_or_default()
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// `kennel remove <ids> --type <types>`: asks the master, then waits until none of them runs.
pub(super) async fn remove(
    target: TargetArgs,
    ids: Vec<String>,
    types: Vec<String>,
    defaults: &Defaults,
) -> Result<ExitCode> {
    let ids = expand_ids(&ids)?;
    let mut master = connect(&target, defaults).await?;
    let rows = table(&mut master).await?;
    check_known(&rows, &ids)?;
    if let Some(t) = types
        .iter()
        .find(|t| !rows.iter().any(|r| r.server_type == **t))
    {
        let mut known: Vec<&str> = rows.iter().map(|r| r.server_type.as_str()).collect();
        known.dedup();
        anyhow::bail!("unknown server type {t:?} (types: {})", known.join(", "));
    }
    let ack = master.remove(&ids, &types).await?;
    out(&format!("kennel: {ack}\n"));
    let targets: Vec<String> = rows
        .iter()
        .filter(|r| ids.contains(&r.id) || types.contains(&r.server_type))
        .map(|r| r.id.clone())
        .collect();
    wait_rows(&mut master, STOP_WAIT, "removing", |rows| {
        rows.iter()
            .filter(|r| targets.contains(&r.id))
            .all(|r| r.pid.is_none() || r.state == ServerState::External)
    })
    .await?;
    out(&format!("kennel: removed {}\n", targets.join(", ")));
    Ok(ExitCode::SUCCESS)
}

/// `kennel start <ids>` on a running master.
pub(super) async fn start_ids(
    target: TargetArgs,
    ids: Vec<String>,
    defaults: &Defaults,
) -> Result<ExitCode> {
    let ids = expand_ids(&ids)?;
    let mut master = connect(&target, defaults).await?;
    // The master answers once every process is spawned (or says why one is not).
    let ack = master.start(&ids).await?;
    out(&format!("kennel: {ack}\n"));
    Ok(ExitCode::SUCCESS)
}

/// `kennel logs <id> [-f] [-n N]`: the end of `logs/<id>.log` (read from the project
/// directory, not through the master).
pub(super) async fn logs(
    args: ProjectArgs,
    id: String,
    follow: bool,
    lines: usize,
    defaults: &Defaults,
) -> Result<ExitCode> {
    let project = load_running_project(&args, defaults)?;
    let path = crate::logs::log_path(&project.dir.join(LOGS_DIR), &id);
    if project.server(&id).is_none() && !path.exists() {
        anyhow::bail!(
            "unknown server id {id:?}: not in the {:?} config of {}",
            project.env,
            project.dir.display()
        );
    }
    let from = crate::logs::current_len(&path);
    let last = match crate::logs::last_log_lines(&path, lines) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut text = String::new();
    for l in last {
        text.push_str(&l);
        text.push('\n');
    }
    out(&text);
    if follow {
        crate::logs::follow(path, from).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// `kennel stop [-y]`: asks (on a terminal), then waits until the master has stopped the
/// cluster and closed the link.
pub(super) async fn stop(target: TargetArgs, yes: bool, defaults: &Defaults) -> Result<ExitCode> {
    let mut master = connect(&target, defaults).await?;
    let addr = master.addr().to_owned();
    if !yes && std::io::stdin().is_terminal() {
        let question = format!("Stop every server of the cluster at {addr}? [y/N] ");
        let answer = tokio::task::spawn_blocking(move || {
            crate::console::err(&question);
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await
        .context("reading the answer")?
        .context("reading the answer")?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            crate::console::err("kennel: not stopped\n");
            return Ok(ExitCode::FAILURE);
        }
    }
    let ack = master.stop().await?;
    out(&format!("kennel: {ack} at {addr}\n"));
    master
        .closed(STOP_WAIT)
        .await
        .context("the master did not finish stopping")?;
    out("kennel: cluster stopped\n");
    Ok(ExitCode::SUCCESS)
}
