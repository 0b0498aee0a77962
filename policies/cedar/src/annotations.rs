//! Reading the ARP annotations of an obligation policy.
//!
//! An obligation policy is a Cedar policy with two ARP annotations that Cedar itself does not
//! understand: `@obligation("<type>")` names the obligation, and the optional
//! `@obligation_params(...)` holds its parameters as a JSON object, written either as a
//! quoted JSON text (`@obligation_params("{\"max\":60}")`) or as a JavaScript-style object
//! literal with bare keys and single-quoted strings
//! (`@obligation_params({ fields: ['a', 'b'], mode: 'mask' })`). The latter is not valid
//! Cedar, so both annotations are cut out before Cedar parses the policy. An `@id("...")`
//! annotation names the policy; it stays in the text (Cedar accepts it).
//!
//! The scanner skips Cedar string literals and `//` comments, so an `@obligation` inside a
//! string or a comment is not taken for an annotation.

use arp_policy_sdk::serde_json::{self, Map, Value};

/// An obligation policy with its ARP annotations read and removed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ObligationPolicy {
    /// The policy id: its `@id("...")`, else `o_<index>`.
    pub id: String,
    /// The obligation type from `@obligation("<type>")`.
    pub kind: String,
    /// The parameters from `@obligation_params(...)`, `{}` without it.
    pub params: Value,
    /// The policy text without the `@obligation` and `@obligation_params` annotations.
    pub text: String,
}

/// One `@name(...)` found in a policy text.
struct Annotation<'a> {
    /// Its name, e.g. `obligation`.
    name: &'a str,
    /// What stands between the parentheses.
    args: &'a str,
    /// Byte range of the whole annotation, from `@` to `)` inclusive.
    start: usize,
    end: usize,
}

/// Reads the obligation policy at `index` of the connection's list.
///
/// The error says what is unusable; the caller fails the whole decision closed with it.
pub(crate) fn parse_obligation_policy(
    index: usize,
    text: &str,
) -> Result<ObligationPolicy, String> {
    let annotations = scan(text)?;
    let mut obligation = None;
    let mut params = None;
    let mut id = None;
    for annotation in &annotations {
        let slot = match annotation.name {
            "obligation" => &mut obligation,
            "obligation_params" => &mut params,
            "id" => &mut id,
            _ => continue,
        };
        if slot.is_some() {
            return Err(format!(
                "obligation policy {index} has more than one @{}(...) annotation",
                annotation.name
            ));
        }
        *slot = Some(annotation);
    }

    let Some(obligation) = obligation else {
        return Err(format!(
            "obligation policy {index} is missing the @obligation(\"<type>\") annotation"
        ));
    };
    let kind = string_argument(obligation.args)
        .map_err(|error| format!("obligation policy {index}: @obligation(...): {error}"))?;
    if kind.is_empty() {
        return Err(format!(
            "obligation policy {index}: @obligation(...) names no type"
        ));
    }
    let params_annotation = params;
    let params = match params_annotation {
        None => Value::Object(Map::new()),
        Some(params) => parse_params(params.args).map_err(|error| {
            format!(
                "obligation policy {index}: @obligation_params({}): {error}",
                params.args
            )
        })?,
    };
    // An `@id` Cedar would reject is left for Cedar to report when it parses the text.
    let id = id
        .and_then(|id| string_argument(id.args).ok())
        .unwrap_or_else(|| format!("o_{index}"));

    // Cut out both ARP annotations, in text order.
    let mut cuts = [Some(obligation), params_annotation];
    cuts.sort_by_key(|cut| cut.map(|annotation| annotation.start));
    let mut cleaned = String::with_capacity(text.len());
    let mut from = 0;
    for cut in cuts.into_iter().flatten() {
        cleaned.push_str(&text[from..cut.start]);
        from = cut.end;
    }
    cleaned.push_str(&text[from..]);

    Ok(ObligationPolicy {
        id,
        kind,
        params,
        text: cleaned,
    })
}

