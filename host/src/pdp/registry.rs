//! Compiled policies by digest: each component is admitted and compiled once per host,
//! and its compiled form is kept on disk so a restart does not recompile everything.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::admission::{AdmissionError, AdmissionLimits, admit, digest_of, inspect};
use super::engine::{CompiledPolicy, PolicyEngine};

/// Every policy this host has loaded, by `sha256:` digest.
#[derive(Debug)]
pub struct PolicyRegistry {
    engine: Arc<PolicyEngine>,
    limits: AdmissionLimits,
    cache_dir: Option<PathBuf>,
    loaded: Mutex<HashMap<String, Arc<CompiledPolicy>>>,
}

impl PolicyRegistry {
    /// `cache_dir` holds compiled artifacts; `None` keeps them in memory only.
    pub fn new(
        engine: Arc<PolicyEngine>,
        limits: AdmissionLimits,
        cache_dir: Option<PathBuf>,
    ) -> Self {
        Self {
            engine,
            limits,
            cache_dir,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// The engine policies are compiled for.
    pub fn engine(&self) -> &Arc<PolicyEngine> {
        &self.engine
    }

    /// The compiled policy with this digest, if this host has loaded it.
    pub fn get(&self, digest: &str) -> Option<Arc<CompiledPolicy>> {
        self.lock().get(digest).cloned()
    }

    /// The compiled policy for these component bytes: from memory, from the disk cache,
    /// or admitted and compiled now.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<CompiledPolicy>, AdmissionError> {
        let digest = digest_of(bytes);
        if let Some(policy) = self.lock().get(&digest) {
            return Ok(policy.clone());
        }
        // The cheap checks run even for cached artifacts, so a limit lowered since the
        // artifact was cached still applies.
        inspect(bytes, &self.limits)?;
        let cached = self.cache_path(&digest).and_then(|path| {
            let component = self.engine.load_artifact(&path)?;
            self.engine.prepare(digest.clone(), &component).ok()
        });
        let policy = match cached {
            Some(policy) => policy,
            None => {
                let policy = admit(&self.engine, bytes, &self.limits)?;
                if let Some(path) = self.cache_path(&digest) {
                    // A failed cache write only costs a recompile after restart.
                    let _ = self.engine.store_artifact(&policy, &path);
                }
                policy
            }
        };
        let policy = Arc::new(policy);
        self.lock().insert(digest, policy.clone());
        Ok(policy)
    }

    /// Drops a compiled policy from memory (an upload refused after compilation, e.g. by
    /// its test cases); a later [`PolicyRegistry::load`] compiles or reads it again.
    pub fn forget(&self, digest: &str) {
        self.lock().remove(digest);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<CompiledPolicy>>> {
        self.loaded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `<cache>/<digest hex>-<engine hash>.cwasm`: the engine hash changes with the
    /// wasmtime version and its settings, so an artifact is only reused by an engine
    /// that can run it.
    fn cache_path(&self, digest: &str) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let mut hasher = std::hash::DefaultHasher::new();
        self.engine
            .wasmtime()
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let hex = digest.trim_start_matches("sha256:");
        Some(dir.join(format!("{hex}-{:016x}.cwasm", hasher.finish())))
    }
}
