//! The chat game (the contract of `peer-mydog-chat/README.md`): `connector` frontends log
//! players in and pick their chat server by room; `chat` backends keep rooms and broadcast.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kennel::{App, Session};
use serde_json::{Value, json};

/// Room state of one chat server: room -> {frontend id: [uids]} (the shape `send_by_group`
/// takes), and uid -> (room, frontend id).
#[derive(Default)]
struct Rooms {
    rooms: HashMap<String, HashMap<String, Vec<u64>>>,
    members: HashMap<u64, (String, String)>,
}

impl Rooms {
    fn leave(&mut self, uid: u64) {
        let Some((room, frontend_id)) = self.members.remove(&uid) else {
            return;
        };
        let Some(group) = self.rooms.get_mut(&room) else {
            return;
        };
        if let Some(uids) = group.get_mut(&frontend_id) {
            uids.retain(|u| *u != uid);
            if uids.is_empty() {
                group.remove(&frontend_id);
            }
        }
        if group.is_empty() {
            self.rooms.remove(&room);
        }
    }

    /// Joins `uid` to `room` (leaving any other); returns the room's size.
    fn join(&mut self, room: String, uid: u64, frontend_id: &str) -> usize {
        self.leave(uid);
        let group = self.rooms.entry(room.clone()).or_default();
        group.entry(frontend_id.to_string()).or_default().push(uid);
        self.members.insert(uid, (room, frontend_id.to_string()));
        group.values().map(Vec::len).sum()
    }

    fn group_of(&self, uid: u64) -> Option<HashMap<String, Vec<u64>>> {
        let (room, _) = self.members.get(&uid)?;
        self.rooms.get(room).cloned()
    }
}

