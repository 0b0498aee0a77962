//! The audit hash chain (ARP-PROTOCOL §3): one entry per decision or owner action on a
//! connection, each carrying `self_hash` = `"sha256:"` + hex SHA-256 of the RFC 8785 (JCS)
//! text of its nine hashed fields, and the `self_hash` of the entry before it as
//! `prev_hash`. Byte-compatible with the reference (`packages/audit/src/log.ts`): the same
//! fields give the same hashes, and a JSONL file gives the same verification result.
//!
//! Where to start reading: [`AuditEntry::next`] makes the next entry of a chain;
//! [`verify_chain`] checks typed entries; [`verify_jsonl`] and [`verify_reader`] check the
//! file form line by line exactly as the reference `verifyFile` does.

use std::fmt;
use std::io::{self, BufRead};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::pdp::Obligation;

/// `prev_hash` of the first entry (seq 0) of every chain.
pub const GENESIS_PREV_HASH: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// The fields that are hashed, in the reference's order. `self_hash` is not one of them, and
/// members other than these nine (on a line of a file) are ignored.
pub const HASHED_FIELDS: [&str; 9] = [
    "seq",
    "timestamp",
    "msg_id",
    "decision",
    "policies_fired",
    "obligations",
    "spend_delta_cents",
    "reason",
    "prev_hash",
];

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;
/// `0000-01-01T00:00:00.000Z`, the first instant with a four-digit year.
const MIN_TIMESTAMP_MS: i64 = -62_167_219_200_000;
/// `9999-12-31T23:59:59.999Z`, the last instant with a four-digit year.
const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// Why an entry could not be made or hashed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The hashed fields have no RFC 8785 form (a non-finite number).
    #[error("cannot canonicalise the entry: {0}")]
    Canonicalize(#[source] serde_json::Error),
    /// The entry could not be written as JSON.
    #[error("cannot serialise the entry: {0}")]
    Serialize(#[source] serde_json::Error),
    /// The instant has no `YYYY-MM-DDTHH:MM:SS.mmmZ` form.
    #[error("timestamp {0} ms is outside the years 0000 to 9999")]
    TimestampOutOfRange(i64),
    /// A timestamp string is not `YYYY-MM-DDTHH:MM:SS.mmmZ` (exactly 3 fraction digits).
    #[error("timestamp {0:?} is not of the form YYYY-MM-DDTHH:MM:SS.mmmZ")]
    InvalidTimestamp(String),
    /// The previous entry has the largest possible seq.
    #[error("seq {0} has no successor")]
    SeqOverflow(u64),
}

/// What an entry records: a policy decision or an owner action on the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditDecision {
    /// The message was delivered.
    Allow,
    /// The message was refused.
    Deny,
    /// The owner revoked the connection.
    Revoke,
    /// The owner suspended the connection.
    Suspend,
    /// The owner resumed the connection.
    Resume,
    /// The owner changed the connection's scopes.
    Rescope,
}

impl AuditDecision {
    /// The wire form (`allow`, `deny`, `revoke`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Revoke => "revoke",
            Self::Suspend => "suspend",
            Self::Resume => "resume",
            Self::Rescope => "rescope",
        }
    }
}

/// One entry of a chain: the nine hashed fields and `self_hash`. Members are declared in
/// the order of the reference's file lines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the chain, from 0.
    pub seq: u64,
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ` (see [`format_timestamp`]).
    pub timestamp: String,
    /// Id of the message decided, or of the owner action.
    pub msg_id: String,
    /// What was decided.
    pub decision: AuditDecision,
    /// Ids of the policies that fired, in the order the PDP gave them (order is hashed).
    pub policies_fired: Vec<String>,
    /// Obligations attached to the decision.
    pub obligations: Vec<Obligation>,
    /// Spend recorded by this entry, in cents (0 when none).
    pub spend_delta_cents: i64,
    /// Why, or `null`.
    pub reason: Option<String>,
    /// `self_hash` of the previous entry, or [`GENESIS_PREV_HASH`].
    pub prev_hash: String,
    /// `"sha256:"` + lowercase hex SHA-256 of the JCS text of the nine fields above.
    pub self_hash: String,
}

/// The fields of a new entry; the chain supplies `seq`, `prev_hash` and `self_hash`.
#[derive(Clone, Debug, PartialEq)]
pub struct NewAuditEntry {
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`, e.g. from [`format_timestamp`].
    pub timestamp: String,
    /// Id of the message decided, or of the owner action.
    pub msg_id: String,
    /// What was decided.
    pub decision: AuditDecision,
    /// Ids of the policies that fired.
    pub policies_fired: Vec<String>,
    /// Obligations attached to the decision.
    pub obligations: Vec<Obligation>,
    /// Spend in cents (0 when none).
    pub spend_delta_cents: i64,
    /// Why, or `None` for `null`.
    pub reason: Option<String>,
}

