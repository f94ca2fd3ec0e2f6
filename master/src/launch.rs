//! How a server is started: [`plan_one`] decides its [`Launch`] (external: never; local: its
//! binary here; remote: through the launcher), [`Launch::command`] builds the command line
//! with its environment, and for servers on other hosts: which hosts are this machine, and
//! the commands that start and signal a server elsewhere (mydog's
//! `ssh <host> cd <dir> && <bin> ...`). The supervisor decides *when*; this module *how*.
//!
//! A server whose `host` is not this machine is started through the *launcher* of
//! master.json, an argv template (default [`kennel_config::settings::DEFAULT_LAUNCHER`]). Its
//! process (e.g. `ssh`) is the master's child: it lives as long as the remote server, its
//! output goes to `logs/<id>.log`, and its exit is the server's exit. A remote server is
//! stopped through the *remote signal* command (default
//! [`kennel_config::settings::DEFAULT_REMOTE_SIGNAL`]) with the pid it registered with; one
//! that never registered is stopped by signalling the launcher's process group. Both
//! templates are checked when the project loads (`kennel_config::settings::MasterSettings`).
//!
//! Placeholders: `{host}`, `{id}`, `{env}`, `{dir}` (the project directory, the same path on
//! every host as with mydog), `{bin}`, `{cmd}` (the whole server command line, shell-quoted),
//! and for the signal command `{pid}` and `{signal}` (`TERM`, `KILL`). An argv element that is
//! exactly one placeholder gets the raw value; inside a longer element (a remote shell line)
//! values are shell-quoted when they need it, `{cmd}` is inserted as it is.
//!
//! This machine is: `localhost`, a loopback or unspecified address that its interfaces carry
//! (127.0.0.1, ::1, 0.0.0.0, ::), any address of its interfaces, its hostname, and a name that
//! resolves to one of those. Any other host is remote (so is 127.0.0.2: it is on no
//! interface, which makes it handy for testing a launcher on one machine).

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::net::{IpAddr, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kennel_config::{
    CLI_SECRET_ENV, CLI_SECRET_FILE_ENV, MASTER_HOST_ENV, MASTER_PORT_ENV, MasterConfig, Project,
    SERVER_SECRET_ENV, SERVER_SECRET_FILE_ENV, ServerConfig,
};
use nix::sys::signal::Signal;
use tokio::process::Command;
use tracing::{info, warn};

use crate::MasterError;

/// How long a remote-signal command may run.
const REMOTE_SIGNAL_TIMEOUT: Duration = Duration::from_secs(15);

/// The launcher and remote-signal templates of master.json (`"launcher"`, `"remoteSignal"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Launcher {
    start: Vec<String>,
    signal: Vec<String>,
}

/// A value and how it goes into a longer argv element.
struct Var<'a> {
    name: &'a str,
    value: String,
    /// Shell-quote it inside a longer element (everything but `{cmd}`).
    quote: bool,
}

