//! The WebSocket protocol of docs/PROTOCOL.md: client messages (parsed, validated) and server
//! messages (serialised). Pure: no I/O.

use serde::Serialize;
use serde_json::Value;

use crate::odds::Event;

/// A client message after parsing. `id`, when given, is echoed in the reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub kind: RequestKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RequestKind {
    Subscribe {
        room: String,
        /// Resume point: both `epoch` and `seq`, or neither.
        resume: Option<(String, u64)>,
    },
    Unsubscribe {
        room: String,
    },
    Auth {
        token: String,
    },
    Rooms,
    Ping,
    Latency {
        ms: f64,
    },
}

/// Error codes of docs/PROTOCOL.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownRoom,
    Forbidden,
    Unauthorized,
    RateLimited,
    TooManyRooms,
    TooLarge,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownRoom => "unknown_room",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::TooLarge => "too_large",
        }
    }
}

/// A rejected client message: the code, a human-readable reason, and the echoed id.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
    pub id: Option<Value>,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>, id: Option<Value>) -> Self {
        Self {
            code,
            message: message.into(),
            id,
        }
    }
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// Parses one text frame. Never panics, whatever the input.
pub fn parse_request(text: &str) -> Result<Request, Rejection> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Rejection::new(ErrorCode::BadRequest, format!("malformed JSON: {e}"), None))?;
    let Value::Object(mut object) = value else {
        return Err(Rejection::new(
            ErrorCode::BadRequest,
            "a message must be a JSON object",
            None,
        ));
    };
    let id = object.remove("id");
    let bad = |message: String| Rejection::new(ErrorCode::BadRequest, message, id.clone());
    let kind = match object.get("type").and_then(Value::as_str) {
        None => return Err(bad("missing \"type\"".into())),
        Some("subscribe") => {
            let room = room_field(&object).map_err(bad)?;
            let epoch = object.get("epoch");
            let seq = object.get("seq");
            let resume = match (epoch, seq) {
                (None | Some(Value::Null), None | Some(Value::Null)) => None,
                (Some(Value::String(epoch)), Some(seq)) => match seq.as_u64() {
                    Some(seq) => Some((epoch.clone(), seq)),
                    None => return Err(bad("\"seq\" must be a non-negative integer".into())),
                },
                _ => {
                    return Err(bad(
                        "resume needs both \"epoch\" (string) and \"seq\" (integer)".into(),
                    ));
                }
            };
            RequestKind::Subscribe { room, resume }
        }
        Some("unsubscribe") => RequestKind::Unsubscribe {
            room: room_field(&object).map_err(bad)?,
        },
        Some("auth") => match object.get("token").and_then(Value::as_str) {
            Some(token) if !token.is_empty() => RequestKind::Auth {
                token: token.to_string(),
            },
            _ => return Err(bad("\"token\" must be a non-empty string".into())),
        },
        Some("rooms") => RequestKind::Rooms,
        Some("ping") => RequestKind::Ping,
        Some("latency") => match object.get("ms").and_then(Value::as_f64) {
            Some(ms) if ms.is_finite() && (0.0..=60_000.0).contains(&ms) => {
                RequestKind::Latency { ms }
            }
            Some(ms) => return Err(bad(format!("\"ms\" must be between 0 and 60000, got {ms}"))),
            None => return Err(bad("\"ms\" must be a number".into())),
        },
        Some(other) => {
            let shown: String = other.chars().take(32).collect();
            return Err(bad(format!("unknown message type {shown:?}")));
        }
    };
    Ok(Request { id, kind })
}

/// Longest room name: `event:` and the longest event id the publisher sends.
pub const MAX_ROOM_BYTES: usize = "event:".len() + super::room_name::MAX_EVENT_ID_BYTES;

fn room_field(object: &serde_json::Map<String, Value>) -> Result<String, String> {
    match object.get("room").and_then(Value::as_str) {
        Some(room) if !room.is_empty() && room.len() <= MAX_ROOM_BYTES => Ok(room.to_string()),
        Some(_) => Err(format!("\"room\" must be 1 to {MAX_ROOM_BYTES} bytes")),
        None => Err("\"room\" must be a string".into()),
    }
}

