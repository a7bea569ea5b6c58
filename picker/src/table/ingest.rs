//! The ingest rules: which report replaces which, restarts and reordering, the table's cap, and
//! what a new report does to the in-flight estimate and the routed prefill.
//!
//! A report from the endpoint's current agent replaces the entry when its `seq` is higher. A report
//! from another agent is a restart — unless that agent reported here before and was replaced (a
//! late push of a predecessor). Neither rule reads the agents' wall clocks, which may disagree.

use std::sync::Arc;
use std::time::Duration;

use inferpick_schema::{LoadReport, ValidationError};

use super::counters::EndpointCounters;
use super::endpoint::{Endpoint, Learning, duration_ns};
use super::snapshot::{ShardView, shard_of};
use super::{Table, lock};

/// How far past its arrival a report showing an empty queue lets the routed prefill backlog run.
const IDLE_REPORT_PREFILL_BOUND: Duration = Duration::from_secs(1);

/// The result of accepting (or deliberately ignoring) a valid report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    /// A new endpoint entered the table.
    Added,
    /// A newer report from the same agent replaced the previous one.
    Updated,
    /// A different agent now reports for this endpoint: the agent or its pod restarted.
    Restarted,
    /// Ignored: not newer than what the table holds (a reordered or duplicated push).
    OutOfOrder,
    /// Ignored: sent by an agent that reported here before and has since been replaced.
    Superseded,
}

impl IngestOutcome {
    /// Whether the table changed.
    pub fn accepted(self) -> bool {
        matches!(self, Self::Added | Self::Updated | Self::Restarted)
    }
}

/// A report or batch the table refused; nothing was changed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// A report broke a validation rule.
    #[error("{prefix}{source} (report for {address})", prefix = index_prefix(*index))]
    Invalid {
        /// Position in a batch, when the report came in one.
        index: Option<usize>,
        /// The endpoint address the report claimed.
        address: String,
        /// The rule it broke.
        #[source]
        source: ValidationError,
    },
    /// Accepting the new endpoints would grow the table past [`TableConfig::max_endpoints`](super::TableConfig::max_endpoints).
    #[error(
        "{prefix}report for new endpoint {address} refused: the table holds {held} of at most {max_endpoints} endpoints and this push adds {new} (raise --max-endpoints / limits.max_endpoints if the fleet is really this large)",
        prefix = index_prefix(*index)
    )]
    TableFull {
        /// Position in a batch of the first new endpoint's report.
        index: Option<usize>,
        /// The first new endpoint's address.
        address: String,
        /// Endpoints in the table when the push was refused.
        held: usize,
        /// New endpoints the push would have added.
        new: usize,
        /// The cap.
        max_endpoints: usize,
    },
}

fn index_prefix(index: Option<usize>) -> String {
    index.map(|i| format!("[{i}].")).unwrap_or_default()
}

impl IngestError {
    /// The JSON path of the offending field (`[2].load.kv_cache_utilization`), or of the report
    /// (`[2]`) when the report as a whole was refused.
    pub fn field(&self) -> String {
        match self {
            IngestError::Invalid { index, source, .. } => match index {
                Some(i) => format!("[{i}].{}", source.field),
                None => source.field.clone(),
            },
            IngestError::TableFull { index, .. } => {
                index.map(|i| format!("[{i}]")).unwrap_or_default()
            }
        }
    }

    /// The same error for a report that came alone (no batch index).
    fn alone(self) -> Self {
        match self {
            IngestError::Invalid {
                address, source, ..
            } => IngestError::Invalid {
                index: None,
                address,
                source,
            },
            IngestError::TableFull {
                address,
                held,
                new,
                max_endpoints,
                ..
            } => IngestError::TableFull {
                index: None,
                address,
                held,
                new,
                max_endpoints,
            },
        }
    }
}

impl Table {
    /// Validates and applies one report.
    pub fn ingest(&self, report: LoadReport, now: Duration) -> Result<IngestOutcome, IngestError> {
        self.ingest_batch(vec![report], now)
            .map(|o| o[0])
            .map_err(IngestError::alone)
    }

