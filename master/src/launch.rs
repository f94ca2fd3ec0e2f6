//! Servers on other hosts: which hosts are this machine, and the commands that start and
//! signal a server elsewhere (mydog's `ssh <host> cd <dir> && <bin> ...`).
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
use std::net::{IpAddr, ToSocketAddrs};
use std::path::Path;

use kennel_config::MasterConfig;

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