/// Finds the `@name(...)` annotations of a policy text, outside strings and comments.
fn scan(text: &str) -> Result<Vec<Annotation<'_>>, String> {
    let bytes = text.as_bytes();
    let mut annotations = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'"' => at = skip_quoted(bytes, at, b'"').unwrap_or(bytes.len()),
            b'/' if bytes.get(at + 1) == Some(&b'/') => {
                at = bytes[at..]
                    .iter()
                    .position(|&byte| byte == b'\n')
                    .map_or(bytes.len(), |newline| at + newline + 1);
            }
            b'@' => {
                let name_start = at + 1;
                let name_end = bytes[name_start..]
                    .iter()
                    .position(|&byte| !(byte.is_ascii_alphanumeric() || byte == b'_'))
                    .map_or(bytes.len(), |length| name_start + length);
                let open = skip_whitespace(bytes, name_end);
                if name_end == name_start || bytes.get(open) != Some(&b'(') {
                    // Not an annotation with arguments; Cedar judges whatever it is.
                    at = name_end.max(at + 1);
                    continue;
                }
                let name = &text[name_start..name_end];
                let Some(close) = matching_paren(bytes, open) else {
                    return Err(format!("@{name}( is never closed"));
                };
                annotations.push(Annotation {
                    name,
                    args: &text[open + 1..close],
                    start: at,
                    end: close + 1,
                });
                at = close + 1;
            }
            _ => at += 1,
        }
    }
    Ok(annotations)
}

fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

/// Given `bytes[start] == quote`, the index just past the closing quote, honouring
/// backslash escapes; `None` when the string never ends.
fn skip_quoted(bytes: &[u8], start: usize, quote: u8) -> Option<usize> {
    let mut at = start + 1;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' => at += 2,
            byte if byte == quote => return Some(at + 1),
            _ => at += 1,
        }
    }
    None
}

/// Given `bytes[open] == b'('`, the index of its matching `)`, skipping parentheses inside
/// single- or double-quoted strings.
fn matching_paren(bytes: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut at = open;
    while at < bytes.len() {
        match bytes[at] {
            quote @ (b'"' | b'\'') => {
                at = skip_quoted(bytes, at, quote)?;
                continue;
            }
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(at);
                }
            }
            _ => {}
        }
        at += 1;
    }
    None
}

/// The value of an annotation argument that must be one Cedar string literal, unescaped.
fn string_argument(args: &str) -> Result<String, String> {
    let args = args.trim();
    let bytes = args.as_bytes();
    if bytes.first() != Some(&b'"') || skip_quoted(bytes, 0, b'"') != Some(bytes.len()) {
        return Err(format!("expected one double-quoted string, found `{args}`"));
    }
    unescape_cedar(&args[1..args.len() - 1])
}

