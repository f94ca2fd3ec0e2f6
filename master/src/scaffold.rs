//! `kennel init [dir]`: writes a new game project (a Cargo package on the `kennel` library with
//! a gate frontend and room backends, `config/sys/` for development and production, a README)
//! that builds with `cargo build` and runs with `kennel start` as is. The program is the one
//! `docs/guide.md` walks through (a test keeps the two identical).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The template files: (path in the project, contents with `{{name}}` / `{{kennel}}`).
const FILES: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../templates/game/Cargo.toml.in"),
    ),
    ("README.md", include_str!("../templates/game/README.md")),
    (".gitignore", include_str!("../templates/game/gitignore")),
    ("src/main.rs", include_str!("../templates/game/src/main.rs")),
    (
        "config/sys/master.json",
        include_str!("../templates/game/config/sys/master.json"),
    ),
    (
        "config/sys/servers.json",
        include_str!("../templates/game/config/sys/servers.json"),
    ),
    (
        "config/sys/route.json",
        include_str!("../templates/game/config/sys/route.json"),
    ),
];

/// How the new project depends on the `kennel` library: a TOML value for its `[dependencies]`.
pub fn default_kennel_dependency() -> String {
    // Built from a checkout: point at its library. Otherwise the repository.
    let worker = Path::new(env!("CARGO_MANIFEST_DIR")).join("../worker");
    match worker.canonicalize() {
        Ok(p) => format!("{{ path = {:?} }}", p.display().to_string()),
        Err(_) => "{ git = \"https://github.com/kennel-rs/kennel\" }".to_string(),
    }
}

/// A Cargo package name from a directory name: lowercase, `-` for anything else.
fn package_name(dir: &Path) -> Result<String> {
    let base = dir
        .canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches('-').to_string();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        bail!(
            "cannot make a package name from {:?}: pass --name",
            dir.display()
        );
    }
    Ok(name)
}

/// Writes the project into `dir` (created if missing). Refuses a non-empty `dir` unless
/// `force`. Returns the files written.
pub fn init(dir: &Path, name: Option<&str>, kennel_dep: &str, force: bool) -> Result<Vec<PathBuf>> {
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        if entries.next().is_some() && !force {
            bail!(
                "{} is not empty: use --force to write the project into it anyway",
                dir.display()
            );
        }
    }
    let name = match name {
        Some(n) => n.to_string(),
        None => package_name(dir)?,
    };
    let mut written = Vec::new();
    for (path, text) in FILES {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let text = text
            .replace("{{name}}", &name)
            .replace("{{kennel}}", kennel_dep);
        std::fs::write(&target, text)
            .with_context(|| format!("cannot write {}", target.display()))?;
        written.push(target);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_loadable_project_and_refuses_a_non_empty_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("My Game");
        let files = init(&dir, None, "{ path = \"/k\" }", false).unwrap();
        assert_eq!(files.len(), FILES.len());
        let toml = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(toml.contains("name = \"my-game\""), "{toml}");
        assert!(toml.contains("kennel = { path = \"/k\" }"), "{toml}");
        for env in ["development", "production"] {
            let p = kennel_config::Project::load(&dir, env).unwrap();
            assert_eq!(p.server_types(), ["gate", "room"], "{env}");
            assert!(p.master.bin.as_deref().unwrap().ends_with("/my-game"));
        }
        let err = init(&dir, None, "{}", false).unwrap_err().to_string();
        assert!(
            err.contains("not empty") && err.contains("--force"),
            "{err}"
        );
        init(&dir, Some("other"), "{}", true).unwrap();
        assert!(
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .unwrap()
                .contains("\"other\"")
        );
        assert!(package_name(Path::new("/x/1abc")).is_err());
    }
}