/// The nine hashed fields, borrowed: what JCS is applied to.
#[derive(Serialize)]
struct HashedFields<'a> {
    seq: u64,
    timestamp: &'a str,
    msg_id: &'a str,
    decision: AuditDecision,
    policies_fired: &'a [String],
    obligations: &'a [Obligation],
    spend_delta_cents: i64,
    reason: Option<&'a str>,
    prev_hash: &'a str,
}

impl AuditEntry {
    /// The entry that follows `prev` (or starts a chain when `prev` is `None`), with its
    /// `seq`, `prev_hash` and `self_hash` filled in.
    pub fn next(prev: Option<&AuditEntry>, fields: NewAuditEntry) -> Result<Self, AuditError> {
        if parse_timestamp(&fields.timestamp).is_none() {
            return Err(AuditError::InvalidTimestamp(fields.timestamp));
        }
        let (seq, prev_hash) = match prev {
            None => (0, GENESIS_PREV_HASH.to_owned()),
            Some(prev) => (
                prev.seq
                    .checked_add(1)
                    .ok_or(AuditError::SeqOverflow(prev.seq))?,
                prev.self_hash.clone(),
            ),
        };
        let mut entry = Self {
            seq,
            timestamp: fields.timestamp,
            msg_id: fields.msg_id,
            decision: fields.decision,
            policies_fired: fields.policies_fired,
            obligations: fields.obligations,
            spend_delta_cents: fields.spend_delta_cents,
            reason: fields.reason,
            prev_hash,
            self_hash: String::new(),
        };
        entry.self_hash = entry.compute_self_hash()?;
        Ok(entry)
    }

    /// The RFC 8785 text of the nine hashed fields (what `self_hash` is the hash of).
    pub fn jcs(&self) -> Result<String, AuditError> {
        serde_json_canonicalizer::to_string(&self.hashed_fields()).map_err(AuditError::Canonicalize)
    }

    /// `self_hash` as it should be for the current fields.
    pub fn compute_self_hash(&self) -> Result<String, AuditError> {
        Ok(tagged_sha256(self.jcs()?.as_bytes()))
    }

    /// The entry as one line of the file form (JSON, no trailing newline).
    pub fn to_jsonl_line(&self) -> Result<String, AuditError> {
        serde_json::to_string(self).map_err(AuditError::Serialize)
    }

    fn hashed_fields(&self) -> HashedFields<'_> {
        HashedFields {
            seq: self.seq,
            timestamp: &self.timestamp,
            msg_id: &self.msg_id,
            decision: self.decision,
            policies_fired: &self.policies_fired,
            obligations: &self.obligations,
            spend_delta_cents: self.spend_delta_cents,
            reason: self.reason.as_deref(),
            prev_hash: &self.prev_hash,
        }
    }
}

fn tagged_sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Formats epoch milliseconds (UTC) as `YYYY-MM-DDTHH:MM:SS.mmmZ`, the form JavaScript's
/// `Date.prototype.toISOString` gives for years 0000 to 9999.
pub fn format_timestamp(epoch_ms: i64) -> Result<String, AuditError> {
    if !(MIN_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(&epoch_ms) {
        return Err(AuditError::TimestampOutOfRange(epoch_ms));
    }
    let (year, month, day) = civil_from_days(epoch_ms.div_euclid(DAY_MS));
    let ms = epoch_ms.rem_euclid(DAY_MS);
    Ok(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    ))
}