/// Resolves the escapes of a Cedar string literal's body: `\n \r \t \\ \0 \' \"` and
/// `\u{...}`.
fn unescape_cedar(body: &str) -> Result<String, String> {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('0') => out.push('\0'),
            Some(quoted @ ('\\' | '\'' | '"')) => out.push(quoted),
            Some('u') => {
                let rest = chars.as_str();
                let code = rest
                    .strip_prefix('{')
                    .and_then(|rest| rest.split_once('}'))
                    .and_then(|(hex, _)| u32::from_str_radix(hex, 16).ok())
                    .and_then(char::from_u32)
                    .ok_or_else(|| "invalid \\u{...} escape".to_string())?;
                out.push(code);
                // Skip past the closing brace.
                let skip = rest.find('}').map_or(rest.len(), |brace| brace + 1);
                chars = rest[skip..].chars();
            }
            other => return Err(format!("invalid escape `\\{}`", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

/// Reads the parameters of `@obligation_params(...)`: nothing is `{}`; a quoted JSON text is
/// parsed; otherwise an object literal with bare keys and single-quoted strings is turned
/// into JSON and parsed. The result must be a JSON object.
fn parse_params(args: &str) -> Result<Value, String> {
    let args = args.trim();
    if args.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let json = object_literal_to_json(args)?;
    let value: Value = serde_json::from_str(&json)
        .map_err(|error| format!("not a JSON object (as JSON: {json}): {error}"))?;
    // A whole quoted string holds the JSON text itself.
    let value = match value {
        Value::String(inner) => serde_json::from_str(&inner)
            .map_err(|error| format!("the quoted text is not JSON: {error}"))?,
        other => other,
    };
    if value.is_object() {
        Ok(value)
    } else {
        Err("not a JSON object".to_string())
    }
}

/// Turns a JavaScript-style object literal into JSON text: single-quoted strings become
/// double-quoted ones and bare keys (an identifier followed by `:`) are quoted. Everything
/// else, including double-quoted strings, is copied; JSON parsing judges the result.
fn object_literal_to_json(src: &str) -> Result<String, String> {
    let mut out = String::with_capacity(src.len() + 16);
    let mut chars = src.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        match c {
            '"' => {
                out.push('"');
                loop {
                    match chars.next() {
                        Some((_, '\\')) => {
                            out.push('\\');
                            if let Some((_, escaped)) = chars.next() {
                                out.push(escaped);
                            }
                        }
                        Some((_, '"')) => break,
                        Some((_, other)) => out.push(other),
                        None => return Err("unterminated double-quoted string".to_string()),
                    }
                }
                out.push('"');
            }
            '\'' => {
                out.push('"');
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            // `\'` needs no escape in JSON; other escapes mean the same.
                            Some((_, '\'')) => out.push('\''),
                            Some((_, escaped)) => {
                                out.push('\\');
                                out.push(escaped);
                            }
                            None => return Err("unterminated single-quoted string".to_string()),
                        },
                        Some((_, '\'')) => break,
                        Some((_, '"')) => out.push_str("\\\""),
                        Some((_, other)) => out.push(other),
                        None => return Err("unterminated single-quoted string".to_string()),
                    }
                }
                out.push('"');
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == '$' => {
                let mut end = start + c.len_utf8();
                while let Some(&(at, next)) = chars.peek() {
                    if next.is_ascii_alphanumeric() || next == '_' || next == '$' {
                        end = at + next.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                let word = &src[start..end];
                if src[end..].trim_start().starts_with(':') {
                    out.push('"');
                    out.push_str(word);
                    out.push('"');
                } else {
                    // `true`, `false`, `null`, or something JSON will reject.
                    out.push_str(word);
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use arp_policy_sdk::serde_json::json;

    #[test]
    fn object_literal_with_bare_keys_and_single_quotes() {
        let policy = parse_obligation_policy(
            0,
            "@obligation(\"redact_fields\")\n@obligation_params({ fields: ['client.name', 'client.email'], mode: 'mask' })\npermit (principal, action, resource);",
        )
        .unwrap();
        assert_eq!(policy.id, "o_0");
        assert_eq!(policy.kind, "redact_fields");
        assert_eq!(
            policy.params,
            json!({"fields": ["client.name", "client.email"], "mode": "mask"})
        );
        assert_eq!(policy.text, "\n\npermit (principal, action, resource);");
    }

    #[test]
    fn quoted_json_params() {
        let policy = parse_obligation_policy(
            3,
            "@obligation(\"rate_limit\")\n@obligation_params(\"{\\\"max_requests\\\":60,\\\"window\\\":\\\"hour\\\"}\")\npermit (principal, action, resource);",
        )
        .unwrap();
        assert_eq!(policy.id, "o_3");
        assert_eq!(policy.params, json!({"max_requests": 60, "window": "hour"}));
    }

    #[test]
    fn value_types_and_nesting() {
        let params = parse_params(
            "{ max_cents: 5000, ratio: 0.5, negative: -42, nested: { deep: [1, 2, { k: 'v' }] }, enabled: true, note: null }",
        )
        .unwrap();
        assert_eq!(
            params,
            json!({"max_cents": 5000, "ratio": 0.5, "negative": -42,
                   "nested": {"deep": [1, 2, {"k": "v"}]}, "enabled": true, "note": null})
        );
    }

    #[test]
    fn strings_keep_colons_commas_and_quotes() {
        // The reference's regex coercion broke on this; a tokenizer does not.
        assert_eq!(
            parse_params("{ text: 'hello, note: read me' }").unwrap(),
            json!({"text": "hello, note: read me"})
        );
        assert_eq!(
            parse_params(r#"{ a: 'it\'s "quoted"', "b": "x)y", c: 'p(q' }"#).unwrap(),
            json!({"a": "it's \"quoted\"", "b": "x)y", "c": "p(q"})
        );
    }

    #[test]
    fn empty_and_missing_params_are_an_empty_object() {
        assert_eq!(parse_params("").unwrap(), json!({}));
        assert_eq!(parse_params("  ").unwrap(), json!({}));
        let policy = parse_obligation_policy(
            1,
            "@obligation(\"log\")\n@obligation_params()\npermit (principal, action, resource);",
        )
        .unwrap();
        assert_eq!(policy.params, json!({}));
        let policy = parse_obligation_policy(
            1,
            "@obligation(\"log\") permit (principal, action, resource);",
        )
        .unwrap();
        assert_eq!(policy.params, json!({}));
        assert_eq!(policy.text, " permit (principal, action, resource);");
    }

    #[test]
    fn unusable_params_are_errors() {
        for bad in [
            "[1, 2]",
            "'just a string'",
            "\"[1]\"",
            "\"not json\"",
            "{ a: undefined }",
            "{ a: 1",
            "{ a: 'open }",
            "42",
        ] {
            assert!(parse_params(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_or_bad_obligation_annotation_is_an_error() {
        let error =
            parse_obligation_policy(2, "permit (principal, action, resource);").unwrap_err();
        assert!(error.contains("obligation policy 2"), "{error}");
        assert!(error.contains("missing"), "{error}");
        for bad in [
            "@obligation(rate_limit) permit (principal, action, resource);",
            "@obligation(\"\") permit (principal, action, resource);",
            "@obligation(\"a\") @obligation(\"b\") permit (principal, action, resource);",
            "@obligation(\"a\") @obligation_params({ a: ) permit (principal, action, resource);",
            "@obligation(\"a\" permit (principal, action, resource);",
        ] {
            assert!(parse_obligation_policy(0, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn explicit_id_is_kept_in_the_text() {
        let policy = parse_obligation_policy(
            1,
            "@id(\"audit-verbose\")\n@obligation(\"audit_level\")\n@obligation_params({ level: 'verbose' })\npermit (principal, action, resource);",
        )
        .unwrap();
        assert_eq!(policy.id, "audit-verbose");
        assert_eq!(policy.kind, "audit_level");
        assert_eq!(policy.params, json!({"level": "verbose"}));
        assert_eq!(
            policy.text,
            "@id(\"audit-verbose\")\n\n\npermit (principal, action, resource);"
        );
    }

    #[test]
    fn annotations_inside_strings_and_comments_are_ignored() {
        let text = "// @obligation(\"commented\")\n@obligation(\"real\")\npermit (principal, action, resource) when { context.note == \"@obligation_params({ x: 1 })\" };";
        let policy = parse_obligation_policy(0, text).unwrap();
        assert_eq!(policy.kind, "real");
        assert_eq!(policy.params, json!({}));
        assert!(policy.text.contains("// @obligation(\"commented\")"));
        assert!(policy.text.contains("\"@obligation_params({ x: 1 })\""));
    }

    #[test]
    fn annotation_order_does_not_matter() {
        let policy = parse_obligation_policy(
            0,
            "@obligation_params({ n: 1 }) @obligation(\"a\\\"b\\u{e9}\") permit (principal, action, resource);",
        )
        .unwrap();
        assert_eq!(policy.kind, "a\"b\u{e9}");
        assert_eq!(policy.params, json!({"n": 1}));
        assert_eq!(policy.text, "  permit (principal, action, resource);");
    }
}
