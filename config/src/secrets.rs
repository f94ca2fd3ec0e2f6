//! The cluster's two shared secrets (server and CLI) and where they come from.
//!
//! Each secret is resolved on its own, first found wins:
//! 1. the environment variable (`KENNEL_SERVER_SECRET` / `KENNEL_CLI_SECRET`);
//! 2. the file the `..._FILE` variable names (`KENNEL_SERVER_SECRET_FILE` /
//!    `KENNEL_CLI_SECRET_FILE`; e.g. a systemd `LoadCredential=`), one trailing newline
//!    stripped;
//! 3. the master config key (`serverSecret` / `cliSecret`) of the loaded environment;
//! 4. `<project>/.kennel/secrets.json` (`{"server": "...", "cli": "..."}`), except in
//!    `production`, which refuses to run on stored/generated secrets;
//! 5. when allowed (the master starting), 32 random bytes as hex, written to that file
//!    (directory mode 0700, file mode 0600, atomically; `.kennel/.gitignore` holds `*`).
//!
//! Empty secrets are rejected wherever they come from. A file holding secrets (2, 4) is
//! refused when its group or others have any access, as ssh refuses a private key (except in
//! systemd's `$CREDENTIALS_DIRECTORY`, private to the unit). In
//! `production` a secret under [`MIN_SECRET_BITS`] of estimated strength ([`secret_bits`]) is
//! refused, with a command that makes a good one.

use std::env::VarError;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;
use serde_json::{Map, Value};

use crate::error::{ConfigError, Format};
use crate::{Project, Secrets};

/// Environment variable holding the server secret.
pub const SERVER_SECRET_ENV: &str = "KENNEL_SERVER_SECRET";
/// Environment variable holding the CLI secret.
pub const CLI_SECRET_ENV: &str = "KENNEL_CLI_SECRET";
/// Environment variable naming a file that holds the server secret.
pub const SERVER_SECRET_FILE_ENV: &str = "KENNEL_SERVER_SECRET_FILE";
/// Environment variable naming a file that holds the CLI secret.
pub const CLI_SECRET_FILE_ENV: &str = "KENNEL_CLI_SECRET_FILE";
/// The least estimated strength ([`secret_bits`]) of a secret `production` accepts.
pub const MIN_SECRET_BITS: u32 = 128;
/// The environment in which secrets must be given explicitly (env var or master config).
pub const PRODUCTION_ENV: &str = "production";
/// Where generated secrets are kept, relative to the project directory.
pub const SECRETS_FILE: &str = ".kennel/secrets.json";

/// Which of the two secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretKind {
    /// The secret servers use (master link and peer links).
    Server,
    /// The secret the operator CLI uses.
    Cli,
}

impl SecretKind {
    /// The environment variable that sets it.
    pub fn env_var(self) -> &'static str {
        match self {
            SecretKind::Server => SERVER_SECRET_ENV,
            SecretKind::Cli => CLI_SECRET_ENV,
        }
    }

    /// The environment variable naming a file that holds it.
    pub fn file_env_var(self) -> &'static str {
        match self {
            SecretKind::Server => SERVER_SECRET_FILE_ENV,
            SecretKind::Cli => CLI_SECRET_FILE_ENV,
        }
    }

    /// The master config key that sets it.
    pub fn config_key(self) -> &'static str {
        match self {
            SecretKind::Server => "serverSecret",
            SecretKind::Cli => "cliSecret",
        }
    }

    /// Its key in `.kennel/secrets.json`.
    pub fn file_key(self) -> &'static str {
        match self {
            SecretKind::Server => "server",
            SecretKind::Cli => "cli",
        }
    }
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecretKind::Server => "server",
            SecretKind::Cli => "CLI",
        })
    }
}

impl Secrets {
    /// Resolves both secrets for `project` (see the module docs for the order). With
    /// `generate` (the master), a secret found nowhere is generated and stored in
    /// `.kennel/secrets.json`; without it (servers, CLI) that is an error. In `production`
    /// a secret not given by environment variable or master config is always an error.
    pub fn resolve(project: &Project, generate: bool) -> Result<Secrets, ConfigError> {
        resolve_with(project, generate, |k| std::env::var(k))
    }