/// Replaces the placeholders of `template` (see the module docs).
fn fill(template: &[String], vars: &[Var<'_>]) -> Vec<String> {
    template
        .iter()
        .map(|elem| {
            if let Some(v) = vars.iter().find(|v| *elem == format!("{{{}}}", v.name)) {
                return v.value.clone();
            }
            let mut out = elem.clone();
            for v in vars {
                let key = format!("{{{}}}", v.name);
                if out.contains(&key) {
                    let value = if v.quote {
                        quote(&v.value)
                    } else {
                        v.value.clone()
                    };
                    out = out.replace(&key, &value);
                }
            }
            out
        })
        .collect()
}

/// `s` quoted for a POSIX shell when it needs it (a NUL byte, which no shell word can hold,
/// is dropped).
fn quote(s: &str) -> String {
    let clean: String = s.chars().filter(|c| *c != '\0').collect();
    shlex::try_quote(&clean)
        .map(|q| q.into_owned())
        .unwrap_or(clean)
}

impl Launcher {
    /// The templates of `master` (keys `launcher` and `remoteSignal`, checked when the
    /// project loaded; the defaults for the unset).
    pub(crate) fn of(master: &MasterConfig) -> Launcher {
        Launcher {
            start: master.settings.launcher.clone(),
            signal: master.settings.remote_signal.clone(),
        }
    }

    /// The argv that starts server `id` (`bin --id <id> --env <env> args...`) on `host`.
    pub(crate) fn start_argv(
        &self,
        host: &str,
        dir: &Path,
        bin: &Path,
        id: &str,
        env: &str,
        args: &[String],
    ) -> Vec<String> {
        let mut cmd = vec![
            bin.display().to_string(),
            "--id".to_owned(),
            id.to_owned(),
            "--env".to_owned(),
            env.to_owned(),
        ];
        cmd.extend(args.iter().cloned());
        let cmd = cmd.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ");
        let var = |name, value: String| Var {
            name,
            value,
            quote: true,
        };
        fill(
            &self.start,
            &[
                var("host", host.to_owned()),
                var("id", id.to_owned()),
                var("env", env.to_owned()),
                var("dir", dir.display().to_string()),
                var("bin", bin.display().to_string()),
                Var {
                    name: "cmd",
                    value: cmd,
                    quote: false,
                },
            ],
        )
    }

    /// The argv that sends `signal` (`TERM`, `KILL`) to process `pid` on `host`.
    pub(crate) fn signal_argv(&self, host: &str, pid: u32, signal: &str) -> Vec<String> {
        let var = |name, value: String| Var {
            name,
            value,
            quote: true,
        };
        fill(
            &self.signal,
            &[
                var("host", host.to_owned()),
                var("pid", pid.to_string()),
                var("signal", signal.to_owned()),
            ],
        )
    }
}

/// What identifies this machine (see the module docs).
#[derive(Debug, Clone, Default)]
pub(crate) struct ThisHost {
    names: HashSet<String>,
    addrs: HashSet<IpAddr>,
}

impl ThisHost {
    /// Reads the hostname and the interfaces' addresses.
    pub(crate) fn detect() -> ThisHost {
        let mut me = ThisHost::default();
        me.names.insert("localhost".to_owned());
        if let Ok(name) = nix::unistd::gethostname()
            && let Some(name) = name.to_str()
        {
            let name = name.to_ascii_lowercase();
            if let Some((short, _)) = name.split_once('.') {
                me.names.insert(short.to_owned());
            }
            me.names.insert(name);
        }
        me.addrs.insert(IpAddr::from([127, 0, 0, 1]));
        me.addrs.insert(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]));
        if let Ok(ifaces) = nix::ifaddrs::getifaddrs() {
            for iface in ifaces {
                let Some(addr) = iface.address else { continue };
                if let Some(v4) = addr.as_sockaddr_in() {
                    me.addrs.insert(IpAddr::V4(v4.ip()));
                } else if let Some(v6) = addr.as_sockaddr_in6() {
                    me.addrs.insert(IpAddr::V6(v6.ip()));
                }
            }
        }
        me
    }

    fn is_mine(&self, ip: IpAddr) -> bool {
        ip.is_unspecified() || self.addrs.contains(&ip)
    }

    /// Whether `host` is this machine without asking DNS: an address of this machine,
    /// `localhost` or the hostname.
    pub(crate) fn is_known_local(&self, host: &str) -> bool {
        let h = host.trim_start_matches('[').trim_end_matches(']');
        match h.parse::<IpAddr>() {
            Ok(ip) => self.is_mine(ip),
            Err(_) => self.names.contains(&h.to_ascii_lowercase()),
        }
    }

    /// Whether `host` is this machine. Names other than `localhost` and the hostname are
    /// resolved (getaddrinfo); one that does not resolve is remote.
    pub(crate) fn is_local(&self, host: &str) -> bool {
        let h = host.trim_start_matches('[').trim_end_matches(']');
        if self.is_known_local(h) {
            return true;
        }
        if h.parse::<IpAddr>().is_ok() {
            return false;
        }
        (h.to_ascii_lowercase().as_str(), 0)
            .to_socket_addrs()
            .is_ok_and(|mut addrs| addrs.any(|a| self.is_mine(a.ip())))
    }
}