/// The number at the end of a server id (`chat-server-12` -> 12).
fn id_number(id: &str) -> u64 {
    id.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Registers every handler, remote and callback of the chat game.
pub fn setup(app: &App) {
    let rooms = Arc::new(Mutex::new(Rooms::default()));

    // Client messages for type "chat" go to the chat server chosen at login.
    app.route("chat", |_app: &App, s: &Session| {
        s.get::<String>("chatServerId")
    });

    app.handler("connector.main.login", |app: App, s: Session, msg: Value| async move {
        let uid = msg.get("uid").and_then(Value::as_f64).map(|f| f as i64 as u32).unwrap_or(0) as u64;
        if let Some(bound) = s.uid() {
            return Some(json!({"code": 2, "uid": bound}));
        }
        if uid == 0 || !s.bind(uid) {
            return Some(json!({"code": 1}));
        }
        let room = msg.get("room").and_then(Value::as_f64).map(|f| f as i64).unwrap_or(0);
        let mut chats = app.servers_of_type("chat");
        chats.sort_by_key(|c| id_number(&c.id));
        let chat_server_id = if chats.is_empty() {
            String::new()
        } else {
            chats[room.rem_euclid(chats.len() as i64) as usize].id.clone()
        };
        // Small values: always within the 64 KiB cap on session settings.
        let _ = s.set("chatServerId", &chat_server_id);
        let _ = s.set("room", room);
        Some(json!({"code": 0, "uid": uid, "chatServerId": chat_server_id, "frontend": app.id()}))
    });

    app.handler(
        "connector.main.echo",
        |_: App, _: Session, msg: Value| async move { Some(msg) },
    );

    let r = rooms.clone();
    app.handler("chat.main.join", move |app: App, s: Session, msg: Value| {
        let rooms = r.clone();
        async move {
            let Some(uid) = s.uid() else {
                return Some(json!({"code": 1}));
            };
            let room = match msg.get("room") {
                Some(r) if !r.is_null() => r.clone(),
                _ => s.get::<Value>("room").unwrap_or(Value::Null),
            };
            // The room is the client's own JSON: `set` refuses one that would take the
            // session's settings past their 64 KiB cap (they travel with every message).
            if let Err(e) = s.set("room", &room) {
                return Some(json!({"code": 3, "err": e.to_string()}));
            }
            let size = rooms
                .lock()
                .unwrap()
                .join(room.to_string(), uid, s.frontend_id());
            // Tell the frontend's live session which room the player is in.
            s.apply().await;
            Some(json!({"code": 0, "room": room, "size": size, "chat": app.id()}))
        }
    });

    let r = rooms.clone();
    app.handler(
        "chat.main.send",
        move |app: App, s: Session, mut msg: Value| {
            let rooms = r.clone();
            async move {
                let Some(uid) = s.uid() else { return };
                let Some(group) = rooms.lock().unwrap().group_of(uid) else {
                    return;
                };
                let Some(obj) = msg.as_object_mut() else {
                    tracing::warn!(uid, "chat.main.send with a non-object message; ignored");
                    return;
                };
                obj.insert("u".into(), json!(uid));
                if let Err(e) = app.send_by_group("chat.main.onChat", &msg, &group).await {
                    tracing::warn!(uid, "broadcast failed: {e}");
                }
            }
        },
    );

    app.handler(
        "chat.main.echo",
        |_: App, _: Session, msg: Value| async move { Some(msg) },
    );

    app.handler(
        "chat.main.rpcEcho",
        |app: App, _: Session, msg: Value| async move {
            let ids = app.server_ids_of_type("chat");
            let target = match ids.iter().position(|i| i == app.id()) {
                Some(i) if ids.len() > 1 => ids[(i + 1) % ids.len()].clone(),
                _ => app.id().to_string(),
            };
            Some(
                match app
                    .rpc(&target)
                    .call::<_, Value>("chat.main.echo", &msg)
                    .await
                {
                    Ok(v) => v,
                    Err(e) => json!({"code": 1, "err": e.to_string()}),
                },
            )
        },
    );

    let r = rooms.clone();
    app.remote("chat.main.leave", move |_: App, uid: u64| {
        r.lock().unwrap().leave(uid);
        async {}
    });
    app.remote("chat.main.echo", |_: App, msg: Value| async move { msg });

    // Only logged-in players may talk: a send from a session without a uid never reaches the
    // handler (runs on the chat server, before the handler).
    app.before(|_: &App, s: &Session, route: &str, _: &[u8]| {
        route != "chat.main.send" || s.uid().is_some()
    });

    // A chat server that leaves is no longer picked at login (servers_of_type follows the
    // cluster); say so in the frontend's log.
    app.on_remove_server(|app: App, gone| {
        if gone.server_type == "chat" && app.is_frontend() {
            let left = app.servers_of_type("chat").len();
            tracing::info!(server = %gone.id, left, "chat server gone; logins use the remaining ones");
        }
    });

    // Graceful stop: runs on SIGTERM while the server still serves (`kennel stop` checks it).
    app.on_before_exit(|app: App| async move {
        tracing::info!(
            server = app.id(),
            clients = app.client_count(),
            "before exit"
        );
    });

    // `kennel list` shows each chat server's room and player counts as extra columns.
    let r = rooms.clone();
    app.status_fn(move |app: &App| {
        if app.is_frontend() {
            return Vec::new();
        }
        let r = r.lock().unwrap();
        vec![
            ("rooms".into(), r.rooms.len().to_string()),
            ("players".into(), r.members.len().to_string()),
        ]
    });

    // `kennel send status`: rooms and players of a chat server, clients of a connector;
    // `kennel send echo ...` echoes; anything else is an error.
    let r = rooms.clone();
    app.on_cli_send(move |app: App, args: Vec<String>| {
        let rooms = r.clone();
        async move {
            match args.first().map(String::as_str) {
                Some("status") if app.is_frontend() => {
                    Ok(format!("clients={}", app.client_count()))
                }
                Some("status") => {
                    let r = rooms.lock().unwrap();
                    Ok(format!(
                        "rooms={} players={}",
                        r.rooms.len(),
                        r.members.len()
                    ))
                }
                Some("echo") => Ok(args[1..].join(" ")),
                _ => Err(format!("unknown command {args:?} (try: status, echo ...)")),
            }
        }
    });

    // When a player disconnects, its chat server drops it from its room.
    app.on_client_off(|app: App, s: Session| async move {
        let (Some(uid), Some(chat)) = (s.uid(), s.get::<String>("chatServerId")) else {
            return;
        };
        if chat.is_empty() {
            return;
        }
        if let Err(e) = app.rpc(&chat).notify("chat.main.leave", &uid).await {
            tracing::warn!(uid, %chat, "leave notify failed: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_join_leave_and_groups() {
        let mut r = Rooms::default();
        assert_eq!(r.join("1".into(), 10, "c1"), 1);
        assert_eq!(r.join("1".into(), 11, "c2"), 2);
        assert_eq!(r.join("2".into(), 12, "c1"), 1);
        let g = r.group_of(10).unwrap();
        assert_eq!(g.get("c1"), Some(&vec![10]));
        assert_eq!(g.get("c2"), Some(&vec![11]));
        // Joining another room leaves the first.
        assert_eq!(r.join("2".into(), 10, "c1"), 2);
        assert_eq!(r.group_of(11).unwrap().len(), 1);
        r.leave(11);
        assert!(r.group_of(11).is_none());
        assert!(!r.rooms.contains_key("1"));
    }

    #[test]
    fn id_numbers_sort_numerically() {
        assert_eq!(id_number("chat-server-12"), 12);
        assert_eq!(id_number("x"), 0);
    }
}
