//! Property tests (proptest) for config loading, run in the normal suite beside the long
//! cargo-fuzz runs of `fuzz/`: range expansion matches a model for any `port`/`clientPort`/
//! `idStart` (or fails with the documented error), JSON and TOML of the same cluster load to the
//! same project, garbage files are an error naming the file (never a panic), and the route list
//! stays within what a 16-bit `cmd` can index (a regression found by `fuzz/config_struct`).

mod common;

use common::*;
use kennel_config::Project;
use proptest::prelude::*;
use serde_json::{Value, json};

/// A project with exactly these three documents (JSON or TOML), env `dev`.
fn write(master: &Value, servers: &Value, routes: &Value, toml: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("config/sys");
    std::fs::create_dir_all(&sys).unwrap();
    let route_doc = if toml {
        json!({ "route": routes })
    } else {
        routes.clone()
    };
    for (name, v) in [
        ("master", master),
        ("servers", servers),
        ("route", &route_doc),
    ] {
        let (ext, text) = if toml {
            let t: toml::Value = serde_json::from_value(v.clone()).unwrap();
            ("toml", toml::to_string(&t).unwrap())
        } else {
            ("json", v.to_string())
        };
        std::fs::write(sys.join(format!("{name}.{ext}")), text).unwrap();
    }
    dir
}

fn master() -> Value {
    json!({"dev": {"id": "master-server-1", "host": "master-host", "port": 3005}})
}

/// The client-port spec of an entry.
#[derive(Debug, Clone)]
enum Client {
    None,
    One(u16),
    Range(u16, u16),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// `port: [a, b]` gives b-a+1 servers `id + (idStart + k)` on `a + k`, with client ports
    /// `c + k` (or the matching element of a range); otherwise the documented error.
    #[test]
    fn range_expansion_matches_the_model(
        a in 1u16..=65535,
        span in 0u16..40,
        reversed in any::<bool>(),
        id_start in prop_oneof![Just(None), (0u64..5).prop_map(Some), (4294967290u64..=4294967296).prop_map(Some)],
        client in prop_oneof![
            Just(Client::None),
            (1u16..=65535).prop_map(Client::One),
            (1u16..=65535, 0u16..40).prop_map(|(c, s)| Client::Range(c, c.saturating_add(s))),
        ],
        frontend in any::<bool>(),
    ) {
        let b = a.saturating_add(span);
        let (first, last) = if reversed && a != b { (b, a) } else { (a, b) };
        let mut entry = json!({"id": "chat-server-", "host": "127.0.0.1", "port": [first, last], "frontend": frontend});
        if let Some(s) = id_start {
            entry["idStart"] = json!(s);
        }
        match client {
            Client::None => {}
            Client::One(c) => entry["clientPort"] = json!(c),
            Client::Range(c, d) => entry["clientPort"] = json!([c, d]),
        }
        let servers = json!({"dev": {"chat": [entry]}});
        let dir = write(&master(), &servers, &json!(["onChat"]), false);
        let r = Project::load(dir.path(), "dev");

        let n = usize::from(last.wrapping_sub(first)) + 1;
        let expect_err: Option<&str> = if first > last {
            Some("reversed")
        } else if id_start.is_some_and(|s| s > u64::from(u32::MAX)) {
            Some("idStart")
        } else if frontend && matches!(client, Client::None) {
            Some("clientPort")
        } else {
            match client {
                Client::Range(c, d) if usize::from(d - c) + 1 != n => Some("clientPort"),
                Client::One(c) if u32::from(c) + n as u32 - 1 > 65535 => Some("clientPort"),
                _ => None,
            }
        };
        // Frontend client ports c + k landing on one of the entry's own RPC ports.
        let collides = match client {
            Client::One(c) | Client::Range(c, _) if frontend && expect_err.is_none() => {
                (0..n as u16).any(|k| (first..=last).contains(&(c + k)))
            }
            _ => false,
        };
        match (expect_err, r) {
            (Some(needle), Err(e)) => {
                let msg = e.to_string();
                prop_assert!(msg.contains(needle), "{needle:?} not in {msg}");
                prop_assert!(msg.contains("servers.json"), "{msg}");
            }
            (Some(needle), Ok(p)) => prop_assert!(false, "loaded, expected an error about {needle}: {:?}", p.servers.len()),
            (None, Err(e)) => {
                // The only other refusal: a client port on one of this entry's RPC ports.
                prop_assert!(collides, "unexpected error: {e}");
                prop_assert!(e.to_string().contains("already taken"), "{e}");
            }
            (None, Ok(p)) => {
                prop_assert!(!collides);
                prop_assert_eq!(p.servers.len(), n);
                let start = id_start.unwrap_or(0);
                for (k, s) in p.servers.iter().enumerate() {
                    prop_assert_eq!(&s.info.id, &format!("chat-server-{}", start + k as u64));
                    prop_assert_eq!(s.info.port, first + k as u16);
                    let want = match client {
                        Client::None => None,
                        Client::One(c) | Client::Range(c, _) => Some(c + k as u16),
                    };
                    prop_assert_eq!(s.info.client_port, want);
                }
            }
        }
    }

