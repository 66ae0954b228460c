//! The message bus between publisher and broadcasters: Redis pub/sub plus the state keys
//! written atomically with each message.

pub mod redis;

pub use self::redis::{
    Expect, OddsBus, Outgoing, PublishOutcome, StateKeys, StoredState, connection, load_state,
    now_ms, now_us,
};