// ---------------------------------------------------------------- starting a server

/// How the master starts a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Launch {
    /// Never: it is started by hand or by another supervisor, and only registers.
    External,
    /// `bin` on this machine.
    Local(PathBuf),
    /// `bin` on another host, through the launcher command.
    Remote(PathBuf),
}

/// How each server is started (see [`plan_one`]).
pub(crate) fn plan(
    project: &Project,
    override_bin: Option<&Path>,
    external: &[String],
    this_host: &ThisHost,
) -> Result<Vec<Launch>, MasterError> {
    project
        .servers
        .iter()
        .map(|s| plan_one(project, s, override_bin, external, this_host))
        .collect()
}

/// How server `s` is started: not at all when it is external (config key or `external`),
/// else its binary (`override_bin` if given, else its configured one) here or, when its host
/// is another machine, through the launcher. A local binary is checked to exist and be
/// executable; a remote one is not (it lives on the other host).
pub(crate) fn plan_one(
    project: &Project,
    s: &ServerConfig,
    override_bin: Option<&Path>,
    external: &[String],
    this_host: &ThisHost,
) -> Result<Launch, MasterError> {
    if s.settings.external || external.contains(&s.info.id) {
        return Ok(Launch::External);
    }
    let path = match override_bin {
        Some(b) => b.to_path_buf(),
        None => project.server_bin(s).ok_or_else(|| MasterError::NoBinary {
            id: s.info.id.clone(),
        })?,
    };
    if !this_host.is_local(&s.info.host) {
        return Ok(Launch::Remote(path));
    }
    check_bin(&s.info.id, &path)?;
    Ok(Launch::Local(path))
}

fn check_bin(id: &str, path: &Path) -> Result<(), MasterError> {
    match std::fs::metadata(path) {
        Err(_) => Err(MasterError::MissingBinary {
            id: id.to_owned(),
            path: path.to_path_buf(),
        }),
        Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => {
            Err(MasterError::NotExecutable {
                id: id.to_owned(),
                path: path.to_path_buf(),
            })
        }
        Ok(_) => Ok(()),
    }
}

/// What every server's command line shares: env, project directory, server secret and the
/// address the master listens on.
#[derive(Debug)]
pub(crate) struct SpawnEnv {
    pub(crate) env: String,
    pub(crate) dir: PathBuf,
    pub(crate) server_secret: String,
    pub(crate) master_host: String,
    pub(crate) master_port: u16,
}

impl Launch {
    /// The command that starts server `config` this way, in the project directory, in a
    /// process group of its own, with stdin `/dev/null` and its output appended to `log`.
    pub(crate) fn command(
        &self,
        config: &ServerConfig,
        env: &SpawnEnv,
        launcher: &Launcher,
        log: File,
    ) -> io::Result<Command> {
        let log_err = log.try_clone()?;
        let mut cmd = match self {
            Launch::Local(bin) => {
                let mut cmd = Command::new(bin);
                cmd.arg("--id")
                    .arg(&config.info.id)
                    .arg("--env")
                    .arg(&env.env)
                    .args(&config.args);
                cmd
            }
            Launch::Remote(bin) => {
                let argv = launcher.start_argv(
                    &config.info.host,
                    &env.dir,
                    bin,
                    &config.info.id,
                    &env.env,
                    &config.args,
                );
                let mut cmd = Command::new(&argv[0]);
                cmd.args(&argv[1..]);
                cmd
            }
            Launch::External => {
                return Err(io::Error::other("external servers are not started"));
            }
        };
        cmd.current_dir(&env.dir)
            .env(SERVER_SECRET_ENV, &env.server_secret)
            .env_remove(SERVER_SECRET_FILE_ENV)
            .env_remove(CLI_SECRET_ENV)
            .env_remove(CLI_SECRET_FILE_ENV)
            // Servers dial the address this master really listens on.
            .env(MASTER_HOST_ENV, &env.master_host)
            .env(MASTER_PORT_ENV, env.master_port.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false);
        Ok(cmd)
    }
}

