//! Environment-variable overrides. Every test runs inside `figment::Jail`, which serializes
//! access to the process environment and restores it afterwards.

mod common;

use common::*;
use figment::Jail;
use kennel_config::{ConfigError, Project, Secrets};

/// Runs `f` with the given environment variables set (and restored afterwards).
#[allow(clippy::result_large_err)] // figment::Error, in the jail closure's signature
fn with_env<T>(vars: &[(&str, &str)], f: impl FnOnce() -> T) -> T {
    let mut out = None;
    Jail::expect_with(|jail| {
        // Start from a clean slate whatever the caller's environment holds.
        jail.clear_env();
        for (k, v) in vars {
            jail.set_env(k, v);
        }
        out = Some(f());
        Ok(())
    });
    out.unwrap()
}

#[test]
fn master_port_and_host_come_from_the_environment() {
    let dir = project(&[]);
    let p = with_env(
        &[
            ("KENNEL_MASTER_PORT", "3999"),
            ("KENNEL_MASTER_HOST", "10.1.2.3"),
        ],
        || load(dir.path()).unwrap(),
    );
    assert_eq!((p.master.host.as_str(), p.master.port), ("10.1.2.3", 3999));
    // Untouched keys still come from the file.
    assert_eq!(p.master.id, "master-server-1");
    // And the override applies to whichever environment is loaded.
    let prod = with_env(&[("KENNEL_MASTER_PORT", "3998")], || {
        Project::load(dir.path(), "production").unwrap()
    });
    assert_eq!(
        (prod.master.host.as_str(), prod.master.port),
        ("10.0.0.1", 3998)
    );
    for host in ["::1", "localhost", "game-1.internal"] {
        let p = with_env(&[("KENNEL_MASTER_HOST", host)], || {
            load(dir.path()).unwrap()
        });
        assert_eq!(p.master.host, host);
    }
    // Without the variables the file wins.
    let p = with_env(&[], || load(dir.path()).unwrap());
    assert_eq!((p.master.host.as_str(), p.master.port), ("127.0.0.1", 3005));
}

#[test]
fn master_port_override_can_supply_a_missing_port() {
    let dir = project(&[("master.json", r#"{"development": {"id": "m"}}"#)]);
    let p = with_env(&[("KENNEL_MASTER_PORT", "3100")], || {
        load(dir.path()).unwrap()
    });
    assert_eq!(p.master.port, 3100);
}

#[test]
fn overridden_master_port_is_validated() {
    let dir = project(&[]);
    let err = with_env(&[("KENNEL_MASTER_PORT", "70000")], || {
        load(dir.path()).unwrap_err()
    });
    let msg = err.to_string();
    assert!(msg.contains("config/sys/master.json"), "{msg}");
    assert!(msg.contains("70000 (from KENNEL_MASTER_PORT)"), "{msg}");

    let err = with_env(&[("KENNEL_MASTER_PORT", "abc")], || {
        load(dir.path()).unwrap_err()
    });
    assert!(err.to_string().contains("KENNEL_MASTER_PORT"), "{err}");

    // Moved onto a server's port: the collision is caught.
    let err = with_env(&[("KENNEL_MASTER_PORT", "4101")], || {
        load(dir.path()).unwrap_err()
    });
    let msg = err.to_string();
    assert!(
        msg.contains("entry chat[0]") && msg.contains("127.0.0.1:4101"),
        "{msg}"
    );
    assert!(msg.contains("the master"), "{msg}");
}

#[test]
fn secrets_env_var_wins_over_master_config() {
    let dir = project(&[(
        "master.json",
        r#"{"development": {"id": "m", "port": 3005, "serverSecret": "cfg-s", "cliSecret": "cfg-c"}}"#,
    )]);
    let s = with_env(&[("KENNEL_SERVER_SECRET", "env-s")], || {
        let p = load(dir.path()).unwrap();
        Secrets::resolve(&p, false).unwrap()
    });
    assert_eq!((s.server.as_str(), s.cli.as_str()), ("env-s", "cfg-c"));
}

#[test]
fn production_needs_explicit_secrets() {
    let dir = project(&[]);
    let err = with_env(&[], || {
        let p = Project::load(dir.path(), "production").unwrap();
        Secrets::resolve(&p, true).unwrap_err()
    });
    assert!(
        matches!(err, ConfigError::ProductionSecret { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("KENNEL_SERVER_SECRET"), "{err}");
    assert!(!dir.path().join(".kennel").exists());

    // `openssl rand -hex 16`, twice.
    let (strong_s, strong_c) = (
        "3b5d5c3712955042212316173ccf37be",
        "a87ff679a2f3e71d9181a67b7542122c",
    );
    let s = with_env(
        &[
            ("KENNEL_SERVER_SECRET", strong_s),
            ("KENNEL_CLI_SECRET", strong_c),
        ],
        || {
            let p = Project::load(dir.path(), "production").unwrap();
            Secrets::resolve(&p, true).unwrap()
        },
    );
    assert_eq!((s.server.as_str(), s.cli.as_str()), (strong_s, strong_c));

    // Explicit but weak: refused, saying how to make a good one.
    let err = with_env(
        &[
            ("KENNEL_SERVER_SECRET", strong_s),
            ("KENNEL_CLI_SECRET", "letmein"),
        ],
        || {
            let p = Project::load(dir.path(), "production").unwrap();
            Secrets::resolve(&p, true).unwrap_err()
        },
    );
    assert!(matches!(err, ConfigError::WeakSecret { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("CLI secret from KENNEL_CLI_SECRET is too weak")
            && msg.contains("openssl rand -hex 16"),
        "{msg}"
    );

    // From a file (systemd LoadCredential style), mode 0400.
    let file = dir.path().join("server-secret");
    std::fs::write(&file, format!("{strong_s}\n")).unwrap();
    let mut perms = std::fs::metadata(&file).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o400);
    std::fs::set_permissions(&file, perms).unwrap();
    let s = with_env(
        &[
            ("KENNEL_SERVER_SECRET_FILE", file.to_str().unwrap()),
            ("KENNEL_CLI_SECRET", strong_c),
        ],
        || {
            let p = Project::load(dir.path(), "production").unwrap();
            Secrets::resolve(&p, true).unwrap()
        },
    );
    assert_eq!(s.server, strong_s);
}

#[test]
fn secret_files_from_systemd_credentials_may_show_group_bits() {
    use std::os::unix::fs::PermissionsExt;
    let dir = project(&[]);
    let creds = dir.path().join("credentials/game-master.service");
    std::fs::create_dir_all(&creds).unwrap();
    let file = creds.join("server-secret");
    std::fs::write(&file, "3b5d5c3712955042212316173ccf37be").unwrap();
    // What systemd leaves when the unit has a User=: 0400 plus an ACL for that user, whose
    // mask shows as the group bits.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o440)).unwrap();
    let path = file.to_str().unwrap();
    let resolve = |vars: &[(&str, &str)]| {
        with_env(vars, || {
            let p = load(dir.path()).unwrap();
            Secrets::resolve(&p, false)
        })
    };
    let err = resolve(&[
        ("KENNEL_SERVER_SECRET_FILE", path),
        ("KENNEL_CLI_SECRET", "c"),
    ])
    .unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
    let s = resolve(&[
        ("KENNEL_SERVER_SECRET_FILE", path),
        ("KENNEL_CLI_SECRET", "c"),
        ("CREDENTIALS_DIRECTORY", creds.to_str().unwrap()),
    ])
    .unwrap();
    assert_eq!(s.server, "3b5d5c3712955042212316173ccf37be");
}
