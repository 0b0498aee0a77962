//! did:web resolution over HTTPS, with a bounded cache and a timeout.
//!
//! A peer that is neither hosted here nor a `did:key` is a `did:web` DID whose document lives
//! at `https://host/.well-known/did.json` (or `https://host/path/did.json`). The reference
//! fetched it with an LRU cache of 1000 entries, a 300 s TTL and a 5 s timeout; this module
//! keeps those numbers as [`DidWebConfig`]'s defaults and adds what the reference lacked: a
//! size bound on the body, a negative cache so an unknown DID is not refetched on every
//! envelope, one fetch at a time per DID, and no redirects.
//!
//! Start with [`DidWebResolver::resolve`]; [`did_web_url`] is the DID-to-URL mapping alone.
//! TLS is rustls (ring) trusting the webpki roots plus any configured extra roots; tests and
//! private deployments point every fetch at one address with [`DidWebConfig::connect_to`].

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lru::LruCache;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;

/// Limits and trust of a [`DidWebResolver`].
#[derive(Debug, Clone)]
pub struct DidWebConfig {
    /// Whole-request deadline (connect, TLS, headers and body). 5 s is the reference's: long
    /// enough for a slow host across the world, short enough that a dead one does not hold
    /// an ingress request for long.
    pub timeout: Duration,
    /// How long a fetched document is served from the cache. 300 s is the reference's: a
    /// rotated key is picked up within five minutes.
    pub ttl: Duration,
    /// Cached DIDs (documents and failures together), least-recently-used evicted. 1000 is
    /// the reference's. 0 disables the cache.
    pub capacity: usize,
    /// How long a failure (404, timeout, bad document, ...) is remembered. 30 s: a flood of
    /// envelopes from an unknown DID costs one fetch per 30 s, and a DID that was just
    /// published becomes usable quickly.
    pub negative_ttl: Duration,
    /// Largest accepted document body. 64 KiB is far above any real DID document (a few KiB)
    /// and bounds what a hostile host can make us buffer.
    pub max_document_bytes: usize,
    /// Send every did:web fetch to this address instead of resolving the DID's host (tests,
    /// private deployments). TLS still checks the certificate against the DID's host. An
    /// explicit port in the DID (`example.com%3A8443`) replaces this address's port.
    pub connect_to: Option<SocketAddr>,
    /// PEM certificates trusted as roots in addition to the webpki roots.
    pub extra_root_certificates_pem: Vec<Vec<u8>>,
}

impl Default for DidWebConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            ttl: Duration::from_secs(300),
            capacity: 1000,
            negative_ttl: Duration::from_secs(30),
            max_document_bytes: 64 * 1024,
            connect_to: None,
            extra_root_certificates_pem: Vec::new(),
        }
    }
}

/// Why a did:web DID did not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DidWebError {
    /// The string is not a well-formed did:web DID (see [`did_web_url`]).
    #[error("not a well-formed did:web DID")]
    NotDidWeb,
    /// The fetch did not complete within [`DidWebConfig::timeout`].
    #[error("did:web fetch timed out")]
    Timeout,
    /// Connection, TLS or protocol failure.
    #[error("did:web fetch failed: {0}")]
    Fetch(String),
    /// The server answered with a non-2xx status (redirects are not followed).
    #[error("did:web fetch returned HTTP {0}")]
    Status(u16),
    /// The body exceeded [`DidWebConfig::max_document_bytes`].
    #[error("DID document too large")]
    TooLarge,
    /// The body is not a JSON object.
    #[error("DID document is not a JSON object")]
    NotJson,
    /// The document's `id` is not the DID that was resolved.
    #[error("DID document id does not match the DID")]
    IdMismatch,
    /// The HTTP client could not be built from the configuration (e.g. a bad extra root).
    #[error("did:web client configuration: {0}")]
    Client(String),
}

