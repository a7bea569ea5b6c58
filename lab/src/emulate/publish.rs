//! The emulator's KV events: what its prefix cache stores and evicts, published as vLLM's
//! `ZmqEventPublisher` publishes it — batches on a PUB socket (`[topic, seq, payload]`, see
//! [`super::kv_events`]) and, when asked, a ROUTER replay socket that answers a start `seq` with
//! every buffered batch from there and then `seq = -1`.
//!
//! `BlockStored` carries each block's token ids and its parent's hash, which the engine model does
//! not keep: [`BlockBook`] remembers them for the blocks of the prompts submitted, bounded, until
//! the block is published and then until it is evicted.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use zeromq::{PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

use super::kv_events::{END_SEQ, Form, WireEvent, encode_batch, frames};
use crate::engine::KvChanges;

/// Batches kept for replay (vLLM's default `buffer_steps` is 10,000).
const REPLAY_BATCHES: usize = 10_000;

/// Token ids and parent of the blocks of submitted prompts, by block key.
#[derive(Debug, Default)]
pub(super) struct BlockBook {
    blocks: HashMap<u64, (Option<u64>, Arc<[u32]>)>,
    order: VecDeque<u64>,
    cap: usize,
}

impl BlockBook {
    /// Remembers at most `cap` blocks (the oldest forgotten first).
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            ..Self::default()
        }
    }

    /// Records the blocks of a prompt: `keys[i]` holds `ids[i × block .. (i + 1) × block]`.
    pub(super) fn record(&mut self, keys: &[u64], ids: &[u32], block: usize) {
        for (i, &key) in keys.iter().enumerate() {
            if self.blocks.contains_key(&key) {
                continue;
            }
            let parent = i.checked_sub(1).map(|p| keys[p]);
            let tokens: Arc<[u32]> = ids[i * block..(i + 1) * block].into();
            self.blocks.insert(key, (parent, tokens));
            self.order.push_back(key);
        }
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.blocks.remove(&old);
            }
        }
    }

    /// The events for the cache's changes since the last drain; `adapters[k]` names adapter `k`.
    pub(super) fn events(
        &mut self,
        changes: KvChanges,
        adapters: &[String],
        block_size: u32,
    ) -> Vec<WireEvent> {
        let mut out = Vec::new();
        if changes.cleared || changes.overflowed {
            out.push(WireEvent::Cleared);
        }
        for group in changes.groups {
            if !group.removed.is_empty() {
                for key in &group.removed {
                    self.blocks.remove(key);
                }
                out.push(WireEvent::Removed {
                    hashes: group.removed,
                });
            }
            let lora_name = group
                .adapter
                .and_then(|k| adapters.get(k as usize).cloned());
            for key in group.stored {
                // A block whose prompt the book has forgotten cannot be described; the reader
                // then misses it, as it would miss an event it dropped.
                let Some((parent, tokens)) = self.blocks.get(&key) else {
                    continue;
                };
                out.push(WireEvent::Stored {
                    hashes: vec![key],
                    parent: *parent,
                    token_ids: tokens.to_vec(),
                    block_size,
                    lora_id: group.adapter.map(|k| k + 1),
                    lora_name: lora_name.clone(),
                });
            }
        }
        out
    }
}

/// Where the publisher's sockets are bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEndpoints {
    /// The PUB socket.
    pub events: String,
    /// The ROUTER replay socket.
    pub replay: Option<String>,
}

