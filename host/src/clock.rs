//! The host clock, as the protocol counts time: epoch milliseconds (UTC).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in epoch milliseconds (0 before 1970, saturating far in the future).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}
