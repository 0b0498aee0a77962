//! Runs decisions off the async reactor with bounded concurrency per tenant, so one
//! tenant's slow or hostile policy occupies at most its own share of the CPUs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use super::decision::{Decision, PolicyFailure};
use super::engine::{CompiledPolicy, PolicyEngine};
use super::limits::PolicyLimits;
use super::request::PolicyRequest;

/// The decision point shared by the server: the engine plus per-tenant gates.
#[derive(Debug)]
pub struct Pdp {
    engine: Arc<PolicyEngine>,
    per_tenant: usize,
    /// Each tenant's gate and the permits it was made with (a tenant whose concurrency
    /// limit changed gets a new gate; decisions holding the old one finish on it).
    gates: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
}

impl Pdp {
    /// `per_tenant` is how many decisions of one tenant may run at once. The default
    /// (half the CPUs, at least one) leaves the other half to every other tenant even
    /// while one tenant's policy burns its whole deadline on every request.
    pub fn new(engine: Arc<PolicyEngine>, per_tenant: Option<usize>) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            engine,
            per_tenant: per_tenant.unwrap_or((cpus / 2).max(1)),
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// The engine decisions run on.
    pub fn engine(&self) -> &Arc<PolicyEngine> {
        &self.engine
    }

    fn gate(&self, tenant: &str, permits: usize) -> Arc<Semaphore> {
        let mut gates = self
            .gates
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match gates.get(tenant) {
            Some((made_with, gate)) if *made_with == permits => gate.clone(),
            _ => {
                let gate = Arc::new(Semaphore::new(permits));
                gates.insert(tenant.to_owned(), (permits, gate.clone()));
                gate
            }
        }
    }

    /// Decides one request with the tenant's policy, waiting for a slot of that tenant.
    pub async fn decide(
        &self,
        policy: Arc<CompiledPolicy>,
        limits: PolicyLimits,
        request: &PolicyRequest,
    ) -> Decision {
        self.decide_limited(policy, limits, request, None).await
    }

    /// [`Pdp::decide`] with the tenant's own concurrency limit (`None`: the host's
    /// per-tenant default).
    pub async fn decide_limited(
        &self,
        policy: Arc<CompiledPolicy>,
        limits: PolicyLimits,
        request: &PolicyRequest,
        concurrency: Option<usize>,
    ) -> Decision {
        let permits = concurrency.unwrap_or(self.per_tenant).max(1);
        let gate = self.gate(&request.tenant, permits);
        let Ok(_permit) = gate.acquire_owned().await else {
            return Decision::failed(PolicyFailure::Unavailable("tenant gate closed".into()), 0);
        };
        let engine = self.engine.clone();
        let wit_request = request.to_wit();
        match tokio::task::spawn_blocking(move || engine.evaluate(&policy, &limits, &wit_request))
            .await
        {
            Ok(decision) => decision,
            Err(join_error) => Decision::failed(
                PolicyFailure::Unavailable(format!("evaluation task failed: {join_error}")),
                0,
            ),
        }
    }
}