/// Binds the sockets and starts the task that publishes each payload sent on the returned channel
/// as the next batch (and answers replays), until the channel closes.
pub(super) async fn start(
    events: &str,
    replay: Option<&str>,
) -> Result<(mpsc::UnboundedSender<Vec<u8>>, KvEndpoints), String> {
    let mut publisher = PubSocket::new();
    let bound = publisher
        .bind(events)
        .await
        .map_err(|e| format!("--kv-events {events}: cannot bind: {e}"))?
        .to_string();
    let mut router = None;
    let mut replay_bound = None;
    if let Some(at) = replay {
        let mut socket = RouterSocket::new();
        replay_bound = Some(
            socket
                .bind(at)
                .await
                .map_err(|e| format!("--kv-events-replay {at}: cannot bind: {e}"))?
                .to_string(),
        );
        router = Some(socket);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(serve(publisher, router, rx));
    Ok((
        tx,
        KvEndpoints {
            events: bound,
            replay: replay_bound,
        },
    ))
}

/// Encodes one batch of `events` at `ts` as current vLLM does (an array batch of tagged-map
/// events), which the agent and vLLM's router both read.
pub(super) fn batch(ts: f64, events: &[WireEvent]) -> Vec<u8> {
    encode_batch(ts, events, Some(0), Form::ArrayOfMaps)
}

async fn serve(
    mut publisher: PubSocket,
    mut router: Option<RouterSocket>,
    mut batches: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let mut seq = 0u64;
    let mut buffer: VecDeque<(u64, Bytes)> = VecDeque::new();
    loop {
        let replay = async {
            match router.as_mut() {
                Some(r) => r.recv().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            payload = batches.recv() => {
                let Some(payload) = payload else { return };
                let payload = Bytes::from(payload);
                let [topic, seq_bytes, _] = frames("", seq, Vec::new());
                let message = ZmqMessage::try_from(vec![
                    Bytes::from(topic),
                    Bytes::from(seq_bytes),
                    payload.clone(),
                ])
                .expect("three frames");
                // A PUB socket with no subscriber drops the batch, as vLLM's does.
                let _ = publisher.send(message).await;
                buffer.push_back((seq, payload));
                if buffer.len() > REPLAY_BATCHES {
                    buffer.pop_front();
                }
                seq += 1;
            }
            request = replay => {
                let (Some(request), Some(router)) = (request, router.as_mut()) else { continue };
                answer(router, request, &buffer).await;
            }
        }
    }
}

/// vLLM's replay: `[identity, "", start]` in; `[identity, "", topic, seq, payload]` for every
/// buffered batch from `start`, then `[identity, "", "", -1, ""]`.
async fn answer(router: &mut RouterSocket, request: ZmqMessage, buffer: &VecDeque<(u64, Bytes)>) {
    let frames: Vec<Bytes> = request.into_vec();
    let [identity, _, start] = frames.as_slice() else {
        return;
    };
    let Ok(start) = <[u8; 8]>::try_from(&start[..]).map(u64::from_be_bytes) else {
        return;
    };
    let reply = |topic: Bytes, seq: Bytes, payload: Bytes| {
        ZmqMessage::try_from(vec![identity.clone(), Bytes::new(), topic, seq, payload])
            .expect("five frames")
    };
    for (seq, payload) in buffer.iter().filter(|(s, _)| *s >= start) {
        let message = reply(
            Bytes::new(),
            Bytes::copy_from_slice(&seq.to_be_bytes()),
            payload.clone(),
        );
        if router.send(message).await.is_err() {
            return;
        }
    }
    let _ = router
        .send(reply(
            Bytes::new(),
            Bytes::copy_from_slice(&END_SEQ),
            Bytes::new(),
        ))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::KvGroupChanges;

    #[test]
    fn stored_blocks_carry_their_tokens_and_parent_and_removed_ones_are_forgotten() {
        let mut book = BlockBook::new(100);
        let ids: Vec<u32> = (0..8).collect();
        book.record(&[11, 12], &ids, 4);
        let changes = KvChanges {
            overflowed: false,
            cleared: false,
            groups: vec![KvGroupChanges {
                adapter: None,
                stored: vec![11, 12, 99],
                removed: vec![],
            }],
        };
        let events = book.events(changes, &[], 4);
        assert_eq!(events.len(), 2, "block 99's prompt is unknown: {events:?}");
        assert_eq!(
            events[1],
            WireEvent::Stored {
                hashes: vec![12],
                parent: Some(11),
                token_ids: vec![4, 5, 6, 7],
                block_size: 4,
                lora_id: None,
                lora_name: None,
            }
        );
        let removed = KvChanges {
            overflowed: false,
            cleared: false,
            groups: vec![KvGroupChanges {
                adapter: None,
                stored: vec![],
                removed: vec![11],
            }],
        };
        assert_eq!(
            book.events(removed, &[], 4),
            vec![WireEvent::Removed { hashes: vec![11] }]
        );
        assert!(!book.blocks.contains_key(&11));
        let mut small = BlockBook::new(1);
        small.record(&[1, 2], &ids, 4);
        assert_eq!(small.blocks.len(), 1);
    }
}
