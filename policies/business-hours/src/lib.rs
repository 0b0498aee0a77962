//! `arp-policy-business-hours`: an example ARP policy that allows messages only during
//! business hours, Monday to Friday from 09:00 to 17:00 (17:00 itself is closed).
//!
//! The time is the request's `now_ms` (the host's clock; a policy never reads one itself)
//! seen in the IANA timezone named by the context's `time.tz`, e.g. `Europe/Berlin`, or in
//! UTC when there is none. An allow fires `business_hours`. Denies give a reason:
//! `outside_business_hours`, `unknown_timezone:<tz>` for a name that is not in the IANA
//! database (or a `time.tz` that is not a string), `invalid_now_ms:<ms>` for a time that
//! cannot be represented.

use arp_policy_sdk::serde_json::Value;
use arp_policy_sdk::{Decision, Policy, Request};
use chrono::{DateTime, Datelike, Timelike, Weekday};
use chrono_tz::Tz;

/// First hour of the business day (inclusive).
const OPENS_AT_HOUR: u32 = 9;
/// Hour the business day ends (exclusive).
const CLOSES_AT_HOUR: u32 = 17;

/// Allows weekdays from 09:00 to 17:00 in the request's timezone.
pub struct BusinessHours;

impl Policy for BusinessHours {
    fn evaluate(request: &Request) -> Decision {
        let tz_name = match request.context.get("time").and_then(|time| time.get("tz")) {
            None => "UTC",
            Some(Value::String(name)) => name.as_str(),
            Some(other) => return Decision::deny().reason(format!("unknown_timezone:{other}")),
        };
        let Ok(tz) = tz_name.parse::<Tz>() else {
            return Decision::deny().reason(format!("unknown_timezone:{tz_name}"));
        };
        let Some(now) = DateTime::from_timestamp_millis(request.now_ms) else {
            return Decision::deny().reason(format!("invalid_now_ms:{}", request.now_ms));
        };
        let local = now.with_timezone(&tz);
        let weekday = !matches!(local.weekday(), Weekday::Sat | Weekday::Sun);
        let hours = (OPENS_AT_HOUR..CLOSES_AT_HOUR).contains(&local.hour());
        if weekday && hours {
            Decision::allow().fired("business_hours")
        } else {
            Decision::deny().reason("outside_business_hours")
        }
    }
}

arp_policy_sdk::export_policy!(BusinessHours);

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use arp_policy_sdk::Entity;
    use arp_policy_sdk::serde_json::json;

    /// Monday 2025-07-07 10:00:00 UTC.
    const MONDAY_10_UTC: i64 = 1_751_882_400_000;

    fn decide(now_ms: i64, context: Value) -> Decision {
        BusinessHours::evaluate(
            &Request::new(
                Entity::new("Agent", "did:web:orion.agent"),
                "send_chat",
                Entity::new("Resource", "default"),
            )
            .with_now_ms(now_ms)
            .with_context(context),
        )
    }

    fn allowed_utc(now_ms: i64) -> bool {
        decide(now_ms, json!({})).is_allow()
    }

    #[test]
    fn allows_a_weekday_morning_in_utc() {
        let decision = decide(MONDAY_10_UTC, json!({}));
        assert!(decision.is_allow());
        assert_eq!(decision.policies_fired, ["business_hours"]);
        assert!(decision.reasons.is_empty());
    }

    #[test]
    fn opening_hours_are_half_open() {
        assert!(!allowed_utc(1_751_878_799_999)); // Mon 08:59:59.999
        assert!(allowed_utc(1_751_878_800_000)); // Mon 09:00:00.000
        assert!(allowed_utc(1_751_907_599_999)); // Mon 16:59:59.999
        let closed = decide(1_751_907_600_000, json!({})); // Mon 17:00:00.000
        assert!(!closed.is_allow());
        assert_eq!(closed.reasons, ["outside_business_hours"]);
        assert!(closed.policies_fired.is_empty());
    }

    #[test]
    fn weekends_are_closed() {
        assert!(!allowed_utc(1_751_716_800_000)); // Sat 2025-07-05 12:00 UTC
        assert!(!allowed_utc(1_751_716_800_000 + 86_400_000)); // Sun 12:00 UTC
    }

    #[test]
    fn timezone_moves_the_day_and_the_hour() {
        // Mon 07:30 UTC is 09:30 in Berlin (summer time).
        let berlin = json!({"time": {"tz": "Europe/Berlin"}});
        assert!(!allowed_utc(1_751_873_400_000));
        assert!(decide(1_751_873_400_000, berlin).is_allow());
        // Fri 23:30 UTC is Sat 08:30 in Tokyo; Mon 00:30 UTC is Mon 09:30 there.
        let tokyo = json!({"time": {"tz": "Asia/Tokyo"}});
        assert!(!decide(1_751_671_800_000, tokyo.clone()).is_allow());
        assert!(decide(1_751_848_200_000, tokyo).is_allow());
        // Fri 14:00 UTC is 10:00 in New York.
        let new_york = json!({"time": {"tz": "America/New_York", "now_ms": 0}});
        assert!(decide(1_751_637_600_000, new_york).is_allow());
    }

    #[test]
    fn unknown_timezone_is_denied_with_its_name() {
        let decision = decide(MONDAY_10_UTC, json!({"time": {"tz": "Mars/Olympus"}}));
        assert!(!decision.is_allow());
        assert_eq!(decision.reasons, ["unknown_timezone:Mars/Olympus"]);
        // Names are case-sensitive, as in the IANA database.
        let decision = decide(MONDAY_10_UTC, json!({"time": {"tz": "europe/berlin"}}));
        assert_eq!(decision.reasons, ["unknown_timezone:europe/berlin"]);
        let decision = decide(MONDAY_10_UTC, json!({"time": {"tz": 2}}));
        assert_eq!(decision.reasons, ["unknown_timezone:2"]);
    }

    #[test]
    fn unrepresentable_time_is_denied() {
        let decision = decide(i64::MAX, json!({}));
        assert!(!decision.is_allow());
        assert_eq!(decision.reasons, [format!("invalid_now_ms:{}", i64::MAX)]);
    }
}
