//! [`Project::load`](crate::Project::load) end to end: locate the three files, select the
//! environment, build the master, expand the servers, read the routes, validate.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::ConfigError;
use crate::settings::Warning;
use crate::source::{SourceFile, locate, parse, select_env};
use crate::{Project, expand, master, route, source, validate};

/// `read_tls_files`: read and check the TLS files of entries with `ssl` (else only resolve
/// their paths).
pub(crate) fn load(dir: &Path, env: &str, read_tls_files: bool) -> Result<Project, ConfigError> {
    let master_file = locate(dir, "master", env)?;
    let servers_file = locate(dir, "servers", env)?;
    let route_file = locate(dir, "route", env)?;

    let master_doc = parse(&master_file, env)?;
    let master = master::extract(
        &master_file,
        env,
        select_env(&master_file, &master_doc, env)?,
    )?;

    let servers_doc = parse(&servers_file, env)?;
    // Validates the environment; its entries are then taken in file order.
    select_env(&servers_file, &servers_doc, env)?;
    let groups = servers_doc.env_entries(env);
    let mut placed = expand::expand_all(&servers_file, env, &groups)?;
    validate::check_cluster(&master_file, &servers_file, env, &master, &placed)?;
    crate::settings::check_tls_files(&servers_file, env, dir, &mut placed, read_tls_files)?;
    let warnings = warnings(
        (&master_file, select_env(&master_file, &master_doc, env)?),
        (&servers_file, &groups),
        env,
        &placed,
    );
    let servers: Vec<_> = placed.into_iter().map(|p| p.config).collect();

    let route_doc = parse(&route_file, env)?;
    let (routes, route_notes): (Vec<String>, Vec<Option<String>>) =
        route::routes(&route_file, env, &route_doc.value)?
            .into_iter()
            .unzip();
    route::check_routes(&route_file, env, &routes, &servers)?;

    Ok(Project {
        dir: dir.to_path_buf(),
        env: env.to_owned(),
        master,
        servers,
        routes,
        route_notes,
        warnings,
    })
}

/// The keys of the master entry and of every server entry that look like misspelt or
/// misplaced kennel settings, in file order.
fn warnings(
    (master_file, master): (&SourceFile, &Map<String, Value>),
    (servers_file, groups): (&SourceFile, &[(&String, &Value)]),
    env: &str,
    placed: &[expand::Placed],
) -> Vec<Warning> {
    use crate::settings::{MASTER_KEYS, SERVER_KEYS, odd_keys};
    let mut out: Vec<Warning> = odd_keys(master, &MASTER_KEYS, &SERVER_KEYS, "servers")
        .into_iter()
        .map(|(key, kind)| Warning {
            file: master_file.path.clone(),
            env: env.to_owned(),
            entry: master::label(master),
            key,
            kind,
            servers: Vec::new(),
        })
        .collect();
    for &(server_type, entries) in groups {
        let Value::Array(entries) = entries else {
            continue;
        };
        for (index, entry) in entries.iter().enumerate() {
            let Value::Object(obj) = entry else { continue };
            let label = expand::entry_label(server_type, index, entry);
            let servers: Vec<String> = placed
                .iter()
                .filter(|p| p.entry == label)
                .map(|p| p.config.info.id.clone())
                .collect();
            out.extend(
                odd_keys(obj, &SERVER_KEYS, &MASTER_KEYS, "master")
                    .into_iter()
                    .map(|(key, kind)| Warning {
                        file: servers_file.path.clone(),
                        env: env.to_owned(),
                        entry: label.clone(),
                        key,
                        kind,
                        servers: servers.clone(),
                    }),
            );
        }
    }
    out
}

/// The environment name used in messages when no environment is being loaded.
const ANY: &str = "*";

/// The environments of `dir`'s master config, in file order.
pub(crate) fn environments(dir: &Path) -> Result<Vec<String>, ConfigError> {
    let file = locate(dir, "master", ANY)?;
    let doc = parse(&file, ANY)?;
    source::environments(&file, &doc, ANY)
}