/// Runs the remote-signal command that sends `sig` to process `pid` of server `id` on `host`,
/// in the background: bounded by [`REMOTE_SIGNAL_TIMEOUT`], its output appended to `log`,
/// failures logged.
pub(crate) fn signal_remote(
    launcher: &Launcher,
    id: &str,
    host: &str,
    pid: u32,
    sig: Signal,
    log: io::Result<File>,
) {
    let argv = launcher.signal_argv(host, pid, sig.as_str().trim_start_matches("SIG"));
    info!(server = %id, remote_pid = pid, host, ?argv, "signalling the remote server");
    let id = id.to_owned();
    tokio::spawn(async move {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).stdin(Stdio::null()).kill_on_drop(true);
        if let Ok(log) = log
            && let Ok(err) = log.try_clone()
        {
            cmd.stdout(log).stderr(err);
        }
        match tokio::time::timeout(REMOTE_SIGNAL_TIMEOUT, cmd.status()).await {
            Ok(Ok(s)) if s.success() => {}
            Ok(Ok(s)) => {
                warn!(server = %id, ?argv, status = %s, "the remote signal command failed")
            }
            Ok(Err(e)) => {
                warn!(server = %id, ?argv, cause = %e, "cannot run the remote signal command")
            }
            Err(_) => {
                warn!(server = %id, ?argv, "the remote signal command did not finish in time")
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use kennel_config::settings::MasterSettings;

    fn master(settings: MasterSettings) -> MasterConfig {
        MasterConfig {
            id: "m".into(),
            host: "127.0.0.1".into(),
            port: 1,
            bin: None,
            server_secret: None,
            cli_secret: None,
            settings,
            extra: serde_json::Map::new(),
        }
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn default_launcher_is_ssh_with_a_quoted_command() {
        let l = Launcher::of(&master(MasterSettings::default()));
        let argv = l.start_argv(
            "game2",
            Path::new("/srv/my game"),
            Path::new("/srv/my game/bin/server"),
            "chat-server-1",
            "production",
            &["--room".into(), "a b".into()],
        );
        assert_eq!(
            argv,
            [
                "ssh",
                "game2",
                "cd '/srv/my game' && '/srv/my game/bin/server' --id chat-server-1 --env production --room 'a b'"
            ]
        );
        assert_eq!(
            l.signal_argv("game2", 4242, "TERM"),
            ["ssh", "game2", "kill -TERM 4242"]
        );
    }

    #[test]
    fn custom_templates() {
        let l = Launcher::of(&master(MasterSettings {
            launcher: argv(&[
                "docker", "exec", "{host}", "{bin}", "--id", "{id}", "--env", "{env}",
            ]),
            remote_signal: argv(&["docker", "kill", "-s", "{signal}", "{host}"]),
            ..MasterSettings::default()
        }));
        assert_eq!(
            l.start_argv("box 1", Path::new("/p"), Path::new("/b in"), "x", "e", &[]),
            [
                "docker", "exec", "box 1", "/b in", "--id", "x", "--env", "e"
            ]
        );
        assert_eq!(
            l.signal_argv("box", 1, "KILL"),
            ["docker", "kill", "-s", "KILL", "box"]
        );
    }

    #[test]
    fn this_host() {
        let me = ThisHost::detect();
        for local in [
            "127.0.0.1",
            "localhost",
            "LOCALHOST",
            "::1",
            "[::1]",
            "0.0.0.0",
        ] {
            assert!(me.is_local(local), "{local}");
        }
        let name = nix::unistd::gethostname().unwrap();
        assert!(me.is_local(name.to_str().unwrap()));
        for remote in ["127.0.0.2", "203.0.113.9"] {
            assert!(!me.is_local(remote), "{remote}");
        }
    }
}
