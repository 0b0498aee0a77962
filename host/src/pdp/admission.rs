//! Admission of uploaded policy components: every check that can refuse an upload, with
//! a reason the uploader can act on, before anything of it runs on the request path.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmparser::{Parser, Payload};

use super::bindings::{DECIDE_EXPORT, INIT_EXPORT, WORLD_PACKAGE, WORLD_VERSION};
use super::engine::{ALLOWED_IMPORTS, CompiledPolicy, EngineError, PolicyEngine};

/// Bounds on what an upload may cost the host.
#[derive(Clone, Copy, Debug)]
pub struct AdmissionLimits {
    /// Largest accepted component. The `cedar` policy, which embeds a whole Cedar
    /// implementation, is about 2 MiB; 16 MiB leaves room for other languages'
    /// runtimes (a componentized Python or JavaScript policy carries its interpreter).
    pub max_component_bytes: usize,
    /// How long compilation plus pre-initialisation may take. The `cedar` policy takes
    /// a few seconds on a 2-core machine; a minute refuses compile bombs without
    /// refusing honest large policies on a busy host.
    pub compile_timeout: Duration,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        Self {
            max_component_bytes: 16 << 20,
            compile_timeout: Duration::from_secs(60),
        }
    }
}

/// Why an upload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// Over [`AdmissionLimits::max_component_bytes`].
    #[error("component is {size} bytes, over the {limit} byte limit")]
    TooLarge {
        /// Size of the upload.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not WebAssembly at all.
    #[error("not a WebAssembly binary (no `\\0asm` header)")]
    NotWasm,
    /// A core module rather than a component.
    #[error(
        "this is a core WebAssembly module, not a component: build the policy for \
         wasm32-wasip2 (or componentize it) against the arp:policy world in wit/"
    )]
    NotAComponent,
    /// Malformed component.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// Built for another version of our world, or for another world.
    #[error(
        "built for {found}, but this host supports {WORLD_PACKAGE}@{WORLD_VERSION} \
         (export `{DECIDE_EXPORT}`)"
    )]
    UnsupportedWorld {
        /// What the component exports instead.
        found: String,
    },
    /// The component lacks an export of the world.
    #[error("does not export `{0}`: build it against the arp:policy world in wit/")]
    MissingExport(&'static str),
    /// The component imports something the sandbox does not offer.
    #[error(
        "imports `{0}`, which policies may not use; a policy may import only wasi:io, \
         wasi:cli, wasi:random and wasi:clocks 0.2.x (no files, sockets or HTTP)"
    )]
    ForbiddenImport(String),
    /// Compilation did not finish within [`AdmissionLimits::compile_timeout`].
    #[error("compilation took longer than the {0:?} limit")]
    CompileTimeout(Duration),
    /// wasmtime could not compile or link it.
    #[error("compilation failed: {0}")]
    CompileFailed(String),
    /// The `init` export trapped or called an import it may not call at warm-up.
    #[error("pre-initialisation (the `init` export) failed: {0}")]
    InitFailed(String),
}

impl AdmissionError {
    /// Stable reason code for API replies.
    pub fn code(&self) -> &'static str {
        match self {
            AdmissionError::TooLarge { .. } => "component_too_large",
            AdmissionError::NotWasm => "not_wasm",
            AdmissionError::NotAComponent => "not_a_component",
            AdmissionError::Invalid(_) => "invalid_component",
            AdmissionError::UnsupportedWorld { .. } => "unsupported_world",
            AdmissionError::MissingExport(_) => "missing_export",
            AdmissionError::ForbiddenImport(_) => "forbidden_import",
            AdmissionError::CompileTimeout(_) => "compile_timeout",
            AdmissionError::CompileFailed(_) => "compile_failed",
            AdmissionError::InitFailed(_) => "init_failed",
        }
    }
}