    /// The secrets file of the project in `dir`: `<dir>/.kennel/secrets.json`.
    pub fn file_path(dir: &Path) -> PathBuf {
        dir.join(SECRETS_FILE)
    }

    /// Returns the secret of one kind.
    pub fn get(&self, kind: SecretKind) -> &str {
        match kind {
            SecretKind::Server => &self.server,
            SecretKind::Cli => &self.cli,
        }
    }
}

/// [`Secrets::resolve`] with the environment lookup injected (for tests).
pub(crate) fn resolve_with(
    project: &Project,
    generate: bool,
    lookup: impl Fn(&str) -> Result<String, VarError>,
) -> Result<Secrets, ConfigError> {
    let env = project.env.as_str();
    let bad = |origin: String, kind, reason| ConfigError::BadSecret {
        origin,
        env: env.to_owned(),
        secret: kind,
        reason,
    };
    let kinds = [SecretKind::Server, SecretKind::Cli];
    let mut found: [Option<String>; 2] = [None, None];
    // Where each secret came from, for the strength check's message.
    let mut origins: [String; 2] = Default::default();
    for ((slot, origin), kind) in found.iter_mut().zip(origins.iter_mut()).zip(kinds) {
        let configured = match kind {
            SecretKind::Server => &project.master.server_secret,
            SecretKind::Cli => &project.master.cli_secret,
        };
        *slot = match lookup(kind.env_var()) {
            Ok(v) if v.is_empty() => return Err(bad(kind.env_var().to_owned(), kind, "is empty")),
            Ok(v) => {
                *origin = kind.env_var().to_owned();
                Some(v)
            }
            Err(VarError::NotUnicode(_)) => {
                return Err(bad(kind.env_var().to_owned(), kind, "is not valid UTF-8"));
            }
            Err(VarError::NotPresent) => match lookup(kind.file_env_var()) {
                Ok(file) if !file.is_empty() => {
                    *origin = format!("{} ({file})", kind.file_env_var());
                    Some(read_secret_file(Path::new(&file))?)
                }
                Err(VarError::NotUnicode(_)) => {
                    return Err(bad(
                        kind.file_env_var().to_owned(),
                        kind,
                        "is not valid UTF-8",
                    ));
                }
                _ => match configured {
                    Some(v) if v.is_empty() => {
                        let origin = format!(
                            "`{}` in {}",
                            kind.config_key(),
                            master_file(project).display()
                        );
                        return Err(bad(origin, kind, "is empty"));
                    }
                    v => {
                        *origin = format!(
                            "`{}` in {}",
                            kind.config_key(),
                            master_file(project).display()
                        );
                        v.clone()
                    }
                },
            },
        };
    }

    if found.iter().any(Option::is_none) && env == PRODUCTION_ENV {
        let missing = kinds[found.iter().position(Option::is_none).unwrap_or(0)];
        return Err(ConfigError::ProductionSecret {
            master_file: master_file(project),
            env: env.to_owned(),
            secret: missing,
        });
    }
    if env == PRODUCTION_ENV {
        for ((secret, origin), kind) in found.iter().zip(&origins).zip(kinds) {
            let bits = secret.as_deref().map_or(0, secret_bits);
            if bits < MIN_SECRET_BITS {
                return Err(ConfigError::WeakSecret {
                    origin: origin.clone(),
                    env: env.to_owned(),
                    secret: kind,
                    bits,
                });
            }
        }
    }

    let path = Secrets::file_path(&project.dir);
    let mut stored: Option<Map<String, Value>> = None;
    let mut changed = false;
    for (slot, kind) in found.iter_mut().zip(kinds) {
        if slot.is_some() {
            continue;
        }
        if stored.is_none() {
            stored = Some(read_file(&path, env)?);
        }
        let file = stored.get_or_insert_with(Map::new);
        let origin = || path.display().to_string();
        *slot = match file.get(kind.file_key()) {
            Some(Value::String(s)) if s.is_empty() => return Err(bad(origin(), kind, "is empty")),
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad(origin(), kind, "is not a string")),
            None if generate => {
                let secret = generate_secret();
                file.insert(kind.file_key().to_owned(), Value::String(secret.clone()));
                changed = true;
                Some(secret)
            }
            None => {
                return Err(ConfigError::MissingSecret {
                    master_file: master_file(project),
                    secrets_file: path,
                    env: env.to_owned(),
                    secret: kind,
                });
            }
        };
    }
    if let (true, Some(file)) = (changed, &stored) {
        write_file(&project.dir, file)?;
    }
    let [Some(server), Some(cli)] = found else {
        unreachable!("every secret was found, generated or reported missing")
    };
    Ok(Secrets { server, cli })
}

