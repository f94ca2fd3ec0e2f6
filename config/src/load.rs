//! [`Project::load`](crate::Project::load) end to end: locate the three files, select the
//! environment, build the master, expand the servers, read the routes, validate.

use std::path::Path;

use crate::error::ConfigError;
use crate::source::{locate, parse, select_env};
use crate::{Project, expand, master, route, source, validate};

pub(crate) fn load(dir: &Path, env: &str) -> Result<Project, ConfigError> {
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
    let placed = expand::expand_all(&servers_file, env, &servers_doc.env_entries(env))?;
    validate::check_cluster(&master_file, &servers_file, env, &master, &placed)?;
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
    })
}

/// The environment name used in messages when no environment is being loaded.
const ANY: &str = "*";

/// The environments of `dir`'s master config, in file order.
pub(crate) fn environments(dir: &Path) -> Result<Vec<String>, ConfigError> {
    let file = locate(dir, "master", ANY)?;
    let doc = parse(&file, ANY)?;
    source::environments(&file, &doc, ANY)
}