/// `sha256:<hex>` of component bytes: the identity of a policy version.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The checks that need no compilation: size, format, world and imports. Returns the
/// world (`arp:policy@0.1.0`) the component is built for.
pub fn inspect(bytes: &[u8], limits: &AdmissionLimits) -> Result<String, AdmissionError> {
    if bytes.len() > limits.max_component_bytes {
        return Err(AdmissionError::TooLarge {
            size: bytes.len(),
            limit: limits.max_component_bytes,
        });
    }
    if Parser::is_core_wasm(bytes) {
        return Err(AdmissionError::NotAComponent);
    }
    if !Parser::is_component(bytes) {
        return Err(AdmissionError::NotWasm);
    }

    let mut imports = Vec::new();
    let mut exports = Vec::new();
    // Only the outer component's own imports and exports describe what it needs and
    // offers; nested modules and components are its private parts.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| AdmissionError::Invalid(e.to_string()))?;
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    let import = import.map_err(|e| AdmissionError::Invalid(e.to_string()))?;
                    imports.push(import.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    let export = export.map_err(|e| AdmissionError::Invalid(e.to_string()))?;
                    exports.push(export.name.name.to_owned());
                }
            }
            _ => {}
        }
    }

    let decide_prefix = format!("{WORLD_PACKAGE}/decide@");
    match exports.iter().find(|name| name.starts_with(&decide_prefix)) {
        Some(name) if name == DECIDE_EXPORT => {}
        Some(name) => {
            let version = name.trim_start_matches(&decide_prefix);
            return Err(AdmissionError::UnsupportedWorld {
                found: format!("{WORLD_PACKAGE}@{version}"),
            });
        }
        None => {
            if let Some(other) = exports.iter().find(|n| n.starts_with(WORLD_PACKAGE)) {
                return Err(AdmissionError::UnsupportedWorld {
                    found: other.clone(),
                });
            }
            return Err(AdmissionError::MissingExport(DECIDE_EXPORT));
        }
    }
    if !exports.iter().any(|name| name == INIT_EXPORT) {
        return Err(AdmissionError::MissingExport(INIT_EXPORT));
    }

    for import in &imports {
        if !import_allowed(import) {
            return Err(AdmissionError::ForbiddenImport(import.clone()));
        }
    }
    Ok(format!("{WORLD_PACKAGE}@{WORLD_VERSION}"))
}

fn import_allowed(name: &str) -> bool {
    let (interface, version) = name.split_once('@').unwrap_or((name, ""));
    ALLOWED_IMPORTS.contains(&interface) && version.starts_with("0.2.")
}

/// Runs every admission check, then pre-initialises and compiles the component off the
/// caller's thread within [`AdmissionLimits::compile_timeout`].
pub fn admit(
    engine: &Arc<PolicyEngine>,
    bytes: &[u8],
    limits: &AdmissionLimits,
) -> Result<CompiledPolicy, AdmissionError> {
    inspect(bytes, limits)?;
    let digest = digest_of(bytes);
    let (done, outcome) = mpsc::channel();
    let engine = engine.clone();
    let bytes = bytes.to_vec();
    // Compilation cannot be interrupted, so the bound is on waiting: a compile bomb
    // keeps one background thread busy until it ends, but the upload is refused now.
    std::thread::Builder::new()
        .name("arp-policy-compile".into())
        .spawn(move || {
            let result = engine
                .pre_initialize(&bytes)
                .and_then(|snapshot| engine.compile(&snapshot))
                .and_then(|component| engine.prepare(digest, &component));
            let _ = done.send(result);
        })
        .map_err(|e| AdmissionError::CompileFailed(format!("compile thread: {e}")))?;
    match outcome.recv_timeout(limits.compile_timeout) {
        Ok(Ok(policy)) => Ok(policy),
        Ok(Err(EngineError::Init(detail))) => Err(AdmissionError::InitFailed(detail)),
        Ok(Err(other)) => Err(AdmissionError::CompileFailed(other.to_string())),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            Err(AdmissionError::CompileTimeout(limits.compile_timeout))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(AdmissionError::CompileFailed(
            "the compile thread stopped without an answer".into(),
        )),
    }
}