/// The master config file of the project, for messages.
fn master_file(project: &Project) -> PathBuf {
    crate::source::locate(&project.dir, "master", &project.env)
        .map(|f| f.path)
        .unwrap_or_else(|_| project.dir.join(crate::source::SYS_DIR).join("master.json"))
}

/// The estimated strength of `secret` in bits: its length times log2 of the alphabet its
/// characters suggest. Hex digits alone count 16 symbols (`openssl rand -hex 16` is 128
/// bits); otherwise each class present adds its size: lowercase 26, uppercase 26, digits 10,
/// other ASCII 33, anything else 128. A secret of fewer than 8 distinct characters counts
/// log2(distinct) per character instead, and one that repeats a part of at most half its
/// length (`abcabcabc...`) counts that part's length. An estimate of what a guesser must try,
/// not a measure of how the secret was made: it can only catch the weak.
pub fn secret_bits(secret: &str) -> u32 {
    let chars: Vec<char> = secret.chars().collect();
    let len = shortest_period(&chars) as f64;
    let mut distinct = chars.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let alphabet = if distinct.len() < 8 {
        distinct.len()
    } else if secret.chars().all(|c| c.is_ascii_hexdigit()) {
        16
    } else {
        let has = |f: fn(&char) -> bool| distinct.iter().any(f);
        [
            (has(char::is_ascii_lowercase), 26),
            (has(char::is_ascii_uppercase), 26),
            (has(char::is_ascii_digit), 10),
            (has(|c| c.is_ascii() && !c.is_ascii_alphanumeric()), 33),
            (has(|c| !c.is_ascii()), 128),
        ]
        .iter()
        .filter(|(present, _)| *present)
        .map(|(_, n)| n)
        .sum()
    };
    if alphabet < 2 {
        return 0;
    }
    (len * (alphabet as f64).log2()).floor() as u32
}

/// The length of the shortest part that `s` repeats at least twice over its whole length
/// (`abcabca` → 3), or `s.len()` when there is none (KMP prefix function).
fn shortest_period(s: &[char]) -> usize {
    let n = s.len();
    let mut pi = vec![0usize; n];
    for i in 1..n {
        let mut k = pi[i - 1];
        while k > 0 && s[i] != s[k] {
            k = pi[k - 1];
        }
        if s[i] == s[k] {
            k += 1;
        }
        pi[i] = k;
    }
    match n.checked_sub(pi.last().copied().unwrap_or(0)) {
        Some(p) if p > 0 && 2 * p <= n => p,
        _ => n,
    }
}

/// The directory systemd puts a unit's credentials in (`LoadCredential=`).
const CREDENTIALS_DIRECTORY_ENV: &str = "CREDENTIALS_DIRECTORY";

/// Opens a file that holds secrets, refusing it when its group or others have any access.
/// Files in systemd's `$CREDENTIALS_DIRECTORY` are taken as they are: that directory is
/// private to the unit, and a credential readable by the unit's `User=` through an ACL shows
/// the ACL mask as group bits (mode 0440).
fn open_private(path: &Path) -> std::io::Result<Result<fs::File, ConfigError>> {
    let file = fs::File::open(path)?;
    let from_systemd = std::env::var_os(CREDENTIALS_DIRECTORY_ENV)
        .is_some_and(|dir| !dir.is_empty() && path.starts_with(dir));
    #[cfg(unix)]
    if !from_systemd {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata()?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Ok(Err(ConfigError::SecretFile {
                file: path.to_owned(),
                reason: format!(
                    "holds secrets but its group or others may access it (mode {mode:04o}); make it private: chmod 600 {}",
                    path.display()
                ),
            }));
        }
    }
    Ok(Ok(file))
}

