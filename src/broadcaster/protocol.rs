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
    Latency(LatencyReport),
}

/// A latency a client measured (`{"type":"latency","ms":N}`), sorted at the edge: the session
/// records a plausible one and counts an implausible one by its reason.
///
/// Implausible values are parsed rather than refused: they come from clients whose clock is
/// wrong, not from broken programs, and an operator wants to see how many there are
/// (`oddsfeed_browser_latency_rejected_total`) without their values in the histogram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LatencyReport {
    /// From 0 to [`MAX_PLAUSIBLE_LATENCY_MS`].
    Plausible {
        seconds: f64,
    },
    Implausible(ImplausibleLatency),
}

/// The largest latency taken as a measurement: the largest finite bucket of the `_seconds`
/// histograms (10 s). A larger value would land in `+Inf`, which `histogram_quantile` reports
/// as that bound, so one client could move the dashboard's p99 to 10 s; and a delay that long
/// is an outage, which the publisher status, the write timeouts and the server's own
/// publish → socket histogram show without trusting a client's clock.
pub const MAX_PLAUSIBLE_LATENCY_MS: f64 =
    crate::telemetry::SECONDS_BUCKETS[crate::telemetry::SECONDS_BUCKETS.len() - 1] * 1e3;

/// Why a latency report is not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImplausibleLatency {
    /// Below 0: the client's clock offset is wrong (a latency cannot be negative).
    Negative,
    /// Above [`MAX_PLAUSIBLE_LATENCY_MS`].
    TooLarge,
    /// `null`: `JSON.stringify` writes NaN and ±Infinity as `null` (JSON has neither).
    NotFinite,
}

impl ImplausibleLatency {
    /// Every label of `oddsfeed_browser_latency_rejected_total{reason}`.
    pub const LABELS: [&'static str; 3] = ["negative", "too_large", "not_finite"];

    pub fn label(self) -> &'static str {
        match self {
            ImplausibleLatency::Negative => Self::LABELS[0],
            ImplausibleLatency::TooLarge => Self::LABELS[1],
            ImplausibleLatency::NotFinite => Self::LABELS[2],
        }
    }
}

impl LatencyReport {
    /// Sorts a reported `ms` (`None`: the report said `null`).
    pub fn from_ms(ms: Option<f64>) -> Self {
        match ms {
            Some(ms) if !ms.is_finite() => Self::Implausible(ImplausibleLatency::NotFinite),
            None => Self::Implausible(ImplausibleLatency::NotFinite),
            Some(ms) if ms < 0.0 => Self::Implausible(ImplausibleLatency::Negative),
            Some(ms) if ms > MAX_PLAUSIBLE_LATENCY_MS => {
                Self::Implausible(ImplausibleLatency::TooLarge)
            }
            // `-0.0` is 0.
            Some(ms) => Self::Plausible {
                seconds: ms.abs() / 1e3,
            },
        }
    }
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
        Some("latency") => match object.get("ms") {
            Some(Value::Number(ms)) => RequestKind::Latency(LatencyReport::from_ms(ms.as_f64())),
            Some(Value::Null) => RequestKind::Latency(LatencyReport::from_ms(None)),
            _ => return Err(bad("\"ms\" must be a number".into())),
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

/// The server's clock at one instant, in `welcome`, `pong` and `latency` replies: Unix
/// milliseconds (`serverTime`) and the same instant in microseconds (`serverTimeUs`), with
/// which a client on a fast network estimates its clock offset to well below a millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerTime {
    server_time: i64,
    server_time_us: i64,
}

impl ServerTime {
    /// The instant `us` (Unix microseconds).
    pub fn at_us(us: i64) -> Self {
        Self {
            server_time: us.div_euclid(1000),
            server_time_us: us,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMessage<'a> {
    #[serde(rename_all = "camelCase")]
    Welcome {
        client_id: &'a str,
        #[serde(flatten)]
        time: ServerTime,
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
        #[serde(flatten)]
        time: ServerTime,
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
    #[serde(rename_all = "camelCase")]
    Latency {
        recorded: bool,
        /// Why the value was not recorded ([`ImplausibleLatency::label`]); absent when it was,
        /// or when another report was taken less than a second before.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
        /// As in `pong`: a report is also a ping for the client's clock offset.
        #[serde(flatten)]
        time: ServerTime,
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
            RequestKind::Latency(LatencyReport::Plausible { seconds: 0.0125 })
        );
    }

    #[test]
    fn latency_reports_are_sorted_not_refused() {
        use ImplausibleLatency::*;
        let report = |text: &str| match parse_request(text).map(|r| r.kind) {
            Ok(RequestKind::Latency(report)) => report,
            other => panic!("{text}: {other:?}"),
        };
        for (ms, seconds) in [("0", 0.0), ("-0.0", 0.0), ("0.4", 0.0004), ("10000", 10.0)] {
            assert_eq!(
                report(&format!(r#"{{"type":"latency","ms":{ms}}}"#)),
                LatencyReport::Plausible { seconds },
                "{ms}"
            );
        }
        for (ms, why) in [
            ("-5", Negative),
            ("-0.001", Negative),
            ("14700", TooLarge),
            ("10000.001", TooLarge),
            ("1e308", TooLarge),
            // What JSON.stringify makes of NaN and Infinity.
            ("null", NotFinite),
        ] {
            assert_eq!(
                report(&format!(r#"{{"type":"latency","ms":{ms}}}"#)),
                LatencyReport::Implausible(why),
                "{ms}"
            );
        }
        assert_eq!(
            LatencyReport::from_ms(Some(f64::NAN)),
            LatencyReport::Implausible(NotFinite)
        );
        assert_eq!(
            LatencyReport::from_ms(Some(f64::INFINITY)),
            LatencyReport::Implausible(NotFinite)
        );
        // The bound follows the histogram's largest finite bucket.
        assert_eq!(MAX_PLAUSIBLE_LATENCY_MS, 10_000.0);
        assert_eq!(
            [Negative, TooLarge, NotFinite].map(ImplausibleLatency::label),
            ImplausibleLatency::LABELS
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
            (r#"{"type":"latency","ms":"fast"}"#, "number"),
            (r#"{"type":"latency","ms":"NaN"}"#, "number"),
            (r#"{"type":"latency"}"#, "number"),
            // JSON has no NaN: not JSON at all.
            (r#"{"type":"latency","ms":NaN}"#, "malformed JSON"),
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
            time: ServerTime::at_us(9_123),
            heartbeat_ms: 25000,
        }
        .to_json();
        assert_eq!(
            text,
            r#"{"type":"welcome","clientId":"c1","serverTime":9,"serverTimeUs":9123,"heartbeatMs":25000}"#
        );
        let text = ServerMessage::Pong {
            time: ServerTime::at_us(9_123),
            id: None,
        }
        .to_json();
        assert_eq!(
            text,
            r#"{"type":"pong","serverTime":9,"serverTimeUs":9123}"#
        );
        let text = ServerMessage::Latency {
            recorded: false,
            reason: Some(ImplausibleLatency::TooLarge.label()),
            time: ServerTime::at_us(9_123),
            id: None,
        }
        .to_json();
        assert_eq!(
            text,
            r#"{"type":"latency","recorded":false,"reason":"too_large","serverTime":9,"serverTimeUs":9123}"#
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