    /// Validates every report, then applies them all (publishing each touched shard once); if one
    /// is invalid, or the batch's new endpoints do not fit under the cap, none is applied and the
    /// error names the index.
    pub fn ingest_batch(
        &self,
        reports: Vec<LoadReport>,
        now: Duration,
    ) -> Result<Vec<IngestOutcome>, IngestError> {
        for (i, r) in reports.iter().enumerate() {
            r.validate().map_err(|source| IngestError::Invalid {
                index: Some(i),
                address: r.endpoint.address.clone(),
                source,
            })?;
        }
        let mut outcomes = vec![IngestOutcome::OutOfOrder; reports.len()];
        // The reports grouped by shard, in shard order and, within a shard, in batch order.
        let mut by_shard: Vec<(usize, usize, LoadReport)> = reports
            .into_iter()
            .enumerate()
            .map(|(i, r)| (shard_of(&r.endpoint.address), i, r))
            .collect();
        by_shard.sort_by_key(|&(s, i, _)| (s, i));
        // Every touched shard's writer lock, taken in shard order (so concurrent pushes cannot
        // deadlock) and held until the batch is applied: the new endpoints counted below stay new.
        let mut writers = Vec::new();
        for group in by_shard.chunk_by(|a, b| a.0 == b.0) {
            writers.push(lock(&self.writers[group[0].0]));
        }
        self.reserve(&by_shard)?;
        let mut reports = by_shard.into_iter().peekable();
        while let Some(&(s, _, _)) = reports.peek() {
            let view = self.shard_view(s);
            let mut entries: Vec<Arc<Endpoint>> = view.entries_to_edit();
            let mut changed = false;
            while let Some((_, i, report)) = reports.next_if(|r| r.0 == s) {
                let outcome = self.apply(&mut entries, report, now);
                changed |= outcome.accepted();
                outcomes[i] = outcome;
            }
            if changed {
                self.publish_shard(s, entries);
            }
            ShardView::retire(view);
        }
        drop(writers);
        Ok(outcomes)
    }

    /// Counts the distinct endpoints of `by_shard` (grouped by shard) the table does not hold yet
    /// and reserves room for them under the cap, or refuses the whole push. The caller holds the
    /// touched shards' writer locks.
    fn reserve(&self, by_shard: &[(usize, usize, LoadReport)]) -> Result<(), IngestError> {
        let mut new = 0usize;
        let mut first: Option<(usize, &str)> = None;
        for group in by_shard.chunk_by(|a, b| a.0 == b.0) {
            let view = self.shard_view(group[0].0);
            let mut seen: Vec<&str> = Vec::new();
            for (_, i, r) in group {
                let address = r.endpoint.address.as_str();
                if view.find(address).is_err() && !seen.contains(&address) {
                    seen.push(address);
                    new += 1;
                    if first.is_none_or(|(f, _)| *i < f) {
                        first = Some((*i, address));
                    }
                }
            }
        }
        if new == 0 {
            return Ok(());
        }
        let max_endpoints = self.config.load().max_endpoints;
        self.len
            .fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
                |held| (held.saturating_add(new) <= max_endpoints).then_some(held + new),
            )
            .map(|_| ())
            .map_err(|held| {
                let (index, address) = first.unwrap_or_default();
                IngestError::TableFull {
                    index: Some(index),
                    address: address.to_string(),
                    held,
                    new,
                    max_endpoints,
                }
            })
    }

    /// The entry for `report`, learning its capacity (and updating its hardware class's).
    fn entry(
        &self,
        report: LoadReport,
        now: Duration,
        previous: Option<&Endpoint>,
        retired: Arc<[Arc<str>]>,
        counters: EndpointCounters,
    ) -> Endpoint {
        let config = self.config.load();
        let mut classes = lock(&self.classes);
        let learning = Learning {
            classes: &mut classes,
            pins: &config.capacity_pins,
        };
        Endpoint::new(report, now, previous, retired, counters, learning)
    }

    /// Applies one valid report to a shard's (unpublished) entry list.
    fn apply(
        &self,
        entries: &mut Vec<Arc<Endpoint>>,
        report: LoadReport,
        now: Duration,
    ) -> IngestOutcome {
        let address = report.endpoint.address.as_str();
        let pos = match entries.binary_search_by(|e| (*e.address).cmp(address)) {
            Err(pos) => {
                let counters = lock(&self.ids).take();
                let entry = self.entry(report, now, None, Arc::from([]), counters);
                entries.insert(pos, Arc::new(entry));
                return IngestOutcome::Added;
            }
            Ok(pos) => pos,
        };
        let prev = &entries[pos];
        let (outcome, retired) = if prev.report.agent.id == report.agent.id {
            if report.seq <= prev.report.seq {
                return IngestOutcome::OutOfOrder;
            }
            (IngestOutcome::Updated, prev.retired_agents.clone())
        } else if prev.is_retired(&report.agent.id) {
            return IngestOutcome::Superseded;
        } else {
            (IngestOutcome::Restarted, prev.retire_agent())
        };
        let c = prev.counters.cell();
        // The engine's own counts now include everything routed before this report.
        c.close_epoch();
        if outcome == IngestOutcome::Restarted {
            // A restarted engine holds none of the work routed to its predecessor.
            c.bound_prefill(0);
        } else if report.load.requests_waiting == Some(0) {
            // Nothing queued: whatever was routed before the report is admitted and at most a
            // prefill in progress remains, so the backlog cannot run far ahead.
            c.bound_prefill(
                duration_ns(now).saturating_add(duration_ns(IDLE_REPORT_PREFILL_BOUND)),
            );
        }
        let entry = self.entry(report, now, Some(prev), retired, prev.counters.clone());
        entries[pos] = Arc::new(entry);
        outcome
    }
}