/// Reads a secret from `path` (a `KENNEL_*_SECRET_FILE`, `kennel --token-file`): the whole
/// file, one trailing newline (`\n` or `\r\n`) stripped. Refused when group or others have
/// any access to it (`chmod 600`), when it is empty or not UTF-8.
pub fn read_secret_file(path: &Path) -> Result<String, ConfigError> {
    let bad = |reason: String| ConfigError::SecretFile {
        file: path.to_owned(),
        reason,
    };
    let io = |e: std::io::Error| bad(format!("cannot read this secret file: {e}"));
    let mut file = open_private(path).map_err(io)??;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(io)?;
    let secret = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if secret.is_empty() {
        return Err(bad("this secret file is empty".to_owned()));
    }
    Ok(secret.to_owned())
}

/// 32 random bytes from the thread-local CSPRNG, as 64 hex digits.
fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Reads the secrets file (refused when group or others may access it); a missing file is an
/// empty table.
fn read_file(path: &Path, env: &str) -> Result<Map<String, Value>, ConfigError> {
    let read = || -> std::io::Result<Result<String, ConfigError>> {
        let mut file = match open_private(path)? {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text)?;
        Ok(Ok(text))
    };
    let text = match read() {
        Ok(t) => t?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
        Err(source) => {
            return Err(ConfigError::Io {
                file: path.to_owned(),
                action: "read",
                source,
            });
        }
    };
    let malformed = |message: String| ConfigError::Malformed {
        file: path.to_owned(),
        env: env.to_owned(),
        format: Format::Json,
        message,
    };
    match serde_json::from_str::<Value>(&text).map_err(|e| malformed(e.to_string()))? {
        Value::Object(map) => Ok(map),
        _ => Err(malformed(
            "expected an object like {\"server\": \"...\", \"cli\": \"...\"}".to_owned(),
        )),
    }
}

