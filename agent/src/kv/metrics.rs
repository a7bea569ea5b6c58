//! `inferpick_agent_kv_events_*`: what the event stream brought, what the mirror holds, what
//! reached the pickers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PushLabels {
    pub target: String,
    pub result: &'static str,
}

/// The KV-event families, registered into the agent's registry.
pub struct KvMetrics {
    pub(crate) messages: Counter,
    pub(crate) events: Family<KindLabels, Counter>,
    pub(crate) malformed: Counter,
    pub(crate) skipped_blocks: Family<ReasonLabels, Counter>,
    pub(crate) gaps: Counter,
    pub(crate) replays: Family<ResultLabels, Counter>,
    pub(crate) resets: Counter,
    pub(crate) blocks: Gauge,
    pub(crate) evicted: Counter,
    pub(crate) dropped_changes: Counter,
    pub(crate) state: Family<StateLabels, Gauge>,
    pub(crate) pushes: Family<PushLabels, Counter>,
}

impl KvMetrics {
    /// Registers every family into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let messages = counter(
            "inferpick_agent_kv_events_messages",
            "KV-event messages received from the engine (live and replayed)",
        );
        let malformed = counter(
            "inferpick_agent_kv_events_malformed",
            "KV-event messages refused as malformed (they change nothing)",
        );
        let gaps = counter(
            "inferpick_agent_kv_events_gaps",
            "Gaps in the engine's KV-event sequence numbers",
        );
        let resets = counter(
            "inferpick_agent_kv_events_resets",
            "Reset messages (the whole mirror) sent to pickers",
        );
        let evicted = counter(
            "inferpick_agent_kv_events_evicted_blocks",
            "Blocks evicted from the mirror because it reached --kv-events-max-blocks",
        );
        let dropped_changes = counter(
            "inferpick_agent_kv_events_dropped_changes",
            "Changes dropped because a picker fell too far behind (it is sent a reset instead)",
        );
        let events = Family::<KindLabels, Counter>::default();
        registry.register(
            "inferpick_agent_kv_events_events",
            "KV events applied, by kind (block_stored, block_removed, all_blocks_cleared, unknown)",
            events.clone(),
        );
        let skipped_blocks = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "inferpick_agent_kv_events_skipped_blocks",
            "Stored blocks not mirrored, by reason (other_medium, other_group, partial_block, unknown_parent, too_many_adapters)",
            skipped_blocks.clone(),
        );
        let replays = Family::<ResultLabels, Counter>::default();
        registry.register(
            "inferpick_agent_kv_events_replays",
            "Replay requests for a gap, by result (filled, failed, not_configured)",
            replays.clone(),
        );
        let blocks = Gauge::default();
        registry.register(
            "inferpick_agent_kv_events_blocks",
            "Blocks in the agent's mirror of the engine's prefix cache",
            blocks.clone(),
        );
        let state = Family::<StateLabels, Gauge>::default();
        registry.register(
            "inferpick_agent_kv_events_stream_state",
            "1 for the event stream's state (live or stale); absent until the engine publishes",
            state.clone(),
        );
        let pushes = Family::<PushLabels, Counter>::default();
        registry.register(
            "inferpick_agent_kv_events_pushes",
            "KV-event pushes by picker target and result (ok, resync, conflict, error)",
            pushes.clone(),
        );
        KvMetrics {
            messages,
            events,
            malformed,
            skipped_blocks,
            gaps,
            replays,
            resets,
            blocks,
            evicted,
            dropped_changes,
            state,
            pushes,
        }
    }

    pub(crate) fn set_state(&self, live: bool) {
        self.state
            .get_or_create(&StateLabels { state: "live" })
            .set(i64::from(live));
        self.state
            .get_or_create(&StateLabels { state: "stale" })
            .set(i64::from(!live));
    }
}
