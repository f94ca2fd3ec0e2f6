//! Fuzz target: structure-aware config loading. The input picks server entries (ids, hosts,
//! `port`/`clientPort` numbers or ranges near the u16 edges, `idStart` near the u32 edge,
//! frontend flags, extra keys) and a route list; they are written as JSON or TOML and loaded
//! with `kennel_config::Project::load`.
//!
//! Oracles: no panic; a project that loads has exactly the servers the ranges describe (count,
//! ids `id + (idStart + k)`, ports `first + k`), unique ids and listeners, and a route list a
//! `u16` cmd can index.
#![no_main]

use arbitrary::Arbitrary;
use kennel_config::Project;
use kennel_fuzz::project_dir;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

#[derive(Arbitrary, Debug)]
enum Num {
    Small(u8),
    Near(u16),
    Any(i64),
    Float(f64),
    Text,
}

impl Num {
    fn port(&self) -> Value {
        match self {
            Num::Small(n) => json!(65535 - u16::from(*n)),
            Num::Near(n) => json!(*n),
            Num::Any(n) => json!(*n),
            Num::Float(f) => json!(*f),
            Num::Text => json!("4000"),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum PortSpec {
    One(Num),
    Range(Num, Num),
    Three,
    Missing,
}

impl PortSpec {
    fn value(&self) -> Option<Value> {
        match self {
            PortSpec::One(n) => Some(n.port()),
            PortSpec::Range(a, b) => Some(json!([a.port(), b.port()])),
            PortSpec::Three => Some(json!([1, 2, 3])),
            PortSpec::Missing => None,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Entry {
    ty: u8,
    id: u8,
    host: u8,
    port: PortSpec,
    client: PortSpec,
    frontend: Option<bool>,
    id_start: Option<Num>,
    extra: Option<(String, i64)>,
}

#[derive(Arbitrary, Debug)]
struct Cluster {
    toml: bool,
    master_port: u16,
    entries: Vec<Entry>,
    routes: Vec<(u8, u8)>,
    /// 0xA5: a route list one longer than a u16 cmd reaches (rare: it is slow to load).
    many_routes: u8,
}

const TYPES: [&str; 4] = ["connector", "chat", "gate", ""];
const HOSTS: [&str; 3] = ["127.0.0.1", "localhost", ""];

fn servers_doc(c: &Cluster) -> Value {
    let mut groups = serde_json::Map::new();
    for e in &c.entries {
        let mut obj = serde_json::Map::new();
        obj.insert("id".into(), json!(format!("s{}-", e.id % 8)));
        if e.host < 200 {
            obj.insert(
                "host".into(),
                json!(HOSTS[usize::from(e.host) % HOSTS.len()]),
            );
        }
        if let Some(p) = e.port.value() {
            obj.insert("port".into(), p);
        }
        if let Some(p) = e.client.value() {
            obj.insert("clientPort".into(), p);
        }
        if let Some(f) = e.frontend {
            obj.insert("frontend".into(), json!(f));
        }
        if let Some(n) = &e.id_start {
            let v = match n {
                Num::Small(k) => json!(u64::from(u32::MAX) - u64::from(*k)),
                other => other.port(),
            };
            obj.insert("idStart".into(), v);
        }
        if let Some((k, v)) = &e.extra {
            obj.insert(k.clone(), json!(v));
        }
        let ty = TYPES[usize::from(e.ty) % TYPES.len()];
        groups
            .entry(ty.to_owned())
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .expect("a list")
            .push(Value::Object(obj));
    }
    json!({ "dev": groups })
}

fn routes(c: &Cluster) -> Vec<String> {
    if c.many_routes == 0xA5 {
        return (0..=u32::from(u16::MAX) + 1)
            .map(|i| format!("push{i}"))
            .collect();
    }
    c.routes
        .iter()
        .map(|(t, m)| match t % 3 {
            0 => format!("on{m}"),
            _ => format!("{}.main.m{m}", TYPES[usize::from(*t) % TYPES.len()]),
        })
        .collect()
}

/// JSON to TOML text (None where TOML cannot say it, e.g. a null or mixed nesting).
fn to_toml(v: &Value) -> Option<String> {
    let t: toml::Value = serde_json::from_value(v.clone()).ok()?;
    toml::to_string(&t).ok()
}

fuzz_target!(|c: Cluster| {
    let master = json!({"dev": {"id": "master", "host": "127.0.0.1", "port": c.master_port}});
    let servers = servers_doc(&c);
    let routes = routes(&c);
    let (files, ext) = if c.toml {
        let (Some(m), Some(s), Some(r)) = (
            to_toml(&master),
            to_toml(&servers),
            to_toml(&json!({ "route": routes })),
        ) else {
            return;
        };
        ([m, s, r], "toml")
    } else {
        (
            [
                master.to_string(),
                servers.to_string(),
                json!(routes).to_string(),
            ],
            "json",
        )
    };
    let names = [
        format!("master.{ext}"),
        format!("servers.{ext}"),
        format!("route.{ext}"),
    ];
    let refs: Vec<(&str, &[u8])> = names
        .iter()
        .zip(&files)
        .map(|(n, t)| (n.as_str(), t.as_bytes()))
        .collect();
    let dir = project_dir(&refs);
    let Ok(p) = Project::load(dir.path(), "dev") else {
        return;
    };
    assert!(
        p.routes.len() <= usize::from(u16::MAX) + 1,
        "route list longer than a u16 cmd reaches"
    );
    let mut ids: Vec<&str> = p.servers.iter().map(|s| s.id.as_str()).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "duplicate server ids");
    let mut listeners: Vec<(&str, u16)> = p
        .servers
        .iter()
        .map(|s| (s.host.as_str(), s.port))
        .collect();
    listeners.extend(p.servers.iter().filter(|s| s.frontend).map(|s| {
        (
            s.host.as_str(),
            s.client_port.expect("frontend has a client port"),
        )
    }));
    listeners.push((p.master.host.as_str(), p.master.port));
    let n = listeners.len();
    listeners.sort_unstable();
    listeners.dedup();
    assert_eq!(listeners.len(), n, "two listeners on one address");
});
