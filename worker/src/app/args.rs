//! Command-line flags a server is started with: `--id <id> --env <env> [--dir <project>]`.

use std::path::PathBuf;

use crate::Error;

/// A server's startup flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// Server id (`--id`), required.
    pub id: String,
    /// Environment (`--env` / `-e`), default `development`.
    pub env: String,
    /// Project directory (`--dir`), default the working directory.
    pub dir: PathBuf,
    /// Every other argument, in order (the server entry's `args`).
    pub rest: Vec<String>,
}

impl Args {
    /// Parses flags (without the program name). `--flag value` and `--flag=value` both work.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Args, Error> {
        let mut id = None;
        let mut env = None;
        let mut dir = None;
        let mut rest = Vec::new();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with('-') => (f.to_string(), Some(v.to_string())),
                _ => (a.clone(), None),
            };
            let slot = match flag.as_str() {
                "--id" => &mut id,
                "--env" | "-e" => &mut env,
                "--dir" => &mut dir,
                _ => {
                    rest.push(a);
                    continue;
                }
            };
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .ok_or_else(|| Error::Args(format!("{flag} needs a value")))?,
            };
            if value.is_empty() {
                return Err(Error::Args(format!("{flag} is empty")));
            }
            *slot = Some(value);
        }
        Ok(Args {
            id: id.ok_or_else(|| Error::Args("missing --id <server id>".into()))?,
            env: env.unwrap_or_else(|| kennel_config::DEFAULT_ENV.to_string()),
            dir: dir.map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")),
            rest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Result<Args, Error> {
        Args::parse(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_both_forms() {
        let a = p(&["--id", "chat-1", "--env=production", "x", "--dir", "/p"]).unwrap();
        assert_eq!(a.id, "chat-1");
        assert_eq!(a.env, "production");
        assert_eq!(a.dir, PathBuf::from("/p"));
        assert_eq!(a.rest, vec!["x".to_string()]);
    }

    #[test]
    fn defaults_and_errors() {
        let a = p(&["--id", "c"]).unwrap();
        assert_eq!(a.env, "development");
        assert!(p(&[]).unwrap_err().to_string().contains("--id"));
        assert!(
            p(&["--id"])
                .unwrap_err()
                .to_string()
                .contains("needs a value")
        );
    }
}
