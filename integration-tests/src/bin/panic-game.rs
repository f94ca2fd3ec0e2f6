//! panic-game: chat-demo's chat game (its `game.rs`, compiled in unchanged) plus routes whose
//! game code panics on demand, for `tests/panics.rs`. A test-only binary so that chat-demo's
//! public game has no panic routes; the cluster fixture runs it under the `kennel` master
//! (`ClusterOptions::game`, master.json's `bin`), `--id <id> --env <env>` like any game.
//!
//! Routes added after the chat routes (listed in
//! [`integration_tests::cluster::PANIC_GAME_ROUTES`]); `{"later": true}` panics after an `.await`
//! that is not ready (in the work's spawned remainder) instead of at once (inline):
//!
//! - `connector.boom.handler` / `chat.boom.handler`: the handler panics.
//! - `connector.boom.filtered` / `chat.boom.filtered`: a `before` filter panics on them.
//! - `connector.boom.armRoute`: the next `chat.*` message of this session panics in the route
//!   function (once).
//! - `connector.boom.armOff`: `on_client_off` panics when this client leaves (registered before
//!   the chat game's own, which must still run).
//! - `chat.boom.rpc`: calls the remote `chat.boom.remote` (which panics) on the other chat
//!   server, inline and later, and on this server itself; replies with each error and how long
//!   it took to arrive.

use std::time::Instant;

use kennel::{App, Session};
use serde_json::{Value, json};

#[path = "../../../chat-demo/src/game.rs"]
#[allow(dead_code)]
mod game;

/// Waits once for something not ready yet, so what follows runs in the spawned remainder.
async fn wait_once() {
    tokio::task::yield_now().await;
}

fn later(msg: &Value) -> bool {
    msg.get("later").and_then(Value::as_bool).unwrap_or(false)
}

/// The panic of `what`, typed as whatever the caller returns.
fn boom<T>(what: &str, later: bool) -> T {
    let when = if later { "later" } else { "inline" };
    panic!("boom in {what} ({when})")
}

fn setup(app: &App) {
    // Registered before the chat game's `on_client_off` (leave the room), which must still run.
    app.on_client_off(|_: App, s: Session| async move {
        if s.get::<bool>("boomOff") == Some(true) {
            panic!("boom in on_client_off of uid {:?}", s.uid());
        }
    });
    game::setup(app);

    // Replaces the chat game's route function: same pick, panicking once when armed.
    app.route("chat", |_: &App, s: &Session| {
        if s.get::<bool>("boomRoute") == Some(true) {
            s.delete("boomRoute");
            panic!("boom in the chat route function");
        }
        s.get::<String>("chatServerId")
    });
    app.before(|_: &App, _: &Session, route: &str, _: &[u8]| {
        if route.ends_with(".boom.filtered") {
            panic!("boom in a before filter on {route}");
        }
        true
    });

    for route in ["connector.boom.handler", "chat.boom.handler"] {
        app.handler(route, move |_: App, _: Session, msg: Value| async move {
            let later = later(&msg);
            if later {
                wait_once().await;
            }
            boom::<Option<Value>>(route, later)
        });
    }
    for route in ["connector.boom.filtered", "chat.boom.filtered"] {
        app.handler(route, |_: App, _: Session, _: Value| async move {
            Some(json!({"code": 0, "filter": "did not panic"}))
        });
    }
    // Arming sets the session flag the route function / `on_client_off` above look for.
    for (route, flag) in [
        ("connector.boom.armRoute", "boomRoute"),
        ("connector.boom.armOff", "boomOff"),
    ] {
        app.handler(route, move |_: App, s: Session, _: Value| async move {
            s.set(flag, true).expect("a bool fits the settings cap");
            Some(json!({"code": 0}))
        });
    }

    app.remote("chat.boom.remote", |_: App, msg: Value| async move {
        let later = later(&msg);
        if later {
            wait_once().await;
        }
        boom::<Value>("chat.boom.remote", later)
    });
    app.handler(
        "chat.boom.rpc",
        |app: App, _: Session, _: Value| async move {
            let other = app
                .server_ids_of_type("chat")
                .iter()
                .find(|id| *id != app.id())
                .cloned()
                .unwrap_or_default();
            let mut calls = Vec::new();
            for (target, later) in [
                (other.as_str(), false),
                (other.as_str(), true),
                (app.id(), false),
            ] {
                let started = Instant::now();
                let r = app
                    .rpc(target)
                    .call::<_, Value>("chat.boom.remote", &json!({"later": later}))
                    .await;
                calls.push(json!({
                    "target": target,
                    "later": later,
                    "ms": started.elapsed().as_millis() as u64,
                    "error": r.err().map(|e| e.to_string()),
                }));
            }
            Some(json!({"code": 0, "calls": calls}))
        },
    );
}

fn main() -> anyhow::Result<()> {
    let app = App::from_args()?;
    setup(&app);
    app.runtime()?.block_on(app.run())?;
    Ok(())
}