impl DidWebError {
    /// A stable snake_case code for logs and error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotDidWeb => "not_did_web",
            Self::Timeout => "did_web_timeout",
            Self::Fetch(_) => "did_web_fetch_failed",
            Self::Status(_) => "did_web_bad_status",
            Self::TooLarge => "did_web_too_large",
            Self::NotJson => "did_web_not_json",
            Self::IdMismatch => "did_web_id_mismatch",
            Self::Client(_) => "did_web_client_config",
        }
    }
}

/// Resolves did:web DIDs over HTTPS with a cache. Cheap to clone: clones share the client,
/// the cache and the in-flight fetches.
#[derive(Clone)]
pub struct DidWebResolver {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    ttl: Duration,
    negative_ttl: Duration,
    max_document_bytes: usize,
    cache: Option<Mutex<LruCache<String, Entry>>>,
    /// One async mutex per DID being fetched: concurrent resolves of a DID wait for the first
    /// fetch and then read its result from the cache.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

struct Entry {
    expires: Instant,
    result: Result<Arc<Value>, DidWebError>,
}

impl std::fmt::Debug for DidWebResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cached = self.inner.cache.as_ref().map(|c| lock(c).len());
        f.debug_struct("DidWebResolver")
            .field("ttl", &self.inner.ttl)
            .field("negative_ttl", &self.inner.negative_ttl)
            .field("max_document_bytes", &self.inner.max_document_bytes)
            .field("cached", &cached)
            .finish_non_exhaustive()
    }
}

/// Locks a std mutex, ignoring poisoning: the guarded maps stay consistent at every await-free
/// step, so a panic elsewhere cannot leave them half-updated.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Drops a DID's in-flight gate from the map when its fetch ends or is cancelled.
struct InFlightGuard<'a> {
    in_flight: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    did: &'a str,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        lock(self.in_flight).remove(self.did);
    }
}

/// Answers every name with one address (see [`DidWebConfig::connect_to`]).
struct FixedResolver(SocketAddr);

impl reqwest::dns::Resolve for FixedResolver {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addr = self.0;
        Box::pin(async move {
            let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(addr));
            Ok(addrs)
        })
    }
}

