//! Which hosted agent a request is for (ARP-PROTOCOL §2): the host name, taken from the
//! query `target`, else `X-Forwarded-Host`, else `Host` ([`select_host`]), names a `.agent`
//! domain whose DID is `did:web:<label>.agent` ([`agent_did_from_host`]). A host that maps
//! to no agent is a 404 `unknown_agent`.

/// The `.hns.to` gateway suffix, stripped once.
const HNS_TO_SUFFIX: &str = ".hns.to";

/// The host to route by: query `target` ?? `X-Forwarded-Host` ?? `Host`. Like the
/// reference's `??`, a present but empty value is chosen (and then routes nowhere).
pub fn select_host<'a>(
    target: Option<&'a str>,
    forwarded_host: Option<&'a str>,
    host: Option<&'a str>,
) -> Option<&'a str> {
    target.or(forwarded_host).or(host)
}

/// The target agent DID of a host name, exactly as §2: lowercase; strip one trailing
/// `:<digits>` port; strip one trailing `.hns.to`; at least two labels, the last `agent`,
/// the second-to-last non-empty → `did:web:<that label>.agent`. Labels further left (owner
/// subdomains such as `ian.` in `ian.samantha.agent`) are ignored.
pub fn agent_did_from_host(host: &str) -> Option<String> {
    let lowered = host.to_lowercase();
    let normalized = strip_port(&lowered);
    let core = normalized.strip_suffix(HNS_TO_SUFFIX).unwrap_or(normalized);
    let mut labels = core.rsplit('.');
    let tld = labels.next()?;
    let label = labels.next()?;
    if tld != "agent" || label.is_empty() {
        return None;
    }
    Some(format!("did:web:{label}.agent"))
}

/// Removes one trailing `:<one or more ASCII digits>`.
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn protocol_examples() {
        for host in [
            "samantha.agent",
            "ian.samantha.agent",
            "samantha.agent.hns.to",
            "ian.samantha.agent.hns.to",
            "samantha.agent:8443",
        ] {
            assert_eq!(
                agent_did_from_host(host).as_deref(),
                Some("did:web:samantha.agent"),
                "{host}"
            );
        }
        for host in [
            "example.com",
            "localhost",
            "",
            "agent",
            ".agent",
            "x.hns.to",
        ] {
            assert_eq!(agent_did_from_host(host), None, "{host}");
        }
    }

    #[test]
    fn edge_cases() {
        let did = |h: &str| agent_did_from_host(h);
        assert_eq!(
            did("SAMANTHA.Agent").as_deref(),
            Some("did:web:samantha.agent")
        );
        assert_eq!(
            did("samantha.agent.hns.to:443").as_deref(),
            Some("did:web:samantha.agent")
        );
        // Only one port and one suffix are stripped.
        assert_eq!(did("samantha.agent:1:2"), None);
        assert_eq!(did("samantha.agent.hns.to.hns.to"), None);
        assert_eq!(did("samantha.agent:"), None);
        assert_eq!(did("samantha.agent:x1"), None);
        assert_eq!(did("samantha.agent."), None);
        assert_eq!(did("a..agent"), None);
        assert_eq!(did(".hns.to"), None);
        assert_eq!(did("agent.hns.to"), None);
        assert_eq!(did("b.agent.hns.to:80").as_deref(), Some("did:web:b.agent"));
    }

    #[test]
    fn host_precedence() {
        assert_eq!(select_host(Some("a"), Some("b"), Some("c")), Some("a"));
        assert_eq!(select_host(None, Some("b"), Some("c")), Some("b"));
        assert_eq!(select_host(None, None, Some("c")), Some("c"));
        assert_eq!(select_host(Some(""), Some("b"), Some("c")), Some(""));
        assert_eq!(select_host(None, None, None), None);
    }
}