/// Messages the server sends. Shared frames (odds, snapshot, status, message) are built once per
/// room; replies are built per client.
/// One upsert of an `odds` message: a whole EVENT, or in the changes format the event's id,
/// version and changed fields ([`super::changes`]).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Upsert<'a> {
    Whole(&'a Event),
    Changes(&'a Value),
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMessage<'a> {
    #[serde(rename_all = "camelCase")]
    Welcome {
        client_id: &'a str,
        server_time: i64,
        heartbeat_ms: u64,
    },
    Subscribed {
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
    },
    Unsubscribed {
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
    },
    Snapshot {
        room: &'a str,
        epoch: &'a str,
        seq: u64,
        events: Vec<&'a Event>,
    },
    #[serde(rename_all = "camelCase")]
    Odds {
        room: &'a str,
        epoch: &'a str,
        seq: u64,
        published_at: i64,
        /// The same instant in microseconds, when the publisher sent it.
        #[serde(skip_serializing_if = "is_zero")]
        published_at_us: i64,
        /// `"changes"` in the changes format ([`super::changes`]); absent for whole events.
        #[serde(skip_serializing_if = "Option::is_none")]
        format: Option<&'static str>,
        upserts: Vec<Upsert<'a>>,
        removals: Vec<&'a str>,
    },
    Message {
        room: &'a str,
        channel: &'a str,
        data: &'a Value,
    },
    Status {
        room: &'a str,
        publisher: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    Pong {
        server_time: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
    },
    Rooms {
        rooms: Vec<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
    },
    Authenticated {
        sub: &'a str,
        role: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
    },
    Latency {
        recorded: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a Value>,
    },
}

impl ServerMessage<'_> {
    /// Serialises to a JSON text frame.
    pub fn to_json(&self) -> String {
        // Serialising these types cannot fail: every map key is a string and every number is
        // finite (the odds maths guarantees it).
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","code":"bad_request","message":"internal serialisation error: {e}"}}"#)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn parses_every_client_message() {
        let r = parse_request(r#"{"type":"subscribe","room":"sport:football","id":7}"#).unwrap();
        assert_eq!(r.id, Some(json!(7)));
        assert_eq!(
            r.kind,
            RequestKind::Subscribe {
                room: "sport:football".into(),
                resume: None
            }
        );
        let r = parse_request(r#"{"type":"subscribe","room":"sport:all","epoch":"e","seq":41}"#)
            .unwrap();
        assert_eq!(
            r.kind,
            RequestKind::Subscribe {
                room: "sport:all".into(),
                resume: Some(("e".into(), 41))
            }
        );
        assert_eq!(
            parse_request(r#"{"type":"unsubscribe","room":"x"}"#)
                .unwrap()
                .kind,
            RequestKind::Unsubscribe { room: "x".into() }
        );
        assert_eq!(
            parse_request(r#"{"type":"auth","token":"abc"}"#)
                .unwrap()
                .kind,
            RequestKind::Auth {
                token: "abc".into()
            }
        );
        assert_eq!(
            parse_request(r#"{"type":"rooms"}"#).unwrap().kind,
            RequestKind::Rooms
        );
        assert_eq!(
            parse_request(r#"{"type":"ping","id":"a"}"#).unwrap().id,
            Some(json!("a"))
        );
        assert_eq!(
            parse_request(r#"{"type":"latency","ms":12.5}"#)
                .unwrap()
                .kind,
            RequestKind::Latency { ms: 12.5 }
        );
    }

    #[test]
    fn rejects_bad_input_with_codes_and_ids() {
        for (text, needle) in [
            ("not json", "malformed JSON"),
            ("[1,2]", "JSON object"),
            (r#"{"room":"x"}"#, "missing"),
            (r#"{"type":"dance","id":3}"#, "unknown message type"),
            (r#"{"type":"subscribe"}"#, "room"),
            (r#"{"type":"subscribe","room":""}"#, "room"),
            (
                r#"{"type":"subscribe","room":"sport:all","seq":3}"#,
                "resume",
            ),
            (
                r#"{"type":"subscribe","room":"sport:all","epoch":"e","seq":-1}"#,
                "seq",
            ),
            (r#"{"type":"auth"}"#, "token"),
            (r#"{"type":"latency","ms":-1}"#, "between"),
            (r#"{"type":"latency","ms":60001}"#, "between"),
            (r#"{"type":"latency","ms":"fast"}"#, "number"),
        ] {
            let err = parse_request(text).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{text}");
            assert!(err.message.contains(needle), "{text}: {}", err.message);
        }
        assert_eq!(
            parse_request(r#"{"type":"dance","id":3}"#).unwrap_err().id,
            Some(json!(3))
        );
    }

    #[test]
    fn server_messages_match_the_contract() {
        let id = json!(5);
        let text = ServerMessage::Error {
            code: ErrorCode::TooManyRooms,
            message: "no",
            id: Some(&id),
        }
        .to_json();
        assert_eq!(
            text,
            r#"{"type":"error","code":"too_many_rooms","message":"no","id":5}"#
        );
        let text = ServerMessage::Welcome {
            client_id: "c1",
            server_time: 9,
            heartbeat_ms: 25000,
        }
        .to_json();
        assert_eq!(
            text,
            r#"{"type":"welcome","clientId":"c1","serverTime":9,"heartbeatMs":25000}"#
        );
        let text = ServerMessage::Odds {
            room: "sport:all",
            epoch: "e",
            seq: 2,
            published_at: 3,
            published_at_us: 0,
            format: None,
            upserts: vec![],
            removals: vec!["x"],
        }
        .to_json();
        assert_eq!(
            text,
            r#"{"type":"odds","room":"sport:all","epoch":"e","seq":2,"publishedAt":3,"upserts":[],"removals":["x"]}"#
        );
        let with_us = ServerMessage::Odds {
            room: "sport:all",
            epoch: "e",
            seq: 2,
            published_at: 3,
            published_at_us: 3_456,
            format: None,
            upserts: vec![],
            removals: vec![],
        }
        .to_json();
        assert!(
            with_us.contains(r#""publishedAt":3,"publishedAtUs":3456,"#),
            "{with_us}"
        );
        let patch = serde_json::json!({"id": "e", "version": 2});
        let changes = ServerMessage::Odds {
            room: "sport:all",
            epoch: "e",
            seq: 2,
            published_at: 3,
            published_at_us: 0,
            format: Some("changes"),
            upserts: vec![Upsert::Changes(&patch)],
            removals: vec![],
        }
        .to_json();
        assert_eq!(
            changes,
            r#"{"type":"odds","room":"sport:all","epoch":"e","seq":2,"publishedAt":3,"format":"changes","upserts":[{"id":"e","version":2}],"removals":[]}"#
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_any_text(text in ".{0,200}") {
            let _ = parse_request(&text);
        }

        #[test]
        fn never_panics_on_json_shaped_input(t in "[a-z]{0,12}", room in ".{0,140}", seq in proptest::num::i64::ANY) {
            let text = json!({"type": t, "room": room, "epoch": "e", "seq": seq, "ms": seq}).to_string();
            let _ = parse_request(&text);
        }
    }
}