/// Epoch milliseconds of a `YYYY-MM-DDTHH:MM:SS.mmmZ` timestamp; `None` when the text is
/// not exactly that form or names no real instant (month 13, February 30, hour 24, ...).
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() != 24 {
        return None;
    }
    for (at, separator) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        if bytes.get(at) != Some(&separator) {
            return None;
        }
    }
    let number = |from: usize, to: usize| -> Option<i64> {
        let digits = text.get(from..to)?;
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    };
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second, milli) = (
        number(11, 13)?,
        number(14, 16)?,
        number(17, 19)?,
        number(20, 23)?,
    );
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let ms = days_from_civil(year, month, day) * DAY_MS
        + ((hour * 60 + minute) * 60 + second) * 1000
        + milli;
    // Out-of-range months and days normalise to another date: refuse those.
    (format_timestamp(ms).ok()? == text).then_some(ms)
}

/// (year, month 1-12, day 1-31) of a day counted from 1970-01-01 (proleptic Gregorian),
/// after Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`] (month and day are not range-checked).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Why a chain is broken at an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainBreak {
    /// The line is not JSON.
    Parse {
        /// The parser's message.
        message: String,
    },
    /// The entry's `seq` is not its position.
    Seq {
        /// The `seq` found, as JavaScript would print it (`undefined` when absent).
        got: String,
    },
    /// The entry's `prev_hash` is not the previous entry's `self_hash` (or the genesis
    /// value for the first entry).
    PrevHash,
    /// The entry's `self_hash` is not the hash of its fields.
    SelfHash,
    /// The fields have no RFC 8785 form (cannot happen for parsed JSON; the reference
    /// throws here).
    Unhashable {
        /// Why.
        message: String,
    },
}

impl ChainBreak {
    /// The reference's `error` text for a break at position `at`.
    fn reference_error(&self, at: u64) -> String {
        match self {
            Self::Parse { message } => format!("parse error at line {at}: {message}"),
            Self::Seq { got } => format!("seq mismatch at line {at}: got {got}"),
            Self::PrevHash => format!("prev_hash mismatch at seq {at}"),
            Self::SelfHash => format!("self_hash mismatch at seq {at}"),
            Self::Unhashable { message } => {
                format!("cannot canonicalise the entry at seq {at}: {message}")
            }
        }
    }
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Parse { message } => write!(f, "parse error: {message}"),
            Self::Seq { got } => write!(f, "seq mismatch (the entry has seq {got})"),
            Self::PrevHash => f.write_str("prev_hash mismatch"),
            Self::SelfHash => f.write_str("self_hash mismatch"),
            Self::Unhashable { message } => write!(f, "cannot canonicalise the entry: {message}"),
        }
    }
}

/// The result of verifying a chain. Serialises to the reference's
/// `{valid, entriesSeen, firstBreakAt?, error?}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    /// No break was found.
    pub valid: bool,
    /// Entries checked and found good (all of them when valid).
    pub entries_seen: u64,
    /// Position of the first broken entry (counting non-empty lines from 0 in the file form).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_break_at: Option<u64>,
    /// The reference's text for the first break, e.g. `self_hash mismatch at seq 7`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The first break, typed.
    #[serde(skip)]
    pub reason: Option<ChainBreak>,
}

impl VerifyReport {
    fn valid(entries: u64) -> Self {
        Self {
            valid: true,
            entries_seen: entries,
            first_break_at: None,
            error: None,
            reason: None,
        }
    }

    fn broken(at: u64, reason: ChainBreak) -> Self {
        Self {
            valid: false,
            entries_seen: at,
            first_break_at: Some(at),
            error: Some(reason.reference_error(at)),
            reason: Some(reason),
        }
    }
}

/// Walks a chain one entry at a time, remembering only the next position and hash.
struct Walker {
    next_seq: u64,
    expected_prev: String,
}

impl Walker {
    fn new() -> Self {
        Self {
            next_seq: 0,
            expected_prev: GENESIS_PREV_HASH.to_owned(),
        }
    }

    fn accept(&mut self, self_hash: String) {
        self.expected_prev = self_hash;
        self.next_seq += 1;
    }

