//! Assembling reports: identity, sequence numbers, the engine's observation and the GPUs.

use std::time::{SystemTime, UNIX_EPOCH};

use inferpick_schema::{AgentInfo, EndpointInfo, Gpu, LoadReport, SCHEMA_VERSION};

use crate::collect::Observation;
use crate::config::Config;

/// Stamps observations into reports; `seq` goes up by one per report, `agent.id` is new per start.
pub struct ReportBuilder {
    agent: AgentInfo,
    endpoint: EndpointInfo,
    interval_ms: u64,
    next_seq: u64,
}

/// Now, in Unix milliseconds (informational only: pickers judge age by their own clock).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ReportBuilder {
    /// A builder for this agent process.
    pub fn new(config: &Config) -> Self {
        ReportBuilder {
            agent: AgentInfo {
                id: uuid::Uuid::new_v4().to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_at_ms: unix_ms(),
            },
            endpoint: EndpointInfo {
                address: config.endpoint.clone(),
                pod: config.pod.clone(),
                namespace: config.namespace.clone(),
                node: config.node.clone(),
            },
            interval_ms: config.interval.as_millis() as u64,
            next_seq: 1,
        }
    }

    /// The next report.
    pub fn build(&mut self, observation: Observation, gpus: Vec<Gpu>) -> LoadReport {
        let seq = self.next_seq;
        self.next_seq += 1;
        LoadReport {
            schema_version: SCHEMA_VERSION,
            agent: self.agent.clone(),
            seq,
            sent_at_ms: unix_ms(),
            interval_ms: self.interval_ms,
            endpoint: self.endpoint.clone(),
            engine: observation.engine,
            models: observation.models,
            load: observation.load,
            gpus,
        }
    }
}
