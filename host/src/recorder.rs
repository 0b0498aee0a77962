//! The last stage of dispatch: recording decided envelopes in the store, as a group commit.
//!
//! Concurrent records of one tenant are written together, in one transaction
//! ([`Store::record_inbound_batch`]): while a tenant's transaction runs, the records that
//! arrive wait, and form the next batch when it commits. A transaction costs about a
//! dozen database round trips whatever its size, so under load the cost per record falls
//! instead of records queueing behind each other's transactions. A lone record is written
//! at once, alone: there is no timer and no added latency.
//!
//! Each record still gets its own outcome (a replay or a stale connection refuses only
//! that record); a failed transaction fails every record of its batch, and none of them
//! was written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use crate::store::{InboundOutcome, InboundRecord, Store, StoreError, StoreResult, TenantScope};

/// Most records in one transaction: bounds the statement size and how long the chain
/// locks are held.
const MAX_BATCH: usize = 64;

/// Writes inbound records, batching each tenant's concurrent ones.
#[derive(Debug)]
pub struct Recorder {
    store: Arc<dyn Store>,
    /// Per tenant: the records waiting. A tenant is here while its writer task runs.
    waiting: Mutex<HashMap<String, Vec<Waiting>>>,
}

#[derive(Debug)]
struct Waiting {
    record: InboundRecord,
    outcome: oneshot::Sender<StoreResult<InboundOutcome>>,
}

impl Recorder {
    /// A recorder writing to `store`.
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            store,
            waiting: Mutex::new(HashMap::new()),
        })
    }

    /// Records one envelope's decision (see [`Store::record_inbound`]) and returns what
    /// was recorded once it is committed.
    ///
    /// The write runs on its own task: a caller that goes away (a client that hung up)
    /// does not abort the transaction of the records batched with its own.
    pub async fn record(
        self: &Arc<Self>,
        scope: &TenantScope,
        record: InboundRecord,
    ) -> StoreResult<InboundOutcome> {
        let (outcome, committed) = oneshot::channel();
        let waiting = Waiting { record, outcome };
        // A tenant without a queue has no writer: this record starts one.
        let start_writer = {
            let mut queues = self.lock();
            match queues.get_mut(scope.tenant_id()) {
                Some(queue) => {
                    queue.push(waiting);
                    false
                }
                None => {
                    queues.insert(scope.tenant_id().to_owned(), vec![waiting]);
                    true
                }
            }
        };
        if start_writer {
            let recorder = self.clone();
            let scope = scope.clone();
            tokio::spawn(async move { recorder.write_batches(scope).await });
        }
        committed
            .await
            .unwrap_or_else(|_| Err(StoreError::Corrupt("the record's writer stopped".into())))
    }

    /// The tenant's writer: writes what waits, batch after batch, until nothing does.
    async fn write_batches(&self, scope: TenantScope) {
        let _leave = LeaveOnPanic {
            recorder: self,
            tenant: scope.tenant_id(),
        };
        loop {
            let batch: Vec<Waiting> = {
                let mut waiting = self.lock();
                let Some(queue) = waiting.get_mut(scope.tenant_id()) else {
                    return;
                };
                if queue.is_empty() {
                    waiting.remove(scope.tenant_id());
                    return;
                }
                let size = queue.len().min(MAX_BATCH);
                queue.drain(..size).collect()
            };
            let (records, outcomes): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|waiting| (waiting.record, waiting.outcome))
                .unzip();
            match self.store.record_inbound_batch(&scope, records).await {
                Ok(results) => {
                    for (outcome, result) in outcomes.into_iter().zip(results) {
                        // The caller may have gone: its record is written all the same.
                        let _ = outcome.send(result);
                    }
                }
                Err(error) => {
                    for outcome in outcomes {
                        let _ = outcome.send(Err(error.shared_copy()));
                    }
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<Waiting>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Should a writer panic, its tenant is released: the records waiting are answered with
/// an error (their senders dropped) and the next record starts a new writer.
struct LeaveOnPanic<'a> {
    recorder: &'a Recorder,
    tenant: &'a str,
}

impl Drop for LeaveOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.recorder.lock().remove(self.tenant);
        }
    }
}