    /// Checks one typed entry.
    fn entry(&mut self, entry: &AuditEntry) -> Result<(), ChainBreak> {
        if entry.seq != self.next_seq {
            return Err(ChainBreak::Seq {
                got: entry.seq.to_string(),
            });
        }
        if entry.prev_hash != self.expected_prev {
            return Err(ChainBreak::PrevHash);
        }
        let computed = entry
            .compute_self_hash()
            .map_err(|error| ChainBreak::Unhashable {
                message: error.to_string(),
            })?;
        if computed != entry.self_hash {
            return Err(ChainBreak::SelfHash);
        }
        self.accept(computed);
        Ok(())
    }

    /// Checks one non-empty line of the file form, as the reference does: `JSON.parse`,
    /// then strict equality of `seq` with the position, of `prev_hash` with the expected
    /// hash, and of `self_hash` with the hash of whichever of the nine fields are present.
    fn line(&mut self, raw: &str) -> Result<(), ChainBreak> {
        let entry: Value = serde_json::from_str(raw).map_err(|error| ChainBreak::Parse {
            message: error.to_string(),
        })?;
        // `JSON.parse` gives a primitive or an array for some lines: they have no members.
        let member = |name: &str| entry.as_object().and_then(|object| object.get(name));

        let seq = member("seq");
        // JavaScript numbers are doubles: `4.0` and `4` are the same seq.
        #[allow(clippy::cast_precision_loss)]
        let expected_seq = self.next_seq as f64;
        if seq.and_then(Value::as_f64) != Some(expected_seq) {
            return Err(ChainBreak::Seq {
                got: js_to_string(seq),
            });
        }
        if member("prev_hash").and_then(Value::as_str) != Some(self.expected_prev.as_str()) {
            return Err(ChainBreak::PrevHash);
        }
        // A missing member is left out of the hashed object (JavaScript `undefined`), which
        // is not the same as `null`.
        let hashed: std::collections::BTreeMap<&str, &Value> = HASHED_FIELDS
            .iter()
            .filter_map(|&name| member(name).map(|value| (name, value)))
            .collect();
        let text = serde_json_canonicalizer::to_string(&hashed).map_err(|error| {
            ChainBreak::Unhashable {
                message: error.to_string(),
            }
        })?;
        let computed = tagged_sha256(text.as_bytes());
        if member("self_hash").and_then(Value::as_str) != Some(computed.as_str()) {
            return Err(ChainBreak::SelfHash);
        }
        self.accept(computed);
        Ok(())
    }
}

/// JavaScript's `String(value)` for a parsed JSON value (`undefined` when absent), as the
/// reference prints a wrong `seq`.
fn js_to_string(value: Option<&Value>) -> String {
    match value {
        None => "undefined".to_owned(),
        Some(Value::Null) => "null".to_owned(),
        Some(Value::Bool(flag)) => flag.to_string(),
        Some(Value::Number(number)) => {
            serde_json_canonicalizer::to_string(number).unwrap_or_else(|_| number.to_string())
        }
        Some(Value::String(text)) => text.clone(),
        // `Array.prototype.join(",")`: null elements print as nothing.
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::Null => String::new(),
                other => js_to_string(Some(other)),
            })
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Object(_)) => "[object Object]".to_owned(),
    }
}

/// Verifies typed entries: `seq` from 0, each `prev_hash` the previous `self_hash` (the
/// genesis value first), each `self_hash` the hash of its fields. Reports the first break.
pub fn verify_chain(entries: &[AuditEntry]) -> VerifyReport {
    let mut walker = Walker::new();
    for entry in entries {
        if let Err(reason) = walker.entry(entry) {
            return VerifyReport::broken(walker.next_seq, reason);
        }
    }
    VerifyReport::valid(walker.next_seq)
}

/// Verifies the file form (JSONL) with the reference `verifyFile`'s semantics: lines are
/// split on `\n` only, empty lines are skipped and do not count as positions, a trailing
/// `\r` is JSON whitespace, members other than the nine hashed ones are ignored, and the
/// first line that does not parse, or does not chain, is the break.
pub fn verify_jsonl(text: &str) -> VerifyReport {
    let mut walker = Walker::new();
    for line in text.split('\n').filter(|line| !line.is_empty()) {
        if let Err(reason) = walker.line(line) {
            return VerifyReport::broken(walker.next_seq, reason);
        }
    }
    VerifyReport::valid(walker.next_seq)
}