    /// The same cluster written as JSON and as TOML loads to the same project.
    #[test]
    fn json_and_toml_load_alike(
        groups in proptest::collection::vec((0usize..3, 1u16..4, any::<bool>(), 0u64..3), 1..5),
        extra in proptest::option::of(("[a-z]{1,8}", any::<i32>())),
    ) {
        let types = ["connector", "chat", "gate"];
        let mut doc = serde_json::Map::new();
        let mut next_port = 5000u16;
        for (i, (t, count, frontend, start)) in groups.iter().enumerate() {
            let mut e = json!({"id": format!("{}-{i}-", types[*t]), "idStart": start,
                "port": [next_port, next_port + count - 1], "frontend": frontend});
            next_port += count;
            if *frontend {
                e["clientPort"] = json!(next_port);
                next_port += count;
            }
            if let Some((k, v)) = &extra {
                e[format!("x{k}")] = json!(v);
            }
            doc.entry(types[*t].to_string()).or_insert_with(|| json!([])).as_array_mut().unwrap().push(e);
        }
        let servers = json!({"dev": doc});
        let routes: Vec<String> = groups.iter().map(|(t, ..)| format!("{}.main.x", types[*t]))
            .collect::<std::collections::BTreeSet<_>>().into_iter().chain(["onPush".to_string()]).collect();
        let routes = json!(routes);
        let j = write(&master(), &servers, &routes, false);
        let t = write(&master(), &servers, &routes, true);
        let pj = Project::load(j.path(), "dev").unwrap();
        let pt = Project::load(t.path(), "dev").unwrap();
        prop_assert_eq!(pj.servers, pt.servers);
        prop_assert_eq!(pj.routes, pt.routes);
        prop_assert_eq!(pj.master, pt.master);
    }

    /// Any bytes in any one of the files: an error naming that file, or a project; no panic.
    #[test]
    fn garbage_file_is_an_error_naming_it(
        which in 0usize..3,
        toml in any::<bool>(),
        text in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            "[\\[\\]{}\",:a-z0-9 =.\n-]{0,120}".prop_map(String::into_bytes),
        ],
    ) {
        let name = ["master", "servers", "route"][which];
        let file = format!("{name}.{}", if toml { "toml" } else { "json" });
        let dir = project(&[(&file, "")]);
        std::fs::write(dir.path().join("config/sys").join(&file), &text).unwrap();
        if let Err(e) = load(dir.path()) {
            let msg = e.to_string();
            prop_assert!(msg.contains(&file), "{file} not named in: {msg}");
        }
    }
}

/// Found while writing the oracle of `fuzz/config_struct`: a route list longer than 65536 was
/// accepted, though a client message's `cmd` is a `u16` (the worker indexes routes with
/// `i as u16`), so route 65536 would have shared cmd 0 with route 0.
#[test]
fn route_list_is_bounded_by_a_u16_cmd() {
    let servers = json!({"dev": {"chat": [{"id": "chat-1", "port": 4000}]}});
    let mut routes: Vec<String> = (0..65535).map(|i| format!("push{i}")).collect();
    routes.push("chat.main.send".into());
    let ok = write(&master(), &servers, &json!(routes), false);
    let p = Project::load(ok.path(), "dev").expect("65536 routes fit a u16 cmd");
    assert_eq!(p.route_index("chat.main.send"), Some(65535));

    routes.push("onOneTooMany".into());
    let bad = write(&master(), &servers, &json!(routes), false);
    let msg = Project::load(bad.path(), "dev").unwrap_err().to_string();
    assert!(msg.contains("65537 routes"), "{msg}");
    assert!(msg.contains("route.json"), "{msg}");
}
