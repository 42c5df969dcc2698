//! The append service: what happens to a producer's ticks between the body and the
//! stream (docs/ARCHITECTURE.md §1). Validation all-or-nothing (`tick::validate`),
//! the producer's channel permission, then one append behind this node's rollback
//! fences, counted. The HTTP handler (`http/ingest.rs`) and the `--demo` feeder
//! (`demo.rs`) both come through here, so the demo takes the path real producers
//! take.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::now_us;
use crate::engine::{Appended, Store, StoreError};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::tick::{check_not_ahead, parse_body, BodyError, PreparedTick};

/// Why a batch was not stored; nothing of it was.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Invalid(#[from] BodyError),
    /// The producer may not write this channel (named).
    #[error("writing to channel {0:?}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The append service, one per server.
pub struct Ingest {
    store: Store,
    /// Knows what this node delivered of each channel: the rollback fences.
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// `TICKSTREAM_MAX_FUTURE`, in µs: how far ahead of now a tick may be dated.
    max_ahead_us: i64,
}

impl Ingest {
    pub fn new(store: Store, hub: Arc<Hub>, metrics: Arc<Metrics>, max_future: Duration) -> Ingest {
        Ingest {
            store,
            hub,
            metrics,
            max_ahead_us: i64::try_from(max_future.as_micros()).unwrap_or(i64::MAX),
        }
    }

    /// Parses and validates a body (one tick or a batch), all or nothing: every
    /// tick valid, none dated too far ahead, every channel one `may_write` allows.
    /// A refused body is counted as `rejected`.
    pub fn validate(&self, body: &[u8], may_write: impl Fn(&str) -> bool) -> Result<Vec<PreparedTick>, IngestError> {
        let now = now_us();
        let checked = parse_body(body, now)
            .and_then(|ticks| check_not_ahead(&ticks, now, self.max_ahead_us).map(|()| ticks))
            .map_err(IngestError::from)
            .and_then(|ticks| match ticks.iter().find(|t| !may_write(&t.channel)) {
                Some(t) => Err(IngestError::Forbidden(t.channel.clone())),
                None => Ok(ticks),
            });
        if checked.is_err() {
            self.metrics.ticks_ingested.with_label_values(&["rejected"]).inc();
        }
        checked
    }

    /// Appends validated ticks behind this node's rollback fences, counted as stored
    /// or duplicate.
    pub async fn append(&self, ticks: &[PreparedTick]) -> Result<Vec<Appended>, StoreError> {
        let results = self.store.append(ticks, &*self.hub).await?;
        let duplicates = results.iter().filter(|r| r.duplicate).count() as u64;
        let counter = |result: &str| self.metrics.ticks_ingested.with_label_values(&[result]);
        counter("stored").inc_by(results.len() as u64 - duplicates);
        counter("duplicate").inc_by(duplicates);
        Ok(results)
    }
}