impl DidWebResolver {
    /// Builds the HTTPS client (rustls with ring, webpki roots plus the extra roots, no
    /// redirects, HTTPS only, the timeout) and an empty cache.
    pub fn new(config: DidWebConfig) -> Result<Self, DidWebError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for pem in &config.extra_root_certificates_pem {
            let mut added = 0usize;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| DidWebError::Client(format!("extra root PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| DidWebError::Client(format!("extra root certificate: {e}")))?;
                added += 1;
            }
            if added == 0 {
                return Err(DidWebError::Client(
                    "extra root PEM holds no certificate".to_owned(),
                ));
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| DidWebError::Client(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();

        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .user_agent(concat!("arp-host/", env!("CARGO_PKG_VERSION"), " did:web"));
        if let Some(addr) = config.connect_to {
            builder = builder
                .no_proxy()
                .dns_resolver(Arc::new(FixedResolver(addr)));
        }
        let client = builder
            .build()
            .map_err(|e| DidWebError::Client(error_chain(&e)))?;

        Ok(Self {
            inner: Arc::new(Inner {
                client,
                ttl: config.ttl,
                negative_ttl: config.negative_ttl,
                max_document_bytes: config.max_document_bytes,
                cache: NonZeroUsize::new(config.capacity).map(|n| Mutex::new(LruCache::new(n))),
                in_flight: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The DID document of a did:web DID, from the cache or fetched over HTTPS.
    ///
    /// Failures other than [`DidWebError::NotDidWeb`] are cached for
    /// [`DidWebConfig::negative_ttl`]; concurrent calls for one DID share one fetch.
    pub async fn resolve(&self, did: &str) -> Result<Value, DidWebError> {
        let url = did_web_url(did).ok_or(DidWebError::NotDidWeb)?;
        if let Some(hit) = self.cached(did) {
            return hit;
        }
        let gate = {
            let mut in_flight = lock(&self.inner.in_flight);
            Arc::clone(in_flight.entry(did.to_owned()).or_default())
        };
        let _turn = gate.lock().await;
        // Removes the gate when done, also if this future is dropped mid-fetch.
        let _cleanup = InFlightGuard {
            in_flight: &self.inner.in_flight,
            did,
        };
        // Whoever held the gate before us may have filled the cache.
        if let Some(hit) = self.cached(did) {
            return hit;
        }
        let result = self.fetch(did, &url).await.map(Arc::new);
        match &result {
            Ok(_) => tracing::debug!(did, url, "did:web resolved"),
            Err(e) => {
                tracing::info!(did, url, code = e.code(), error = %e, "did:web resolution failed")
            }
        }
        if let Some(cache) = &self.inner.cache {
            let ttl = if result.is_ok() {
                self.inner.ttl
            } else {
                self.inner.negative_ttl
            };
            let entry = Entry {
                expires: Instant::now() + ttl,
                result: result.clone(),
            };
            lock(cache).put(did.to_owned(), entry);
        }
        result.map(|doc| (*doc).clone())
    }

    /// A live cache entry for `did`, dropping it if expired.
    fn cached(&self, did: &str) -> Option<Result<Value, DidWebError>> {
        let cache = self.inner.cache.as_ref()?;
        let mut cache = lock(cache);
        let entry = cache.get(did)?;
        if entry.expires <= Instant::now() {
            cache.pop(did);
            return None;
        }
        Some(entry.result.clone().map(|doc| (*doc).clone()))
    }

    async fn fetch(&self, did: &str, url: &str) -> Result<Value, DidWebError> {
        let mut response = self
            .inner
            .client
            .get(url)
            .header(
                reqwest::header::ACCEPT,
                "application/did+json, application/json",
            )
            .send()
            .await
            .map_err(fetch_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(DidWebError::Status(status.as_u16()));
        }
        let max = self.inner.max_document_bytes;
        if response
            .content_length()
            .is_some_and(|len| len > max as u64)
        {
            return Err(DidWebError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(fetch_error)? {
            if body.len() + chunk.len() > max {
                return Err(DidWebError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let doc: Value = serde_json::from_slice(&body).map_err(|_| DidWebError::NotJson)?;
        let id = doc
            .as_object()
            .ok_or(DidWebError::NotJson)?
            .get("id")
            .and_then(Value::as_str);
        if id != Some(did) {
            return Err(DidWebError::IdMismatch);
        }
        Ok(doc)
    }
}

fn fetch_error(e: reqwest::Error) -> DidWebError {
    if e.is_timeout() {
        DidWebError::Timeout
    } else {
        DidWebError::Fetch(error_chain(&e))
    }
}

/// The error and its sources, `: `-joined (reqwest's own message hides the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// https URL of a did:web DID per the did:web spec: `did:web:host` ->
/// `https://host/.well-known/did.json`; `did:web:host:a:b` -> `https://host/a/b/did.json`;
/// the host may carry a percent-encoded port (`example.com%3A8443`).
///
/// `None` for anything that is not a well-formed did:web: characters outside the DID
/// syntax (so no fragment, query or `/`), an empty segment, bad percent-encoding, a host
/// that is not a DNS name (IP addresses are not allowed) or a bad port, and path segments
/// that decode to `.`/`..` or contain `/` or `\`.
pub fn did_web_url(did: &str) -> Option<String> {
    let id = did.strip_prefix("did:web:")?;
    let id_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '%' | ':');
    if id.is_empty() || !id.chars().all(id_char) {
        return None;
    }
    let mut segments = id.split(':');
    let authority = percent_decode(segments.next()?)?;
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority.as_str(), None),
    };
    if !is_dns_name(host) {
        return None;
    }
    let mut url = format!("https://{}", host.to_ascii_lowercase());
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
        url.push_str(&format!(":{port}"));
    }
    let mut has_path = false;
    for segment in segments {
        let decoded = percent_decode(segment)?;
        if decoded.is_empty()
            || decoded == "."
            || decoded == ".."
            || decoded.contains(['/', '\\'])
            || decoded.chars().any(char::is_control)
        {
            return None;
        }
        url.push('/');
        url.push_str(&percent_encode_segment(&decoded));
        has_path = true;
    }
    url.push_str(if has_path {
        "/did.json"
    } else {
        "/.well-known/did.json"
    });
    Some(url)
}

/// A DNS host name: dot-separated labels of 1–63 letters, digits and inner hyphens, at most
/// 253 characters, not an IPv4 literal.
fn is_dns_name(host: &str) -> bool {
    if host.is_empty() || host.len() > 253 || host.parse::<Ipv4Addr>().is_ok() {
        return false;
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// Percent-decodes into UTF-8; `None` on a truncated or non-hex escape or invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_host_uses_well_known() {
        assert_eq!(
            did_web_url("did:web:ghost.agent").as_deref(),
            Some("https://ghost.agent/.well-known/did.json")
        );
        assert_eq!(
            did_web_url("did:web:Example.COM").as_deref(),
            Some("https://example.com/.well-known/did.json")
        );
    }

    #[test]
    fn path_segments_become_url_path() {
        assert_eq!(
            did_web_url("did:web:hub.example.org:bots:echo").as_deref(),
            Some("https://hub.example.org/bots/echo/did.json")
        );
        assert_eq!(
            did_web_url("did:web:w3c-ccg.github.io:user:alice").as_deref(),
            Some("https://w3c-ccg.github.io/user/alice/did.json")
        );
        assert_eq!(
            did_web_url("did:web:example.com:a%40b").as_deref(),
            Some("https://example.com/a%40b/did.json")
        );
    }

    #[test]
    fn percent_encoded_port() {
        assert_eq!(
            did_web_url("did:web:example.com%3A8443").as_deref(),
            Some("https://example.com:8443/.well-known/did.json")
        );
        assert_eq!(
            did_web_url("did:web:localhost%3a3000:user:alice").as_deref(),
            Some("https://localhost:3000/user/alice/did.json")
        );
        for bad in [
            "did:web:example.com%3A",
            "did:web:example.com%3A0",
            "did:web:example.com%3A65536",
            "did:web:example.com%3Ax",
            "did:web:example.com%3A%2B443",
            "did:web:example.com%3A443%3A1",
        ] {
            assert_eq!(did_web_url(bad), None, "{bad}");
        }
    }

    #[test]
    fn malformed_is_none() {
        for bad in [
            "",
            "did:web:",
            "did:web",
            "did:key:z6Mkabc",
            "did:web::path",
            "did:web:example.com:",
            "did:web:example.com::a",
            "did:web:example.com#key-1",
            "did:web:example.com?x=1",
            "did:web:example.com/a",
            "did:web:exa mple.com",
            "did:web:example.com%",
            "did:web:example.com%4",
            "did:web:example.com%zz",
            "did:web:example.com:%ff",
            "did:web:127.0.0.1",
            "did:web:-bad.example",
            "did:web:bad..example",
            "did:web:user%40example.com",
            "did:web:example.com%2Fevil",
        ] {
            assert_eq!(did_web_url(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn traversal_is_none() {
        for bad in [
            "did:web:example.com:..",
            "did:web:example.com:.",
            "did:web:example.com:a:..:b",
            "did:web:example.com:%2E%2E",
            "did:web:example.com:%2e%2e:x",
            "did:web:example.com:a%2F..",
            "did:web:example.com:a%2Fb",
            "did:web:example.com:a%5Cb",
            "did:web:example.com:a%00",
        ] {
            assert_eq!(did_web_url(bad), None, "{bad}");
        }
    }

    #[test]
    fn error_codes_are_distinct() {
        let all = [
            DidWebError::NotDidWeb,
            DidWebError::Timeout,
            DidWebError::Fetch(String::new()),
            DidWebError::Status(404),
            DidWebError::TooLarge,
            DidWebError::NotJson,
            DidWebError::IdMismatch,
            DidWebError::Client(String::new()),
        ];
        let codes: std::collections::HashSet<_> = all.iter().map(DidWebError::code).collect();
        assert_eq!(codes.len(), all.len());
    }
}
