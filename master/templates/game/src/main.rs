//! hello-game: a gate (frontend) and room servers (backend) on kennel.

use std::collections::HashMap;
use std::sync::Mutex;

use kennel::{App, Session};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Login {
    uid: u64,
    room: u32,
}

#[derive(Deserialize)]
struct Say {
    text: String,
}

/// Room members on a room server: room -> (uid -> frontend id).
#[derive(Default)]
struct Rooms(Mutex<HashMap<u32, HashMap<u64, String>>>);

kennel::remote_route!(
    /// How many players a room server holds.
    RoomCount = "room.remote.count", fn(()) -> usize
);
kennel::remote_route!(
    /// A player left the game.
    RoomLeave = "room.remote.leave", fn(u64) -> ()
);

fn main() -> anyhow::Result<()> {
    let app = App::from_args()?;

    // ---- gate (frontend)
    app.handler("gate.main.login", |_app: App, s: Session, m: Login| async move {
        if !s.bind(m.uid) {
            return Some(json!({"code": 1}));
        }
        // Settings travel with every forwarded message (capped at 64 KiB: a number fits).
        let _ = s.set("room", m.room);
        Some(json!({"code": 0}))
    });
    app.route("room", |app: &App, s: &Session| {
        let room: u32 = s.get("room")?;
        let servers = app.servers_of_type("room");
        (!servers.is_empty()).then(|| servers[room as usize % servers.len()].id.clone())
    });
    app.handler("gate.main.stats", |app: App, _s: Session, _m: Value| async move {
        let mut players = 0;
        for server in app.servers_of_type("room") {
            match app.rpc(&server.id).call_typed(RoomCount, &()).await {
                Ok(n) => players += n,
                Err(e) => return Some(json!({"code": 1, "error": e.to_string()})),
            }
        }
        Some(json!({"code": 0, "players": players}))
    });
    app.on_client_off(|app: App, s: Session| async move {
        if let Some(uid) = s.uid() {
            let _ = app.rpc("*").notify_typed(RoomLeave, &uid).await;
        }
    });

    // ---- room (backend)
    app.configure("room", |app| {
        app.set("rooms", Rooms::default());
        // Filters run on the server that handles the message: here, room servers only.
        app.before(|_app: &App, s: &Session, _route: &str, _body: &[u8]| s.uid().is_some());
    });
    app.handler("room.main.join", |app: App, s: Session, _m: Value| async move {
        let (rooms, room, uid) = (app.get::<Rooms>("rooms")?, s.get::<u32>("room")?, s.uid()?);
        let mut all = rooms.0.lock().unwrap();
        let members = all.entry(room).or_default();
        members.insert(uid, s.frontend_id().to_string());
        Some(json!({"code": 0, "room": room, "size": members.len(), "server": app.id()}))
    });
    app.handler("room.main.say", |app: App, s: Session, m: Say| async move {
        let Some(rooms) = app.get::<Rooms>("rooms") else { return };
        let room = s.get::<u32>("room").unwrap_or_default();
        let members: Vec<(u64, String)> = rooms.0.lock().unwrap().get(&room)
            .map(|m| m.iter().map(|(uid, frontend)| (*uid, frontend.clone())).collect())
            .unwrap_or_default();
        let push = json!({"from": s.uid(), "text": m.text});
        if let Err(e) = app.send_by_uid_sid("onSay", &push, &members).await {
            eprintln!("push failed: {e}");
        }
    });
    app.remote_typed(RoomCount, |app: App, ()| async move {
        let rooms = app.get::<Rooms>("rooms");
        Ok::<_, String>(rooms.map_or(0, |r| r.0.lock().unwrap().values().map(HashMap::len).sum()))
    });
    app.remote_typed(RoomLeave, |app: App, uid: u64| async move {
        if let Some(rooms) = app.get::<Rooms>("rooms") {
            for members in rooms.0.lock().unwrap().values_mut() {
                members.remove(&uid);
            }
        }
        Ok::<_, String>(())
    });

    // One thread, like a mydog server, unless this server's entry says "threads": N.
    app.runtime()?.block_on(app.run())?;
    Ok(())
}