/// [`verify_jsonl`] over a reader, one line in memory at a time. Bytes that are not UTF-8
/// become U+FFFD, as when the reference reads the file as `utf8`.
pub fn verify_reader<R: BufRead>(mut reader: R) -> io::Result<VerifyReport> {
    let mut walker = Walker::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(VerifyReport::valid(walker.next_seq));
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.is_empty() {
            continue;
        }
        if let Err(reason) = walker.line(&String::from_utf8_lossy(&line)) {
            return Ok(VerifyReport::broken(walker.next_seq, reason));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const GOLDEN: &str = include_str!("../../tests/vectors/audit-chain.jsonl");
    const JCS_VECTORS: &str = include_str!("../../tests/vectors/audit-jcs.json");
    const TAMPERED: &str = include_str!("../../tests/vectors/audit-chain-tampered.json");

    fn golden_entries() -> Vec<AuditEntry> {
        GOLDEN
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn fields_of(entry: &AuditEntry) -> NewAuditEntry {
        NewAuditEntry {
            timestamp: entry.timestamp.clone(),
            msg_id: entry.msg_id.clone(),
            decision: entry.decision,
            policies_fired: entry.policies_fired.clone(),
            obligations: entry.obligations.clone(),
            spend_delta_cents: entry.spend_delta_cents,
            reason: entry.reason.clone(),
        }
    }

    fn sample(n: i64) -> NewAuditEntry {
        NewAuditEntry {
            timestamp: format_timestamp(1_776_859_200_000 + n * 1_001).unwrap(),
            msg_id: format!("msg-{n}"),
            decision: if n % 3 == 0 {
                AuditDecision::Deny
            } else {
                AuditDecision::Allow
            },
            policies_fired: vec![format!("policy{}", n % 4)],
            obligations: vec![Obligation {
                kind: "spend_cap".into(),
                params: serde_json::json!({"max_cents": n * 100, "ratio": 0.5 + n as f64}),
            }],
            spend_delta_cents: n - 2,
            reason: (n % 2 == 0).then(|| format!("reason {n}")),
        }
    }

    fn build_chain(len: i64) -> Vec<AuditEntry> {
        let mut chain: Vec<AuditEntry> = Vec::new();
        for n in 0..len {
            let entry = AuditEntry::next(chain.last(), sample(n)).unwrap();
            chain.push(entry);
        }
        chain
    }

    #[test]
    fn golden_chain_verifies() {
        let report = verify_jsonl(GOLDEN);
        assert_eq!(report, VerifyReport::valid(25));
        assert_eq!(
            serde_json::to_value(&report).unwrap(),
            serde_json::json!({"valid": true, "entriesSeen": 25})
        );
        assert_eq!(verify_chain(&golden_entries()), VerifyReport::valid(25));
    }

    #[test]
    fn every_jcs_text_and_self_hash_is_reproduced() {
        let vectors: Value = serde_json::from_str(JCS_VECTORS).unwrap();
        let hashed: Vec<&str> = vectors["hashed_fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|name| name.as_str().unwrap())
            .collect();
        assert_eq!(hashed, HASHED_FIELDS);
        let expected = vectors["entries"].as_array().unwrap();
        let entries = golden_entries();
        assert_eq!(expected.len(), entries.len());
        for (entry, vector) in entries.iter().zip(expected) {
            assert_eq!(vector["seq"].as_u64(), Some(entry.seq));
            assert_eq!(entry.jcs().unwrap(), vector["jcs"].as_str().unwrap());
            assert_eq!(entry.compute_self_hash().unwrap(), vector["self_hash"]);
            assert_eq!(entry.self_hash, vector["self_hash"]);
        }
    }

    #[test]
    fn the_constructor_reproduces_the_golden_chain() {
        let mut rebuilt: Vec<AuditEntry> = Vec::new();
        for golden in golden_entries() {
            let entry = AuditEntry::next(rebuilt.last(), fields_of(&golden)).unwrap();
            assert_eq!(entry, golden);
            rebuilt.push(entry);
        }
        assert_eq!(rebuilt.len(), 25);
    }

    #[test]
    fn a_constructed_chain_verifies_and_links() {
        let chain = build_chain(12);
        assert_eq!(verify_chain(&chain), VerifyReport::valid(12));
        assert_eq!(chain[0].seq, 0);
        assert_eq!(chain[0].prev_hash, GENESIS_PREV_HASH);
        for pair in chain.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq + 1);
            assert_eq!(pair[1].prev_hash, pair[0].self_hash);
        }
        for entry in &chain {
            assert!(entry.self_hash.starts_with("sha256:"));
            assert_eq!(entry.self_hash.len(), 7 + 64);
            assert_eq!(entry.compute_self_hash().unwrap(), entry.self_hash);
        }
        // The file form of the chain verifies too.
        let text: String = chain
            .iter()
            .map(|entry| entry.to_jsonl_line().unwrap() + "\n")
            .collect();
        assert_eq!(verify_jsonl(&text), VerifyReport::valid(12));
    }

    #[test]
    fn verify_chain_reports_the_first_break() {
        let chain = build_chain(6);

        let mut tampered = chain.clone();
        tampered[3].decision = AuditDecision::Allow;
        tampered[3].msg_id = "other".into();
        assert_eq!(
            verify_chain(&tampered),
            VerifyReport::broken(3, ChainBreak::SelfHash)
        );

        let mut tampered = chain.clone();
        tampered[4].seq = 40;
        let report = verify_chain(&tampered);
        assert_eq!(
            report.error.as_deref(),
            Some("seq mismatch at line 4: got 40")
        );

        let mut tampered = chain.clone();
        tampered.remove(0);
        assert_eq!(verify_chain(&tampered).first_break_at, Some(0));

        // Rewriting an entry and rehashing it shows on the next one.
        let mut tampered = chain.clone();
        tampered[2].reason = Some("rewritten".into());
        tampered[2].self_hash = tampered[2].compute_self_hash().unwrap();
        assert_eq!(
            verify_chain(&tampered),
            VerifyReport::broken(3, ChainBreak::PrevHash)
        );

        assert_eq!(verify_chain(&[]), VerifyReport::valid(0));
    }

    #[test]
    fn a_long_chain_verifies_without_recursion() {
        let chain = build_chain(5_000);
        assert_eq!(verify_chain(&chain), VerifyReport::valid(5_000));
        let mut text = String::new();
        for entry in &chain {
            text.push_str(&entry.to_jsonl_line().unwrap());
            text.push('\n');
        }
        assert_eq!(verify_jsonl(&text), VerifyReport::valid(5_000));
        assert_eq!(
            verify_reader(text.as_bytes()).unwrap(),
            VerifyReport::valid(5_000)
        );
    }

    #[test]
    fn every_tampered_variant_gives_the_reference_result() {
        let vectors: Value = serde_json::from_str(TAMPERED).unwrap();
        let variants = vectors["variants"].as_array().unwrap();
        assert_eq!(variants.len(), 24);
        for variant in variants {
            let name = variant["name"].as_str().unwrap();
            let content = variant["content"].as_str().unwrap();
            let expected = &variant["expected"];
            for report in [
                verify_jsonl(content),
                verify_reader(content.as_bytes()).unwrap(),
            ] {
                assert_eq!(Some(report.valid), expected["valid"].as_bool(), "{name}");
                assert_eq!(
                    Some(report.entries_seen),
                    expected["entriesSeen"].as_u64(),
                    "{name}"
                );
                assert_eq!(
                    report.first_break_at,
                    expected["firstBreakAt"].as_u64(),
                    "{name}"
                );
                match variant["error_prefix"].as_str() {
                    Some(prefix) => {
                        let error = report.error.unwrap();
                        assert!(error.starts_with(prefix), "{name}: {error}");
                        assert!(
                            matches!(report.reason, Some(ChainBreak::Parse { .. })),
                            "{name}"
                        );
                    }
                    None => assert_eq!(
                        report.error.as_deref(),
                        expected["error"].as_str(),
                        "{name}"
                    ),
                }
            }
        }
    }

    #[test]
    fn lines_follow_the_javascript_reading() {
        let lines: Vec<&str> = GOLDEN.lines().collect();
        // A line of spaces is not empty: JSON.parse fails on it.
        let spaced = format!("{}\n   \n{}\n", lines[0], lines[1]);
        let report = verify_jsonl(&spaced);
        assert_eq!(report.first_break_at, Some(1));
        assert!(matches!(report.reason, Some(ChainBreak::Parse { .. })));
        // A CRLF blank line is "\r", also not empty.
        let crlf = format!("{}\r\n\r\n{}\r\n", lines[0], lines[1]);
        assert_eq!(verify_jsonl(&crlf).first_break_at, Some(1));
        // Non-objects have no seq; a wrong type prints as JavaScript would.
        let report = verify_jsonl("5\n");
        assert_eq!(
            report.error.as_deref(),
            Some("seq mismatch at line 0: got undefined")
        );
        let report = verify_jsonl("{\"seq\":[1,null,\"a\",{}]}");
        assert_eq!(
            report.error.as_deref(),
            Some("seq mismatch at line 0: got 1,,a,[object Object]")
        );
        let report = verify_jsonl("{\"seq\":\"0\"}");
        assert_eq!(
            report.error.as_deref(),
            Some("seq mismatch at line 0: got 0")
        );
        let report = verify_jsonl("{\"seq\":1e21}");
        assert_eq!(
            report.error.as_deref(),
            Some("seq mismatch at line 0: got 1e+21")
        );
        // 0.0 is the number 0: the seq check passes and the hash decides.
        let respelled = lines[0].replacen("\"seq\":0", "\"seq\":0.0", 1);
        assert_eq!(verify_jsonl(&respelled), VerifyReport::valid(1));
        // Invalid UTF-8 is replaced, not fatal to the reading.
        let mut bytes = format!("{}\n", lines[0]).into_bytes();
        bytes.extend_from_slice(b"\xff\xfe\n");
        let report = verify_reader(bytes.as_slice()).unwrap();
        assert_eq!(report.first_break_at, Some(1));
        assert!(matches!(report.reason, Some(ChainBreak::Parse { .. })));
    }

    #[test]
    fn numbers_are_canonicalised_as_ecmascript_does() {
        let cases = [
            ("-0", "0"),
            ("-0.0", "0"),
            ("1E21", "1e+21"),
            ("1.25e3", "1250"),
            ("18446744073709551615", "18446744073709552000"),
            ("9007199254740993", "9007199254740992"),
            ("0.000001", "0.000001"),
            ("1e-7", "1e-7"),
            ("123456789012345680000", "123456789012345680000"),
        ];
        for (input, expected) in cases {
            let value: Value = serde_json::from_str(input).unwrap();
            assert_eq!(
                serde_json_canonicalizer::to_string(&value).unwrap(),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn timestamps_have_exactly_three_fraction_digits() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (1, "1970-01-01T00:00:00.001Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (1_776_859_200_000, "2026-04-22T12:00:00.000Z"),
            (1_776_859_202_517, "2026-04-22T12:00:02.517Z"),
            (1_709_164_800_000, "2024-02-29T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
            (MIN_TIMESTAMP_MS, "0000-01-01T00:00:00.000Z"),
            (MAX_TIMESTAMP_MS, "9999-12-31T23:59:59.999Z"),
        ];
        for (ms, text) in cases {
            assert_eq!(format_timestamp(ms).unwrap(), text);
            assert_eq!(parse_timestamp(text), Some(ms), "{text}");
        }
        assert!(matches!(
            format_timestamp(MAX_TIMESTAMP_MS + 1),
            Err(AuditError::TimestampOutOfRange(_))
        ));
        assert!(format_timestamp(MIN_TIMESTAMP_MS - 1).is_err());
        for bad in [
            "2026-04-22T12:05:00Z",
            "2026-04-22T12:05:00.00Z",
            "2026-04-22 12:05:00.000Z",
            "2026-13-01T00:00:00.000Z",
            "2026-02-29T00:00:00.000Z",
            "2026-04-22T24:00:00.000Z",
            "2026-04-22T12:05:00.000+",
            "+026-04-22T12:05:00.000Z",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        let mut fields = sample(1);
        fields.timestamp = "2026-04-22T12:05:00Z".into();
        assert!(matches!(
            AuditEntry::next(None, fields),
            Err(AuditError::InvalidTimestamp(_))
        ));
    }
}
