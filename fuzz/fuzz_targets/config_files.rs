//! Fuzz target: config parsing end to end, `kennel_config::Project::load` on three files
//! written into a temp project (`config/sys/{master,servers,route}.{json,toml}`).
//!
//! Input: `[format bits u8][master text] 0xFF [servers text] 0xFF [route text]`; bit k of the
//! first byte picks TOML over JSON for file k. Oracles: no panic; a project that loads obeys
//! the documented invariants (unique ids, frontends have client ports, routes name known
//! server types).
#![no_main]

use kennel_config::Project;
use kennel_fuzz::project_dir;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [formats, rest @ ..] = data else {
        return;
    };
    let mut parts = rest.splitn(3, |b| *b == 0xFF);
    let texts = [
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    ];
    let names = ["master", "servers", "route"];
    let files: Vec<(String, &[u8])> = names
        .iter()
        .zip(texts)
        .enumerate()
        .map(|(k, (name, text))| {
            let ext = if formats >> k & 1 == 1 {
                "toml"
            } else {
                "json"
            };
            (format!("{name}.{ext}"), text)
        })
        .collect();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    let dir = project_dir(&refs);
    let _ = Project::environments(dir.path());
    if let Ok(p) = Project::load(dir.path(), "dev") {
        kennel_fuzz_check(&p);
    }
});

fn kennel_fuzz_check(p: &Project) {
    let mut ids: Vec<&str> = p.servers.iter().map(|s| s.id.as_str()).collect();
    ids.push(&p.master.id);
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "duplicate ids loaded");
    for s in &p.servers {
        assert!(
            !s.frontend || s.client_port.is_some(),
            "frontend without clientPort"
        );
    }
    for r in &p.routes {
        if let Some((ty, _)) = r.split_once('.') {
            assert!(
                p.servers.iter().any(|s| s.server_type == ty),
                "route {r} has no servers"
            );
        }
    }
}