/// Writes `.kennel/secrets.json` (mode 0600, via a temporary file and a rename) and
/// `.kennel/.gitignore`, creating `.kennel/` with mode 0700 if needed.
fn write_file(dir: &Path, contents: &Map<String, Value>) -> Result<(), ConfigError> {
    let kennel = dir.join(".kennel");
    let io = |file: &Path, action, source| ConfigError::Io {
        file: file.to_owned(),
        action,
        source,
    };
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(&kennel) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && kennel.is_dir() => {}
        Err(e) => return Err(io(&kennel, "create directory", e)),
    }
    let gitignore = kennel.join(".gitignore");
    if !gitignore.exists() {
        fs::write(&gitignore, "*\n").map_err(|e| io(&gitignore, "write", e))?;
    }

    let path = kennel.join("secrets.json");
    let mut suffix = [0u8; 6];
    rand::rng().fill_bytes(&mut suffix);
    let tmp = kennel.join(format!(".secrets.json.{}.tmp", hex::encode(suffix)));
    let mut text = serde_json::to_string_pretty(contents).expect("a JSON map serializes");
    text.push('\n');
    let write = || -> std::io::Result<()> {
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io(&path, "write", e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MasterConfig;
    use std::collections::HashMap;

    fn project(dir: &Path, env: &str, server: Option<&str>, cli: Option<&str>) -> Project {
        Project {
            dir: dir.to_owned(),
            env: env.to_owned(),
            master: MasterConfig {
                id: "master-server-1".into(),
                host: "127.0.0.1".into(),
                port: 3005,
                bin: None,
                server_secret: server.map(Into::into),
                cli_secret: cli.map(Into::into),
                settings: Default::default(),
                extra: Map::new(),
            },
            servers: vec![],
            routes: vec![],
            route_notes: vec![],
            warnings: vec![],
        }
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Result<String, VarError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned().ok_or(VarError::NotPresent)
    }

    fn write_secrets(dir: &Path, json: &str) {
        fs::create_dir_all(dir.join(".kennel")).unwrap();
        write_private(&dir.join(SECRETS_FILE), json, 0o600);
    }

    /// Writes `text` to `path` with `mode`.
    fn write_private(path: &Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// 32 hex digits: what `openssl rand -hex 16` prints (128 bits).
    const STRONG_S: &str = "8f14e45fceea167a5a36dedd4bea2543";
    const STRONG_C: &str = "c9f0f895fb98ab9159f51fd0297e236d";

    #[test]
    fn env_beats_config_beats_file() {
        let tmp = tempfile::tempdir().unwrap();
        write_secrets(tmp.path(), r#"{"server": "file-s", "cli": "file-c"}"#);
        let p = project(tmp.path(), "development", Some("cfg-s"), Some("cfg-c"));

        let s = resolve_with(&p, false, env_of(&[])).unwrap();
        assert_eq!((s.server.as_str(), s.cli.as_str()), ("cfg-s", "cfg-c"));

        let s = resolve_with(&p, false, env_of(&[(SERVER_SECRET_ENV, "env-s")])).unwrap();
        assert_eq!((s.server.as_str(), s.cli.as_str()), ("env-s", "cfg-c"));

        let p = project(tmp.path(), "development", None, Some("cfg-c"));
        let s = resolve_with(&p, false, env_of(&[])).unwrap();
        assert_eq!((s.server.as_str(), s.cli.as_str()), ("file-s", "cfg-c"));

        let s = resolve_with(&p, false, env_of(&[(CLI_SECRET_ENV, "env-c")])).unwrap();
        assert_eq!((s.server.as_str(), s.cli.as_str()), ("file-s", "env-c"));
    }

    #[test]
    fn missing_without_generate_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let p = project(tmp.path(), "development", Some("s"), None);
        let err = resolve_with(&p, false, env_of(&[])).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::MissingSecret {
                    secret: SecretKind::Cli,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        for needle in [
            "KENNEL_CLI_SECRET",
            "cliSecret",
            ".kennel/secrets.json",
            "\"development\"",
        ] {
            assert!(msg.contains(needle), "{needle} not in {msg}");
        }
        assert!(
            !tmp.path().join(".kennel").exists(),
            "nothing written without generate"
        );
    }

    #[test]
    fn generate_writes_private_file_and_reuses_it() {
        let tmp = tempfile::tempdir().unwrap();
        let p = project(tmp.path(), "development", None, None);
        let first = resolve_with(&p, true, env_of(&[])).unwrap();
        assert_eq!(first.server.len(), 64);
        assert!(first.server.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(first.server, first.cli);

        let file = tmp.path().join(SECRETS_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let dir_mode = fs::metadata(tmp.path().join(".kennel"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(dir_mode, 0o700);
        }
        assert_eq!(
            fs::read_to_string(tmp.path().join(".kennel/.gitignore")).unwrap(),
            "*\n"
        );
        let leftovers: Vec<_> = fs::read_dir(tmp.path().join(".kennel"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // Servers (no generate) read the same secrets back.
        let again = resolve_with(&p, false, env_of(&[])).unwrap();
        assert_eq!(again, first);
        // Generating again does not rotate them.
        assert_eq!(resolve_with(&p, true, env_of(&[])).unwrap(), first);
    }

    #[test]
    fn generate_only_fills_what_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        write_secrets(tmp.path(), r#"{"server": "kept"}"#);
        let p = project(tmp.path(), "development", None, None);
        let s = resolve_with(&p, true, env_of(&[])).unwrap();
        assert_eq!(s.server, "kept");
        let stored: Value =
            serde_json::from_str(&fs::read_to_string(tmp.path().join(SECRETS_FILE)).unwrap())
                .unwrap();
        assert_eq!(stored["server"], "kept");
        assert_eq!(stored["cli"], s.cli.as_str());
    }

    #[test]
    fn production_refuses_file_and_generated_secrets() {
        let tmp = tempfile::tempdir().unwrap();
        write_secrets(tmp.path(), r#"{"server": "file-s", "cli": "file-c"}"#);
        let p = project(tmp.path(), "production", Some(STRONG_S), None);
        let err = resolve_with(&p, true, env_of(&[])).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::ProductionSecret {
                    secret: SecretKind::Cli,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("\"production\""), "{err}");
        // Given explicitly, production is fine and the file is not consulted.
        let s = resolve_with(&p, true, env_of(&[(CLI_SECRET_ENV, STRONG_C)])).unwrap();
        assert_eq!((s.server.as_str(), s.cli.as_str()), (STRONG_S, STRONG_C));
    }

    #[test]
    fn strength_estimate() {
        for (secret, bits) in [
            (STRONG_S, 128),                           // openssl rand -hex 16
            ("8F14E45FCEEA167A5A36DEDD4BEA2543", 128), // upper-case hex
            (&STRONG_S[1..], 124),                     // one hex digit short
            ("qz4f0V2s0yNwY1Qk3mT5fA==", 157),         // openssl rand -base64 16
            ("password123", 56),
            ("hunter2", 19), // 7 distinct characters: log2(7) each
            ("", 0),
        ] {
            assert_eq!(secret_bits(secret), bits, "{secret:?}");
        }
        // Repetition is no strength, however long.
        assert_eq!(secret_bits(&"a".repeat(200)), 0);
        assert!(secret_bits(&"abcdefg".repeat(20)) < MIN_SECRET_BITS);
        let pattern = format!("{STRONG_S}{STRONG_S}");
        assert_eq!(secret_bits(&pattern), 128, "a doubled secret is the secret");
        assert_eq!(shortest_period(&['a', 'b', 'c', 'a', 'b', 'c', 'a']), 3);
        assert_eq!(shortest_period(&['a', 'b', 'c', 'a']), 4);
        // The secrets the master generates pass with room to spare.
        assert!(secret_bits(&generate_secret()) >= 2 * MIN_SECRET_BITS);
    }

    #[test]
    fn production_refuses_weak_secrets_and_says_how_to_make_one() {
        let tmp = tempfile::tempdir().unwrap();
        let p = project(
            tmp.path(),
            "production",
            Some("s3cret-but-short"),
            Some(STRONG_C),
        );
        let err = resolve_with(&p, true, env_of(&[])).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::WeakSecret {
                    secret: SecretKind::Server,
                    bits: 97,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        for needle in [
            "`serverSecret` in",
            "too weak",
            "about 97 bits, at least 128",
            "openssl rand -hex 16",
            "head -c16 /dev/urandom | xxd -p",
        ] {
            assert!(msg.contains(needle), "{needle:?} not in {msg}");
        }
        // From the environment: the message names the variable.
        let err = resolve_with(&p, true, env_of(&[(SERVER_SECRET_ENV, "deadbeef")])).unwrap_err();
        assert!(
            err.to_string()
                .contains("from KENNEL_SERVER_SECRET is too weak"),
            "{err}"
        );
        // Strong ones pass; outside production nothing is measured.
        assert!(resolve_with(&p, true, env_of(&[(SERVER_SECRET_ENV, STRONG_S)])).is_ok());
        let dev = project(tmp.path(), "development", Some("s"), Some("c"));
        assert!(resolve_with(&dev, true, env_of(&[])).is_ok());
    }

    #[test]
    fn a_secrets_file_others_may_read_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let p = project(tmp.path(), "development", None, None);
        let file = tmp.path().join(SECRETS_FILE);
        for mode in [0o644, 0o640, 0o604, 0o660, 0o620] {
            write_secrets(tmp.path(), r#"{"server": "s", "cli": "c"}"#);
            write_private(&file, r#"{"server": "s", "cli": "c"}"#, mode);
            for generate in [false, true] {
                let err = resolve_with(&p, generate, env_of(&[])).unwrap_err();
                assert!(matches!(err, ConfigError::SecretFile { .. }), "{err:?}");
                let msg = err.to_string();
                let chmod = format!("chmod 600 {}", file.display());
                assert!(msg.contains(&chmod), "{chmod:?} not in {msg}");
                assert!(msg.contains(&format!("mode {mode:04o}")), "{msg}");
            }
        }
        // As the master writes it (0600), or tightened further (0400), it is read.
        for mode in [0o600, 0o400] {
            write_private(&file, r#"{"server": "s", "cli": "c"}"#, mode);
            let s = resolve_with(&p, false, env_of(&[])).unwrap();
            assert_eq!((s.server.as_str(), s.cli.as_str()), ("s", "c"));
        }
    }

    #[test]
    fn secret_files_named_by_the_environment() {
        let tmp = tempfile::tempdir().unwrap();
        let p = project(tmp.path(), "production", Some("cfg-s"), None);
        let (server, cli) = (tmp.path().join("server"), tmp.path().join("cli"));
        write_private(&server, &format!("{STRONG_S}\n"), 0o400);
        write_private(&cli, &format!("{STRONG_C}\r\n"), 0o600);
        let files = [
            (SERVER_SECRET_FILE_ENV, server.to_str().unwrap()),
            (CLI_SECRET_FILE_ENV, cli.to_str().unwrap()),
        ];
        // The file beats the master config; one trailing newline is not part of the secret.
        let s = resolve_with(&p, false, env_of(&files)).unwrap();
        assert_eq!((s.server.as_str(), s.cli.as_str()), (STRONG_S, STRONG_C));
        // The variable itself beats the file.
        let mut vars = files.to_vec();
        vars.push((SERVER_SECRET_ENV, "8f14e45fceea167a5a36dedd4bea2544"));
        let s = resolve_with(&p, false, env_of(&vars)).unwrap();
        assert_eq!(s.server, "8f14e45fceea167a5a36dedd4bea2544");
        // A weak secret in a file is refused in production, naming the file.
        write_private(&server, "short\n", 0o600);
        let err = resolve_with(&p, false, env_of(&files)).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "from KENNEL_SERVER_SECRET_FILE ({})",
                server.display()
            )),
            "{err}"
        );
        // Readable by others, empty, or missing: a clear error naming the file.
        write_private(&server, STRONG_S, 0o644);
        let err = resolve_with(&p, false, env_of(&files)).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("chmod 600 {}", server.display())),
            "{err}"
        );
        write_private(&server, "\n", 0o600);
        let err = resolve_with(&p, false, env_of(&files)).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        fs::remove_file(&server).unwrap();
        let err = resolve_with(&p, false, env_of(&files)).unwrap_err();
        assert!(
            err.to_string().contains(&server.display().to_string())
                && err.to_string().contains("cannot read"),
            "{err}"
        );
    }

    #[test]
    fn production_generates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let p = project(tmp.path(), "production", None, None);
        assert!(resolve_with(&p, true, env_of(&[])).is_err());
        assert!(!tmp.path().join(".kennel").exists());
    }

    #[test]
    fn empty_secrets_are_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let p = project(tmp.path(), "development", Some("s"), Some("c"));
        let err = resolve_with(&p, true, env_of(&[(SERVER_SECRET_ENV, "")])).unwrap_err();
        assert!(
            err.to_string().contains("KENNEL_SERVER_SECRET is empty"),
            "{err}"
        );

        let p = project(tmp.path(), "development", Some(""), Some("c"));
        let err = resolve_with(&p, true, env_of(&[])).unwrap_err();
        assert!(err.to_string().contains("`serverSecret`"), "{err}");

        write_secrets(tmp.path(), r#"{"server": "s", "cli": ""}"#);
        let p = project(tmp.path(), "development", None, None);
        let err = resolve_with(&p, true, env_of(&[])).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::BadSecret {
                    secret: SecretKind::Cli,
                    reason: "is empty",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn malformed_secrets_file_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        write_secrets(tmp.path(), "{not json");
        let p = project(tmp.path(), "development", None, None);
        let err = resolve_with(&p, true, env_of(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Malformed { .. }), "{err:?}");
        assert!(err.to_string().contains("secrets.json"), "{err}");
        // The broken file is left alone, not overwritten with fresh secrets.
        assert_eq!(
            fs::read_to_string(tmp.path().join(SECRETS_FILE)).unwrap(),
            "{not json"
        );
    }
}
